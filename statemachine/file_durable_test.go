package statemachine_test

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pipestream/pipestream/statemachine"
)

// A peer acknowledges CLOSE once Close returned; if it crashes before the
// entry is applied, the restarted store must still link that copy, while a
// stream that never closed (no peer acknowledged it) is removed.
func TestFileStoreKeepsClosedStreamsForTheirEntry(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	acked := write(t, s, key(1), "acked", "all of it")
	if err := acked.Close(); err != nil {
		t.Fatal(err)
	}
	write(t, s, key(2), "torn", "half") // never closed
	s.Close()                           // as a crash: nothing else runs

	s = openStore(t, dir, nil)
	if s.Orphans() != 1 {
		t.Fatalf("kept %d closed streams, want 1", s.Orphans())
	}
	// The entry is applied after the restart (Raft replays it): no channel.
	mustLink(t, s, entry(7, key(1), "acked", 9), nil)
	wantStored(t, s, "acked", "all of it", "")
	sf, _ := s.Lookup("acked")
	if sf.Index != 7 || sf.Missing || s.Missing() != 0 || s.Orphans() != 0 {
		t.Fatalf("acked = %+v, missing %d, orphans %d", sf, s.Missing(), s.Orphans())
	}
	// The torn stream was not kept; if its entry came, it would be missing.
	mustLink(t, s, entry(8, key(2), "torn", 4), nil)
	checkMissing(t, s, dir, "torn", 8)
	wantEmpty(t, filepath.Join(dir, "tmp"), "")

	// And after another restart both facts stand.
	s.Close()
	s = openStore(t, dir, nil)
	wantStored(t, s, "acked", "all of it", "after restart")
	checkMissing(t, s, dir, "torn", 8)
}

// A kept copy whose length is not the entry's is not linked: the entry is
// missing here, never served with other bytes.
func TestFileStoreKeptCopyOfWrongLength(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	ch := write(t, s, key(1), "x", "abc")
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openStore(t, dir, nil)
	if err := s.Link(t.Context(), entry(3, key(1), "x", 4), nil); !errors.Is(err, statemachine.ErrLengthMismatch) {
		t.Fatalf("Link = %v, want ErrLengthMismatch", err)
	}
	checkMissing(t, s, dir, "x", 3)
}

// A kept copy whose entry was already recorded missing (the peer applied
// it from a snapshot before it saw the file, say) is linked at start-up.
func TestFileStoreRepairsMissingFromKeptCopy(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	mustLink(t, s, entry(5, key(1), "x", 3), nil)
	checkMissing(t, s, dir, "x", 5)
	s.Close()
	// The closed copy appears (it was written by an earlier incarnation
	// under its closed name).
	if err := os.WriteFile(filepath.Join(dir, "tmp", "0102636c69656e74-1.closed"), []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, nil)
	if got := readStored(t, s, "x"); got != "abc" || s.Missing() != 0 {
		t.Fatalf("x = %q, missing %d", got, s.Missing())
	}
}

func TestFileStoreSweepOrphans(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	for i := 1; i <= 2; i++ {
		if err := write(t, s, key(i), fmt.Sprint("f", i), "data").Close(); err != nil {
			t.Fatal(err)
		}
	}
	// A file written long ago is as young as the restart that keeps it:
	// its entry may be replayed by that restart.
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "tmp", "0102636c69656e74-1.closed"), old, old); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openStore(t, dir, nil)
	if n, err := s.SweepOrphans(time.Now().Add(-time.Minute)); err != nil || n != 0 || s.Orphans() != 2 {
		t.Fatalf("SweepOrphans before they were kept = %d, %v; %d left, want none swept", n, err, s.Orphans())
	}
	mustLink(t, s, entry(1, key(2), "f2", 4), nil)
	wantStored(t, s, "f2", "data", "")
	if n, err := s.SweepOrphans(time.Now().Add(time.Minute)); err != nil || n != 1 || s.Orphans() != 0 {
		t.Fatalf("SweepOrphans after = %d, %v; %d left, want 1 swept", n, err, s.Orphans())
	}
	wantEmpty(t, filepath.Join(dir, "tmp"), "")
}

