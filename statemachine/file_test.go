package statemachine_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/pipestream/pipestream/statemachine"
)

// openStore opens a FileStore on dir that logs into logs (if not nil) and
// closes it when the test ends.
func openStore(t testing.TB, dir string, logs *bytes.Buffer) *statemachine.FileStore {
	t.Helper()
	var h slog.Handler = slog.DiscardHandler
	if logs != nil {
		h = slog.NewTextHandler(logs, nil)
	}
	s, err := statemachine.NewFileStore(dir, statemachine.WithLogger(slog.New(h)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// dirNames lists the entries of dir, failing t if it cannot be read.
func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

// wantStored fails the test unless s serves name with content want;
// when, if not empty, says in the failure when that was.
func wantStored(t testing.TB, s *statemachine.FileStore, name, want, when string) {
	t.Helper()
	if got := readStored(t, s, name); got != want {
		t.Fatalf("%s = %q%s, want %q", name, got, spaced(when), want)
	}
}

// wantEmpty fails the test unless dir holds nothing; when, if not empty,
// says in the failure when that was.
func wantEmpty(t testing.TB, dir, when string) {
	t.Helper()
	if got := dirNames(t, dir); len(got) != 0 {
		t.Fatalf("%s holds %q%s", filepath.Base(dir), got, spaced(when))
	}
}

func spaced(s string) string {
	if s == "" {
		return ""
	}
	return " " + s
}

func readStored(t testing.TB, s *statemachine.FileStore, name string) string {
	t.Helper()
	f, err := s.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestFileStoreWriteSyncCloseLink(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	k := key(1)
	ch := write(t, s, k, "logs/app.log", "hello, ")
	if err := ch.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	if got := dirNames(t, filepath.Join(dir, "tmp")); len(got) != 1 {
		t.Fatalf("tmp holds %q, want one file", got)
	}
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	mustLink(t, s, entry(3, k, "logs/app.log", 12), ch)

	wantEmpty(t, filepath.Join(dir, "tmp"), "after Link")
	if b, err := os.ReadFile(filepath.Join(dir, "data", "logs", "app.log")); err != nil || string(b) != "hello, world" {
		t.Fatalf("data/logs/app.log = %q, %v", b, err)
	}
	want := statemachine.StoredFile{
		Name: "logs/app.log", Index: 3, Term: 1, Key: k, Length: 12,
		SHA256: sha256.Sum256([]byte("hello, world")),
	}
	if got := s.List(); len(got) != 1 || got[0] != want {
		t.Fatalf("List() = %+v, want [%+v]", got, want)
	}
	if got, ok := s.Lookup("./logs//app.log"); !ok || got != want {
		t.Fatalf("Lookup = %+v, %v", got, ok)
	}
	wantStored(t, s, "logs/app.log", "hello, world", "")
	if err := ch.CleanUp(); err != nil {
		t.Fatalf("CleanUp after Link: %v", err)
	}
	wantStored(t, s, "logs/app.log", "hello, world", "after CleanUp")
}

func TestFileStoreDefaultName(t *testing.T) {
	s := openStore(t, t.TempDir(), nil)
	for _, k := range []statemachine.StreamKey{key(5), {StreamID: 6}} {
		mustLink(t, s, entry(k.StreamID, k, "", 1), write(t, s, k, "", "x"))
	}
	var names []string
	for _, sf := range s.List() {
		names = append(names, sf.Name)
	}
	want := []string{hex.EncodeToString([]byte(key(5).ClientID)) + "/5", "6"}
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Fatalf("names %q, want %q", names, want)
	}
}

func TestFileStoreReplace(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	mustLink(t, s, entry(1, key(1), "f", 3), write(t, s, key(1), "f", "old"))
	old, err := s.Open("f")
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	mustLink(t, s, entry(2, key(2), "f", 3), write(t, s, key(2), "f", "new"))

	wantStored(t, s, "f", "new", "")
	if b, _ := io.ReadAll(old); string(b) != "old" {
		t.Fatalf("a reader of the replaced file read %q", b)
	}
	if got := s.List(); len(got) != 1 || got[0].Key != key(2) {
		t.Fatalf("List() = %+v, want only stream 2", got)
	}
}

func TestFileStoreCleanUp(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	open := write(t, s, key(1), "a", "never closed")
	closed := write(t, s, key(2), "b", "closed")
	if err := closed.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []statemachine.DataChannel{open, closed, closed} {
		if err := ch.CleanUp(); err != nil {
			t.Fatal(err)
		}
	}
	wantEmpty(t, filepath.Join(dir, "tmp"), "after CleanUp")
	// A late link finds no data: Apply must not fail for it.
	mustLink(t, s, entry(1, key(2), "b", 6), closed)
	if l := s.List(); s.Missing() != 1 || len(l) != 1 || !l[0].Missing || l[0].Name != "b" {
		t.Fatalf("Missing %d List %+v, want b missing", s.Missing(), l)
	}
	// The key can be opened again once its channel is gone.
	write(t, s, key(1), "a").CleanUp()
}

func TestFileStoreConcurrentStreams(t *testing.T) {
	const streams = 50
	s := openStore(t, t.TempDir(), nil)
	name := func(i int) string { return fmt.Sprintf("dir%d/stream-%d", i%5, i) }
	content := streamConcurrently(t, s, streams, 20, name, func() { _ = s.List() })

	if got := len(s.List()); got != streams {
		t.Fatalf("List() has %d files, want %d", got, streams)
	}
	for i := range streams {
		if got := readStored(t, s, name(i)); got != string(content(i)) {
			t.Errorf("stream %d: read %d bytes", i, len(got))
		}
	}
}
