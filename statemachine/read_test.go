package statemachine_test

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"testing"

	"github.com/pipestream/pipestream/statemachine"
)

func readHandle(t testing.TB, h statemachine.ReadHandle) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(h, 0, int64(h.Info().Length)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// OpenRead serves the newest entry of a name, keeps serving the entry it
// opened after a newer one replaces it, and refuses a name it does not
// hold, a bad name, and a name whose newest entry has no copy here.
func TestFileStoreOpenRead(t *testing.T) {
	s := openStore(t, t.TempDir(), nil)
	var _ statemachine.Reader = s
	if _, err := s.OpenRead("f"); !errors.Is(err, statemachine.ErrNotFound) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenRead of an unknown name: %v", err)
	}
	if _, err := s.OpenRead("../f"); !errors.Is(err, statemachine.ErrBadName) {
		t.Fatalf("OpenRead of a bad name: %v", err)
	}
	mustLink(t, s, entry(1, key(1), "f", 3), write(t, s, key(1), "f", "old"))
	old, err := s.OpenRead("./f")
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if info := old.Info(); info.Index != 1 || info.Length != 3 || info.Name != "f" || info.Missing {
		t.Fatalf("Info = %+v", info)
	}
	if _, ok := old.(statemachine.FileHandle); !ok {
		t.Fatalf("FileStore's handle %T is not a FileHandle", old)
	}
	mustLink(t, s, entry(2, key(2), "f", 4), write(t, s, key(2), "f", "newr"))
	if got := readHandle(t, old); got != "old" || old.Info().Index != 1 {
		t.Fatalf("the handle of the replaced entry reads %q as %+v", got, old.Info())
	}
	cur, err := s.OpenRead("f")
	if err != nil {
		t.Fatal(err)
	}
	if got := readHandle(t, cur); got != "newr" || cur.Info().Index != 2 {
		t.Fatalf("OpenRead after the replace reads %q as %+v", got, cur.Info())
	}
	cur.Close()
	// A newer entry with no copy here hides the older version.
	if err := s.Link(context.Background(), entry(3, key(3), "f", 9), nil); err != nil {
		t.Fatal(err)
	}
	if h, err := s.OpenRead("f"); !errors.Is(err, statemachine.ErrMissing) || h != nil {
		t.Fatalf("OpenRead of a missing copy: %v, %v", h, err)
	}
}
