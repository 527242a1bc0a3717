package statemachine_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

	if got := dirNames(t, filepath.Join(dir, "tmp")); len(got) != 0 {
		t.Fatalf("tmp holds %q after Link", got)
	}
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
	if got := readStored(t, s, "logs/app.log"); got != "hello, world" {
		t.Fatalf("Open read %q", got)
	}
	if err := ch.CleanUp(); err != nil {
		t.Fatalf("CleanUp after Link: %v", err)
	}
	if got := readStored(t, s, "logs/app.log"); got != "hello, world" {
		t.Fatalf("CleanUp after Link changed the file: %q", got)
	}
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

	if got := readStored(t, s, "f"); got != "new" {
		t.Fatalf("f = %q, want the newer stream", got)
	}
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
	if got := dirNames(t, filepath.Join(dir, "tmp")); len(got) != 0 {
		t.Fatalf("tmp holds %q after CleanUp", got)
	}
	// A late link finds no data: Apply must not fail for it.
	mustLink(t, s, entry(1, key(2), "b", 6), closed)
	if l := s.List(); s.Missing() != 1 || len(l) != 1 || !l[0].Missing || l[0].Name != "b" {
		t.Fatalf("Missing %d List %+v, want b missing", s.Missing(), l)
	}
	// The key can be opened again once its channel is gone.
	write(t, s, key(1), "a").CleanUp()
}

func TestFileStoreBadNames(t *testing.T) {
	long := strings.Repeat("x", 256)
	for _, name := range []string{
		"/etc/passwd",
		`\windows`,
		"..",
		"../escape",
		"a/../../escape",
		"a/../b", // ".." is refused even where it would stay inside
		`a\..\b`,
		".",
		"./",
		"a\x00b",
		"line\nbreak",
		"esc\x1b[31m",
		"del\x7f",
		"c1\u0085",
		"bad\xffutf8",
		long,
		"dir/" + long,
		strings.Repeat("a/", 513),
	} {
		t.Run(fmt.Sprintf("%.20q", name), func(t *testing.T) {
			if got, err := statemachine.CleanName(name); !errors.Is(err, statemachine.ErrBadName) {
				t.Fatalf("CleanName = %q, %v; want ErrBadName", got, err)
			}
			dir := t.TempDir()
			s := openStore(t, dir, nil)
			ch, err := s.OpenStream(context.Background(), key(1), request(key(1), name))
			if !errors.Is(err, statemachine.ErrBadName) {
				t.Fatalf("OpenStream = %v, %v; want ErrBadName", ch, err)
			}
			if got := dirNames(t, filepath.Join(dir, "tmp")); len(got) != 0 {
				t.Fatalf("a refused stream left %q in tmp", got)
			}
		})
	}
}

