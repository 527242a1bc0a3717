package statemachine

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// This file holds what FileStore answers about the entries it applied.

// Committed implements KeyChecker: whether an entry for key was applied
// here, linked or missing, and at which index.
func (s *FileStore) Committed(key StreamKey) (uint64, bool) {
	index, _, ok := s.CommittedEntry(key)
	return index, ok
}

// CommittedEntry implements TermChecker: Committed, with the entry's term.
func (s *FileStore) CommittedEntry(key StreamKey) (index, term uint64, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sf, ok := s.byKey[key]
	return sf.Index, sf.Term, ok
}

// Missing returns the number of names whose newest committed entry has no
// copy on this peer (StoredFile.Missing).
func (s *FileStore) Missing() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, sf := range s.byName {
		if sf.Missing {
			n++
		}
	}
	return n
}

// List returns, for each name, the newest entry that wrote it, in log
// order, including entries whose copy is missing on this peer.
func (s *FileStore) List() []StoredFile {
	s.mu.RLock()
	out := make([]StoredFile, 0, len(s.byName))
	for _, sf := range s.byName {
		out = append(out, sf)
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b StoredFile) int {
		if c := cmpUint(a.Index, b.Index); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// Catalog implements Cataloger: the newest entry of every name, in log
// order, whether this peer holds its copy or not.
func (s *FileStore) Catalog() []Entry {
	files := s.List()
	out := make([]Entry, len(files))
	for i, sf := range files {
		out[i] = Entry{Index: sf.Index, Term: sf.Term, Key: sf.Key, Length: sf.Length, Request: nameRequest(sf),
			Checksum: sf.Checksum, Checksummed: sf.Checksummed}
	}
	return out
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Lookup returns what the store holds under name.
func (s *FileStore) Lookup(name string) (StoredFile, bool) {
	n, err := safeName(name) // a name stored before CleanName's newer rules too
	if err != nil {
		return StoredFile{}, false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	sf, ok := s.byName[n]
	return sf, ok
}

// Open opens a committed file for reading. A name the store does not hold
// fails with an error matching fs.ErrNotExist; one whose newest entry has
// no copy here, with one matching ErrMissing.
func (s *FileStore) Open(name string) (*os.File, error) {
	sf, ok := s.Lookup(name)
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	if sf.Missing {
		return nil, &fs.PathError{Op: "open", Path: name, Err: ErrMissing}
	}
	return s.root.Open(filepath.Join(dataDir, sf.Name))
}

var _ TermChecker = (*FileStore)(nil)
