package statemachine_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pipestream/pipestream/statemachine"
)

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
	wantStored(t, s, "sub/b", "22", "")
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
	wantStored(t, s, "x/y", "payload", "")
	wantEmpty(t, filepath.Join(dir, "tmp"), "")
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