func TestCleanName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a", "a"},
		{"a/b/c.txt", "a/b/c.txt"},
		{"./a", "a"},
		{"a//b/", "a/b"},
		{"a/./b", "a/b"},
		{"..a", "..a"},
		{"a..", "a.."},
		{".hidden", ".hidden"},
		{"spaces and ünïcode", "spaces and ünïcode"},
	} {
		if got, err := statemachine.CleanName(tc.in); err != nil || got != tc.want {
			t.Errorf("CleanName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestFileStoreNameConflicts(t *testing.T) {
	s := openStore(t, t.TempDir(), nil)
	mustLink(t, s, entry(1, key(1), "file", 1), write(t, s, key(1), "file", "x"))
	mustLink(t, s, entry(2, key(2), "dir/f", 1), write(t, s, key(2), "dir/f", "x"))
	for _, name := range []string{"file/below", "dir"} {
		if _, err := s.OpenStream(context.Background(), key(3), request(key(3), name)); !errors.Is(err, statemachine.ErrBadName) {
			t.Errorf("OpenStream(%q) = %v, want ErrBadName", name, err)
		}
	}
}

func TestFileStoreErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		run  func(s *statemachine.FileStore) error
		want error
	}{
		{"length mismatch", func(s *statemachine.FileStore) error {
			return s.Link(ctx, entry(1, key(1), "f", 99), write(t, s, key(1), "f", "short"))
		}, statemachine.ErrLengthMismatch},
		{"duplicate open", func(s *statemachine.FileStore) error {
			write(t, s, key(1), "f")
			_, err := s.OpenStream(ctx, key(1), request(key(1), "g"))
			return err
		}, statemachine.ErrDuplicateStream},
		{"write after close", func(s *statemachine.FileStore) error {
			ch := write(t, s, key(1), "f")
			ch.Close()
			_, err := ch.Write([]byte("x"))
			return err
		}, statemachine.ErrChannelClosed},
		{"open unknown name", func(s *statemachine.FileStore) error {
			_, err := s.Open("nothing")
			return err
		}, fs.ErrNotExist},
		{"open bad name", func(s *statemachine.FileStore) error {
			_, err := s.Open("../x")
			return err
		}, fs.ErrNotExist},
		{"channel of a Memory", func(s *statemachine.FileStore) error {
			return s.Link(ctx, entry(1, key(1), "", 0), write(t, statemachine.NewMemory(), key(1), ""))
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir, nil)
			err := tc.run(s)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			// A refused link may record its entry as missing; nothing is
			// stored as data.
			for _, sf := range s.List() {
				if !sf.Missing {
					t.Fatalf("a failed call stored %+v", sf)
				}
			}
			if got := dirNames(t, filepath.Join(dir, "data")); len(got) != 0 {
				t.Fatalf("a failed call stored %q", got)
			}
		})
	}
}

func TestFileStoreLengthMismatchRemovesData(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	mustLink(t, s, entry(1, key(9), "f", 3), write(t, s, key(9), "f", "old"))
	err := s.Link(context.Background(), entry(2, key(1), "f", 1), write(t, s, key(1), "f", "abc"))
	if !errors.Is(err, statemachine.ErrLengthMismatch) {
		t.Fatal(err)
	}
	if got := dirNames(t, filepath.Join(dir, "tmp")); len(got) != 0 {
		t.Fatalf("tmp holds %q after a refused link", got)
	}
	// The entry is committed: f's older version is not served in its place.
	checkMissing(t, s, dir, "f", 2)
}

func TestFileStoreLinkReplay(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	mustLink(t, s, entry(1, key(1), "f", 4), write(t, s, key(1), "f", "data"))
	mustLink(t, s, entry(1, key(1), "f", 4), nil)
	if s.Missing() != 0 {
		t.Fatalf("replaying a linked entry counted it missing")
	}
	// A peer off the route: no data, no error.
	mustLink(t, s, entry(2, key(2), "g", 4), nil)
	if s.Missing() != 1 {
		t.Fatalf("Missing() = %d, want 1", s.Missing())
	}
	// A second channel for a linked key is discarded.
	mustLink(t, s, entry(3, key(1), "f", 5), write(t, s, key(1), "f", "other"))
	if got := readStored(t, s, "f"); got != "data" {
		t.Fatalf("f = %q after a duplicate link", got)
	}
	if got := dirNames(t, filepath.Join(dir, "tmp")); len(got) != 0 {
		t.Fatalf("tmp holds %q", got)
	}
	// An older file under the entry's name is not its data, and is no
	// longer served once a newer entry names it.
	mustLink(t, s, entry(4, key(3), "f", 4), nil)
	if s.Missing() != 2 {
		t.Fatalf("Missing() = %d, want 2", s.Missing())
	}
	checkMissing(t, s, dir, "f", 4)

	// After a restart the log still knows stream 1 was linked, and that f
	// is missing at entry 4.
	s.Close()
	s = openStore(t, dir, nil)
	mustLink(t, s, entry(1, key(1), "f", 4), nil)
	mustLink(t, s, entry(4, key(3), "f", 4), nil)
	if s.Missing() != 2 || len(s.List()) != 2 {
		t.Fatalf("after restart: Missing %d List %+v", s.Missing(), s.List())
	}
	checkMissing(t, s, dir, "f", 4)
}

