package statemachine_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pipestream/pipestream/statemachine"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checkedEntry is entry with the CRC32C of data, as a checksummed stream's.
func checkedEntry(index uint64, k statemachine.StreamKey, name, data string) statemachine.Entry {
	e := entry(index, k, name, len(data))
	e.Checksum, e.Checksummed = crc32.Checksum([]byte(data), castagnoli), true
	return e
}

func TestFileStoreRepair(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	data := "the repaired bytes"
	mustLink(t, s, checkedEntry(1, key(1), "f", "an older version"), write(t, s, key(1), "f", "an older version"))
	mustLink(t, s, checkedEntry(2, key(2), "f", data), nil) // f's newest: missing here
	missing := s.MissingEntries()
	if len(missing) != 1 || missing[0].Index != 2 || !missing[0].Checksummed {
		t.Fatalf("MissingEntries = %+v", missing)
	}
	sf := missing[0]

	// Bytes that are not the entry's are refused, and nothing changes.
	for _, bad := range []string{"the repaired bytez", "short", data + "!"} {
		err := s.Repair(t.Context(), sf, strings.NewReader(bad), [32]byte{}, nil)
		if !errors.Is(err, statemachine.ErrChecksumMismatch) && !errors.Is(err, statemachine.ErrLengthMismatch) {
			t.Fatalf("Repair with %q = %v", bad, err)
		}
		checkMissing(t, s, dir, "f", 2)
	}
	// A source whose own record disagrees is refused too.
	if err := s.Repair(t.Context(), sf, strings.NewReader(data), sha256.Sum256([]byte("other")), nil); !errors.Is(err, statemachine.ErrChecksumMismatch) {
		t.Fatalf("Repair against another SHA-256 = %v", err)
	}

	if err := s.Repair(t.Context(), sf, strings.NewReader(data), sha256.Sum256([]byte(data)), nil); err != nil {
		t.Fatal(err)
	}
	if got := readStored(t, s, "f"); got != data || s.Missing() != 0 {
		t.Fatalf("f = %q, missing %d", got, s.Missing())
	}
	if err := s.Repair(t.Context(), sf, strings.NewReader(data), [32]byte{}, nil); !errors.Is(err, statemachine.ErrNotMissing) {
		t.Fatalf("second Repair = %v, want ErrNotMissing", err)
	}
	wantEmpty(t, filepath.Join(dir, "tmp"), "")
	s.Close()
	s = openStore(t, dir, nil)
	if got, sf := readStored(t, s, "f"), s.List()[0]; got != data || sf.Index != 2 || sf.Missing {
		t.Fatalf("after restart f = %q, %+v", got, sf)
	}
}

// A repair that loses the race with a newer link of the name does not
// replace it.
func TestFileStoreRepairLosesToNewerLink(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	mustLink(t, s, entry(2, key(2), "f", 3), nil)
	sf := s.MissingEntries()[0]
	mustLink(t, s, entry(3, key(3), "f", 5), write(t, s, key(3), "f", "newer"))
	if err := s.Repair(t.Context(), sf, strings.NewReader("old"), [32]byte{}, nil); !errors.Is(err, statemachine.ErrNotMissing) {
		t.Fatalf("Repair = %v, want ErrNotMissing", err)
	}
	wantStored(t, s, "f", "newer", "")
}

// One byte flipped in a stored file is found by Scrub: the copy is removed,
// reported missing (never served), and Repair puts it back.
func TestFileStoreScrub(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	good, flipped := "stays as it was", "one byte of this flips"
	mustLink(t, s, checkedEntry(1, key(1), "good", good), write(t, s, key(1), "good", good))
	mustLink(t, s, checkedEntry(2, key(2), "sub/bad", flipped), write(t, s, key(2), "sub/bad", flipped))
	p := filepath.Join(dir, "data", "sub", "bad")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[5] ^= 0x01
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}

	rep, err := s.Scrub(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Checked != 2 || rep.Bytes != int64(len(good)+len(flipped)) || len(rep.Bad) != 1 || rep.Bad[0].Name != filepath.Join("sub", "bad") {
		t.Fatalf("Scrub = %+v", rep)
	}
	checkMissing(t, s, dir, filepath.Join("sub", "bad"), 2)
	wantStored(t, s, "good", good, "")
	if rep, err := s.Scrub(t.Context(), nil); err != nil || rep.Checked != 1 || len(rep.Bad) != 0 {
		t.Fatalf("second Scrub = %+v, %v", rep, err)
	}

	sf := s.MissingEntries()[0]
	if err := s.Repair(t.Context(), sf, bytes.NewReader([]byte(flipped)), [32]byte{}, nil); err != nil {
		t.Fatal(err)
	}
	wantStored(t, s, "sub/bad", flipped, "after repair")
}

// A copy the log names but the disk lacks (a crash between a repair's
// record and its rename, or a file removed behind the store's back) is
// reported missing, at start-up and by Scrub, so that it is repaired: never
// a record of a copy that is not there.
func TestFileStoreCopyGoneIsMissing(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	mustLink(t, s, checkedEntry(1, key(1), "f", "one"), write(t, s, key(1), "f", "one"))
	mustLink(t, s, checkedEntry(2, key(2), "g", "two"), write(t, s, key(2), "g", "two"))
	if err := os.Remove(filepath.Join(dir, "data", "f")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openStore(t, dir, nil)
	checkMissing(t, s, dir, "f", 1)
	wantStored(t, s, "g", "two", "")

	// While the store runs, Scrub finds it.
	if err := os.Remove(filepath.Join(dir, "data", "g")); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Scrub(t.Context(), nil)
	if err != nil || len(rep.Bad) != 1 || rep.Bad[0].Name != "g" {
		t.Fatalf("Scrub = %+v, %v; want g bad", rep, err)
	}
	checkMissing(t, s, dir, "g", 2)
	if got := len(s.MissingEntries()); got != 2 {
		t.Fatalf("%d entries to repair, want 2", got)
	}
}

// A copy whose bytes are not the entry's checksum (written wrong on this
// peer) is not linked: it is recorded missing, for repair.
func TestFileStoreLinkChecksCRC(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, nil)
	e := checkedEntry(1, key(1), "f", "what the client sent")
	err := s.Link(t.Context(), e, write(t, s, key(1), "f", "what this peer wrote"))
	if !errors.Is(err, statemachine.ErrChecksumMismatch) {
		t.Fatalf("Link = %v, want ErrChecksumMismatch", err)
	}
	checkMissing(t, s, dir, "f", 1)
	mustLink(t, s, checkedEntry(2, key(2), "g", "right"), write(t, s, key(2), "g", "right"))
}
