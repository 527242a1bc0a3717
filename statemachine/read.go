package statemachine

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrNotFound is returned by OpenRead for a name the state machine holds no
// committed entry for. It matches fs.ErrNotExist too, as FileStore.Open's
// error does.
var ErrNotFound error = notFound{}

type notFound struct{}

func (notFound) Error() string        { return "statemachine: no committed file by that name" }
func (notFound) Is(target error) bool { return target == fs.ErrNotExist }

// Reader is a StateMachine that serves its committed files to readers on
// other peers and clients (STREAM_READ). handler.ReadServer calls it off
// the event loop, since opening a file may wait on the disk.
type Reader interface {
	// OpenRead opens the newest committed entry of name for reading. It
	// fails with an error matching ErrNotFound when there is none, with
	// ErrMissing when the entry has no copy on this peer, and with ErrBadName
	// when name is not a valid name. The handle reads exactly the entry it
	// names: never an older version, nor a newer one that replaced it after
	// OpenRead returned.
	OpenRead(name string) (ReadHandle, error)
	// List returns the newest entry of each name, in log order, including
	// those whose copy is missing on this peer.
	List() []StoredFile
}

// ReadHandle reads one committed file. ReadAt may be called from several
// goroutines at once.
type ReadHandle interface {
	io.ReaderAt
	io.Closer
	// Info is the committed entry being read; Info().Length is its size.
	Info() StoredFile
}

// FileHandle is a ReadHandle backed by an *os.File, which a server may send
// with sendfile(2) instead of reading it into memory. The file belongs to
// the handle: it is closed by the handle's Close, and callers must not
// change its offset.
type FileHandle interface {
	ReadHandle
	File() *os.File
}

// OpenRead implements Reader. It looks the name up and opens its file
// under the lock that Link holds while it moves files into place, so the
// file it opens is the entry it looked up, never a newer one renamed over
// it in between. It fails with an error matching ErrNotFound, ErrMissing
// or ErrBadName as Reader says.
func (s *FileStore) OpenRead(name string) (ReadHandle, error) {
	n, err := CleanName(name)
	if err != nil {
		return nil, err
	}
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	sf, ok := s.Lookup(n)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, n)
	}
	if sf.Missing {
		return nil, fmt.Errorf("%w: %q (index %d)", ErrMissing, n, sf.Index)
	}
	f, err := s.root.Open(filepath.Join(dataDir, sf.Name))
	if err != nil {
		return nil, fmt.Errorf("statemachine: open %q: %w", n, err)
	}
	st, err := f.Stat()
	if err == nil && uint64(st.Size()) != sf.Length {
		err = fmt.Errorf("holds %d bytes, its entry %d names %d", st.Size(), sf.Index, sf.Length)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("statemachine: open %q: %w", n, err)
	}
	return &fileHandle{f: f, sf: sf}, nil
}

// fileHandle is FileStore's FileHandle.
type fileHandle struct {
	f  *os.File
	sf StoredFile
}

func (h *fileHandle) ReadAt(p []byte, off int64) (int, error) { return h.f.ReadAt(p, off) }
func (h *fileHandle) Close() error                            { return h.f.Close() }
func (h *fileHandle) Info() StoredFile                        { return h.sf }
func (h *fileHandle) File() *os.File                          { return h.f }