// checkMissing fails t unless name's newest entry is index, missing: not
// served, listed as missing, and with no file left under the name.
func checkMissing(t *testing.T, s *statemachine.FileStore, dir, name string, index uint64) {
	t.Helper()
	sf, ok := s.Lookup(name)
	if !ok || !sf.Missing || sf.Index != index {
		t.Fatalf("Lookup(%q) = %+v, %v; want entry %d missing", name, sf, ok, index)
	}
	if f, err := s.Open(name); !errors.Is(err, statemachine.ErrMissing) {
		if f != nil {
			f.Close()
		}
		t.Fatalf("Open(%q) = %v, want ErrMissing", name, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", name)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("data/%s still on disk: %v", name, err)
	}
}

func TestFileStoreRestart(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	mustLink(t, s, entry(1, key(1), "a", 1), write(t, s, key(1), "a", "1"))
	mustLink(t, s, entry(2, key(2), "sub/b", 2), write(t, s, key(2), "sub/b", "22"))
	write(t, s, key(3), "c", "never committed") // left open
	closed := write(t, s, key(4), "d", "closed, never linked")
	if err := closed.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tmp", "not-ours"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s.Close()

	var logs bytes.Buffer
	s = openStore(t, dir, &logs)
	var got []string
	for _, sf := range s.List() {
		got = append(got, fmt.Sprintf("%d:%s:%d", sf.Index, sf.Name, sf.Length))
	}
	if want := "[1:a:1 2:sub/b:2]"; fmt.Sprint(got) != want {
		t.Fatalf("List() after restart = %v, want %s", got, want)
	}
	if got := readStored(t, s, "sub/b"); got != "22" {
		t.Fatalf("sub/b = %q", got)
	}
	// The closed stream is kept for its entry; the open one and the
	// stranger are removed.
	if got := dirNames(t, filepath.Join(dir, "tmp")); fmt.Sprint(got) != "[0102636c69656e74-4.closed]" {
		t.Fatalf("tmp holds %q after restart", got)
	}
	if !strings.Contains(logs.String(), "count=2") || s.Orphans() != 1 {
		t.Fatalf("restart did not log the 2 files it removed, or kept %d closed streams:\n%s", s.Orphans(), logs.String())
	}
	// The store carries on: a new stream links after the old ones, and the
	// closed stream's entry, applied late, links the kept copy.
	mustLink(t, s, entry(3, key(5), "e", 1), write(t, s, key(5), "e", "5"))
	mustLink(t, s, entry(4, key(4), "d", 20), nil)
	if got := readStored(t, s, "d"); got != "closed, never linked" || s.Orphans() != 0 || s.Missing() != 0 {
		t.Fatalf("d = %q, orphans %d, missing %d", got, s.Orphans(), s.Missing())
	}
	if got := len(s.List()); got != 4 {
		t.Fatalf("List() has %d files, want 4", got)
	}
}

// TestFileStoreRecoversInterruptedLink plays a crash between the two steps
// of a link: the record is in committed.log, the file still in tmp.
func TestFileStoreRecoversInterruptedLink(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	ch := write(t, s, key(1), "x/y", "payload")
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	sum := sha256.Sum256([]byte("payload"))
	line := fmt.Sprintf(`{"index":9,"term":2,"client":%q,"stream":1,"name":"x/y","length":7,"sha256":%q}`+"\n",
		hex.EncodeToString([]byte(key(1).ClientID)), hex.EncodeToString(sum[:]))
	appendFile(t, filepath.Join(dir, "committed.log"), line)

	s = openStore(t, dir, nil)
	if got := readStored(t, s, "x/y"); got != "payload" {
		t.Fatalf("x/y = %q", got)
	}
	if got := dirNames(t, filepath.Join(dir, "tmp")); len(got) != 0 {
		t.Fatalf("tmp holds %q", got)
	}
	if got := s.List(); len(got) != 1 || got[0].Index != 9 || got[0].SHA256 != sum {
		t.Fatalf("List() = %+v", got)
	}
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestFileStoreTornLog(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	mustLink(t, s, entry(1, key(1), "a", 1), write(t, s, key(1), "a", "1"))
	s.Close()
	appendFile(t, filepath.Join(dir, "committed.log"), `{"index":2,"ter`)

	s = openStore(t, dir, nil)
	mustLink(t, s, entry(2, key(2), "b", 1), write(t, s, key(2), "b", "2"))
	s.Close()
	s = openStore(t, dir, nil)
	if got := len(s.List()); got != 2 {
		t.Fatalf("List() has %d files after a torn line was dropped, want 2", got)
	}
}

func TestFileStoreCorruptLog(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "committed.log"), []byte("not json\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if s, err := statemachine.NewFileStore(dir); err == nil {
		s.Close()
		t.Fatal("NewFileStore accepted a corrupt committed.log")
	}
}

func TestFileStoreConcurrentStreams(t *testing.T) {
	const streams, chunks = 50, 20
	s := openStore(t, t.TempDir(), nil)
	content := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 100*chunks) }

	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() {
			k, name := key(i), fmt.Sprintf("dir%d/stream-%d", i%5, i)
			ch, err := s.OpenStream(context.Background(), k, request(k, name))
			if err != nil {
				t.Error(err)
				return
			}
			data := content(i)
			for c := range chunks {
				if _, err := ch.Write(data[c*100 : (c+1)*100]); err != nil {
					t.Error(err)
				}
			}
			if err := ch.Close(); err != nil {
				t.Error(err)
			}
			if err := s.Link(context.Background(), entry(uint64(i+1), k, name, len(data)), ch); err != nil {
				t.Error(err)
			}
			_ = s.List()
		})
	}
	wg.Wait()

	if got := len(s.List()); got != streams {
		t.Fatalf("List() has %d files, want %d", got, streams)
	}
	for i := range streams {
		if got := readStored(t, s, fmt.Sprintf("dir%d/stream-%d", i%5, i)); got != string(content(i)) {
			t.Errorf("stream %d: read %d bytes", i, len(got))
		}
	}
}