// The log may hold a name's entries out of index order (a deferred link
// finished after a newer one): the highest index is the name's version.
func TestFileStoreNewestIndexWinsAfterRestart(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	mustLink(t, s, entry(9, key(2), "v", 3), write(t, s, key(2), "v", "new"))
	mustLink(t, s, entry(4, key(1), "v", 3), write(t, s, key(1), "v", "old"))
	wantStored(t, s, "v", "new", "after an older link finished late")
	s.Close()
	s = openStore(t, dir, nil)
	wantStored(t, s, "v", "new", "after restart")
	if sf, _ := s.Lookup("v"); sf.Index != 9 {
		t.Fatalf("v is entry %d, want 9", sf.Index)
	}
}

// mountTmpfs mounts a tmpfs of size bytes on a new directory, or skips t
// where that needs privileges this process lacks.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("needs root (CAP_SYS_ADMIN) to mount a small tmpfs as a full disk: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes a new file on dir's file system until it is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	f0, err := os.CreateTemp(dir, "filler")
	if err != nil {
		t.Fatal(err)
	}
	f0.Close()
	p := f0.Name()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for range 1 << 16 {
		if _, err := f.Write(chunk); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return p
			}
			t.Fatal(err)
		}
	}
	t.Fatal("the file system never filled")
	return ""
}

// padLog links streams into s until committed.log (in dir) ends a few
// bytes short of a page, so the next record needs a page a full tmpfs
// cannot give.
func padLog(t *testing.T, s *statemachine.FileStore, dir string) {
	t.Helper()
	size := func() int64 {
		fi, err := os.Stat(filepath.Join(dir, "committed.log"))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	const page = 4096
	for i := 100; i < 200; i++ {
		before := size()
		rem := page - before%page
		if rem < 32 {
			return
		}
		name := "p"
		if rem < 400 {
			// One more line, of a length that leaves 16 bytes: a line with
			// a one-byte name is lineLen long.
			name = strings.Repeat("p", int(rem-16-(lineLen(t, s)-1)))
		}
		mustLink(t, s, entry(uint64(i), key(i), fmt.Sprint(name, i), 1), write(t, s, key(i), fmt.Sprint(name, i), "x"))
	}
	t.Fatal("could not pad committed.log to a page boundary")
}

// lineLen is the length of committed.log's line for a one-byte name
// with a three-digit index and stream id, as padLog writes.
func lineLen(t *testing.T, s *statemachine.FileStore) int64 {
	t.Helper()
	dir := t.TempDir()
	o := openStore(t, dir, nil)
	mustLink(t, o, entry(100, key(100), "p100", 1), write(t, o, key(100), "p100", "x"))
	fi, err := os.Stat(filepath.Join(dir, "committed.log"))
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size() - 3 // "p100" has three bytes more than a one-byte name
}

// On a full disk a link's record cannot be written: the data stays, the
// copy is reported missing (and the older version is not served), and once
// there is room again the link finishes, in the right order against a
// newer link of the same name.
func TestFileStoreFullDiskDefersLink(t *testing.T) {
	disk := mountTmpfs(t, 1<<20)
	dir := filepath.Join(disk, "store")
	var logs bytes.Buffer
	s := openStore(t, dir, &logs)
	mustLink(t, s, entry(1, key(1), "v", 2), write(t, s, key(1), "v", "v1"))
	ch := write(t, s, key(2), "v", "v2")
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	padLog(t, s, dir)
	filler := fill(t, disk)

	err := s.Link(t.Context(), entry(2, key(2), "v", 2), ch)
	if !errors.Is(err, statemachine.ErrLinkDeferred) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Link on a full disk = %v, want ErrLinkDeferred and ENOSPC", err)
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Fatalf("no warning logged:\n%s", logs.String())
	}
	if s.Deferred() != 1 || s.Missing() != 1 {
		t.Fatalf("deferred %d missing %d, want 1 and 1", s.Deferred(), s.Missing())
	}
	if _, err := s.Open("v"); !errors.Is(err, statemachine.ErrMissing) {
		t.Fatalf("Open(v) while deferred = %v, want ErrMissing (never v1)", err)
	}
	// v1's file is gone from the disk too, so a crash now cannot serve it;
	// fill the room it left.
	if _, err := os.Stat(filepath.Join(dir, "data", "v")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("v1's file is still on disk: %v", err)
	}
	filler2 := fill(t, disk)
	if n := s.RetryDeferred(); n != 1 {
		t.Fatalf("RetryDeferred on a still full disk left %d, want 1", n)
	}

	for _, f := range []string{filler, filler2} {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.RetryDeferred(); n != 0 {
		t.Fatalf("RetryDeferred with room left %d", n)
	}
	if got := readStored(t, s, "v"); got != "v2" || s.Missing() != 0 {
		t.Fatalf("v = %q, missing %d after the retry", got, s.Missing())
	}
	s.Close()
	s = openStore(t, dir, nil)
	wantStored(t, s, "v", "v2", "after restart")
}

// A deferred link is not lost by a crash before its retry: the kept copy
// is linked when the entry is applied again after the restart.
func TestFileStoreDeferredLinkSurvivesRestart(t *testing.T) {
	disk := mountTmpfs(t, 1<<20)
	dir := filepath.Join(disk, "store")
	s := openStore(t, dir, nil)
	ch := write(t, s, key(1), "w", "bytes")
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	padLog(t, s, dir)
	filler := fill(t, disk)
	if err := s.Link(t.Context(), entry(3, key(1), "w", 5), ch); !errors.Is(err, statemachine.ErrLinkDeferred) {
		t.Fatalf("Link = %v, want ErrLinkDeferred", err)
	}
	s.Close()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, nil)
	mustLink(t, s, entry(3, key(1), "w", 5), nil)
	wantStored(t, s, "w", "bytes", "")
}

