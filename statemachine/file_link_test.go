package statemachine_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/pipestream/pipestream/statemachine"
)

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
		{"channel of another FileStore", func(s *statemachine.FileStore) error {
			other := openStore(t, t.TempDir(), nil)
			return s.Link(ctx, entry(1, key(1), "f", 5), write(t, other, key(1), "f", "hello"))
		}, nil},
		{"entry for another stream", func(s *statemachine.FileStore) error {
			return s.Link(ctx, entry(1, key(2), "f", 5), write(t, s, key(1), "f", "hello"))
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
			wantEmpty(t, filepath.Join(dir, "data"), "after a failed call")
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
	wantEmpty(t, filepath.Join(dir, "tmp"), "after a refused link")
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
	wantStored(t, s, "f", "data", "after a duplicate link")
	wantEmpty(t, filepath.Join(dir, "tmp"), "")
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