func BenchmarkFileStoreWrite(b *testing.B) {
	s := openStore(b, b.TempDir(), nil)
	ch, err := s.OpenStream(context.Background(), key(1), request(key(1), "bench"))
	if err != nil {
		b.Fatal(err)
	}
	p := make([]byte, 1<<20)
	b.ReportAllocs()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		if _, err := ch.Write(p); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	ch.CleanUp()
}

// BenchmarkFileStoreStream is a whole 4 MiB stream: open, write, close (with
// its fsync), link (with the log's and the directory's fsyncs).
func BenchmarkFileStoreStream(b *testing.B) {
	s := openStore(b, b.TempDir(), nil)
	p := make([]byte, 1<<20)
	const size = 4 << 20
	b.ReportAllocs()
	b.SetBytes(size)
	i := 0
	for b.Loop() {
		i++
		k := key(i)
		ch, err := s.OpenStream(context.Background(), k, request(k, "bench"))
		if err != nil {
			b.Fatal(err)
		}
		for range size / len(p) {
			if _, err := ch.Write(p); err != nil {
				b.Fatal(err)
			}
		}
		if err := ch.Close(); err != nil {
			b.Fatal(err)
		}
		if err := s.Link(context.Background(), entry(uint64(i), k, "bench", size), ch); err != nil {
			b.Fatal(err)
		}
	}
}

func TestLinkClosesAnOpenChannel(t *testing.T) {
	for _, sm := range []statemachine.StateMachine{
		statemachine.NewMemory(),
		openStore(t, t.TempDir(), nil),
	} {
		ch := write(t, sm, key(1), "f", "abc")
		mustLink(t, sm, entry(1, key(1), "f", 3), ch)
		if _, err := ch.Write([]byte("late")); !errors.Is(err, statemachine.ErrChannelClosed) {
			t.Errorf("%T: Write after Link = %v, want ErrChannelClosed", sm, err)
		}
	}
}