// ReadLog, beside a store in use, sees what List sees: each name's newest
// entry, missing copies included, but not a line still being written.
func TestReadLog(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	mustLink(t, s, entry(1, key(1), "a", 2), write(t, s, key(1), "a", "v1"))
	mustLink(t, s, entry(2, key(2), "b", 1), write(t, s, key(2), "b", "x"))
	mustLink(t, s, entry(3, key(3), "a", 4), nil) // a's newest, missing here
	appendFile(t, filepath.Join(dir, "committed.log"), `{"index":4,"term":1,`)
	got, err := statemachine.ReadLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(s.List()) || len(got) != 2 || !got[1].Missing || got[1].Name != "a" {
		t.Fatalf("ReadLog = %+v, List = %+v", got, s.List())
	}
	if _, err := statemachine.ReadLog(filepath.Join(dir, "nothing")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadLog of no directory: %v", err)
	}
}

// A large write that the disk cuts short: the digests must cover what the
// file holds, not what the write was given, so that the copy links against
// an entry of the bytes written (with their CRC32C) and a scrub, which
// checks the SHA-256 on record, finds it sound. It guards the digests
// against a change such as hashing a write beside its write(2), which
// takes in bytes before the disk refuses them.
func TestFileStoreShortLargeWrite(t *testing.T) {
	disk := mountTmpfs(t, 2<<20)
	dir := filepath.Join(disk, "store")
	s := openStore(t, dir, nil)
	// Room for the link to come, given back once the write has failed.
	room := filepath.Join(disk, "room")
	if err := os.WriteFile(room, make([]byte, 256<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	ch, err := s.OpenStream(t.Context(), key(1), request(key(1), "big"))
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	n, err := ch.Write(data)
	if !errors.Is(err, syscall.ENOSPC) || n == 0 || n >= len(data) {
		t.Fatalf("Write of %d bytes on a 2 MiB disk = %d, %v; want a short write and ENOSPC", len(data), n, err)
	}
	if err := os.Remove(room); err != nil {
		t.Fatal(err)
	}
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	e := entry(1, key(1), "big", n)
	e.Checksum, e.Checksummed = crc32.Checksum(data[:n], castagnoli), true
	mustLink(t, s, e, ch)
	rep, err := s.Scrub(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Checked != 1 || len(rep.Bad) != 0 {
		t.Fatalf("scrub checked %d copies, %d bad; want 1 sound", rep.Checked, len(rep.Bad))
	}
	if got := readStored(t, s, "big"); got != string(data[:n]) {
		t.Fatalf("big holds %d bytes, not the %d written", len(got), n)
	}
}
