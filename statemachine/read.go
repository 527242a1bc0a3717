package statemachine

import (
	"errors"
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
// other peers and clients (STREAM_READ). The server calls it off the event
// loop, since opening a file may wait on the disk.
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

// openReadAttempts bounds how often OpenRead retries when the name's entry
// changes between its lookup and the open: each retry means a newer entry
// was linked meanwhile, which a name only sees so often.
const openReadAttempts = 4

// OpenRead implements Reader. The file it opens is checked against the
// entry the name held before and after the open, and against the entry's
// length, so a concurrent Link that replaces or hides the name is either
// seen or retried, never served as the other entry.
func (s *FileStore) OpenRead(name string) (ReadHandle, error) {
	n, err := CleanName(name)
	if err != nil {
		return nil, err
	}
	for range openReadAttempts {
		sf, ok := s.Lookup(n)
		if !ok {
			return nil, fmt.Errorf("%w: %q", ErrNotFound, n)
		}
		if sf.Missing {
			return nil, fmt.Errorf("%w: %q (index %d)", ErrMissing, n, sf.Index)
		}
		f, err := s.root.Open(filepath.Join(dataDir, sf.Name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // replaced or hidden since the lookup: look again
		}
		if err != nil {
			return nil, fmt.Errorf("statemachine: open %q: %w", n, err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("statemachine: open %q: %w", n, err)
		}
		if again, _ := s.Lookup(n); again != sf || uint64(st.Size()) != sf.Length {
			f.Close()
			continue
		}
		return &fileHandle{f: f, sf: sf}, nil
	}
	return nil, fmt.Errorf("statemachine: open %q: its entry kept changing while opening it", n)
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
