package statemachine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/pipestream/pipestream/internal/crashpoint"
)

// This file holds how FileStore applies an entry: Link, the record it
// writes to committed.log, and entries recorded missing.

// Link implements StateMachine; see FileStore for what it guarantees. It
// does not watch ctx: a link is a few small writes and fsyncs, and stopping
// one halfway would only leave more to recover.
func (s *FileStore) Link(_ context.Context, e Entry, ch DataChannel) error {
	c, err := linkChannel[*fileChannel](s, "FileStore", e.Key, ch)
	if err != nil {
		return err
	}

	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	s.retryDeferredLocked()
	s.mu.RLock()
	prev, done := s.byKey[e.Key]
	s.mu.RUnlock()
	if c == nil {
		return s.linkWithoutChannel(e, prev, done)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.state == chanLinked:
		return nil
	case c.state == chanCleaned, c.state == chanReleased:
		return s.linkWithoutChannel(e, prev, done)
	case done && !prev.Missing:
		return c.cleanUpLocked()
	}
	// A copy that cannot be linked is discarded, and the entry recorded
	// missing here: it is committed, and the name's older version must not
	// stand in for it.
	if err := c.closeLocked(); err != nil {
		return errors.Join(fmt.Errorf("statemachine: link %v: %w", e.Key, err), c.cleanUpLocked(), s.recordMissing(e))
	}
	if c.n != e.Length {
		return errors.Join(fmt.Errorf("%w: stream %v holds %d bytes, entry %d names %d",
			ErrLengthMismatch, e.Key, c.n, e.Index, e.Length), c.cleanUpLocked(), s.recordMissing(e))
	}
	// The leaves of the stream's routing tree checked the bytes on the
	// wire; this checks what this peer wrote, so a copy that went wrong
	// between its memory and its disk is repaired, not linked.
	if e.Checksummed && c.crc != e.Checksum {
		return errors.Join(fmt.Errorf("%w: stream %v wrote CRC32C %08x, entry %d names %08x",
			ErrChecksumMismatch, e.Key, c.crc, e.Index, e.Checksum), c.cleanUpLocked(), s.recordMissing(e))
	}

	sf := StoredFile{Name: c.name, Index: e.Index, Term: e.Term, Key: e.Key, Length: c.n,
		Checksum: e.Checksum, Checksummed: e.Checksummed}
	c.h.Sum(sf.SHA256[:0])
	c.h = nil
	err = s.linkFile(sf, c.tmp)
	// Linked, or kept for a deferred link: the channel's file is no longer
	// its own to clean up either way.
	c.state = chanLinked
	return err
}

// linkWithoutChannel applies e on a peer that has no open channel for it:
// a replay of an entry already applied, a closed file found at start-up,
// or no copy at all. prev is what the log holds for the key, if done.
func (s *FileStore) linkWithoutChannel(e Entry, prev StoredFile, done bool) error {
	if done && !prev.Missing {
		return nil
	}
	if o, ok := s.orphans[e.Key]; ok {
		delete(s.orphans, e.Key)
		sf, err := s.adopt(e, o)
		if err == nil {
			s.logger.Info("statemachine: linked a copy kept across a restart", "name", sf.Name, "index", e.Index)
			return s.linkFile(sf, o.path)
		}
		s.logger.Warn("statemachine: discarding a kept copy that does not match its entry",
			"stream", e.Key.String(), "index", e.Index, "err", err)
		if rerr := s.root.Remove(o.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
		if done {
			return err
		}
		return errors.Join(err, s.recordMissing(e))
	}
	if done {
		return nil // already recorded missing
	}
	return s.recordMissing(e)
}

// linkFile links sf to the closed file tmp, or defers the link when its
// record cannot be written. Call with linkMu held.
func (s *FileStore) linkFile(sf StoredFile, tmp string) error {
	committed, err := s.commit(sf, tmp)
	if committed {
		return err
	}
	// The entry is committed and the bytes are here: keep them, hide the
	// older version the name held, and try again later.
	s.deferred[sf.Key] = deferredLink{sf: sf, tmp: tmp}
	missing := sf
	missing.Missing, missing.SHA256 = true, [32]byte{}
	s.mu.RLock()
	cur, held := s.byName[sf.Name]
	s.mu.RUnlock()
	s.setEntry(missing)
	if held && cur.Index < sf.Index && !cur.Missing {
		// A crash before the retry must not leave the older version to
		// be served under the name: the log still holds only its record.
		err = errors.Join(err, s.removeData(sf.Name))
	}
	s.logger.Warn("statemachine: could not record a link; the copy is kept, reported missing and retried",
		"name", sf.Name, "index", sf.Index, "err", err)
	return fmt.Errorf("%w: %w", ErrLinkDeferred, err)
}

// commit records sf and moves its temporary file into place. committed
// reports whether the record stands: the file is in place, or the next
// NewFileStore will put it there. A newer entry already holding sf.Name
// keeps it; sf is recorded and its file removed.
func (s *FileStore) commit(sf StoredFile, tmp string) (committed bool, err error) {
	s.mu.RLock()
	cur, held := s.byName[sf.Name]
	s.mu.RUnlock()
	superseded := held && cur.Index > sf.Index
	dst := filepath.Join(dataDir, sf.Name)
	if !superseded {
		if err := s.mkdirs(filepath.Dir(dst)); err != nil {
			return false, fmt.Errorf("statemachine: link %v: %w", sf.Key, err)
		}
	}
	before := s.logSize
	if err := s.appendRecord(sf); err != nil {
		return false, errors.Join(fmt.Errorf("statemachine: link %v: %w", sf.Key, err), s.truncateLog(before))
	}
	crashpoint.HitOn("filestore.link.recorded", sf.Name)
	if superseded {
		s.setEntry(sf)
		if err := s.root.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return true, fmt.Errorf("statemachine: link %v: remove superseded copy: %w", sf.Key, err)
		}
		return true, nil
	}
	if err := s.root.Rename(tmp, dst); err != nil {
		err = fmt.Errorf("statemachine: link %v: %w", sf.Key, err)
		if terr := s.truncateLog(before); terr != nil {
			// The record stands: restart finishes the rename.
			return true, errors.Join(err, terr)
		}
		return false, err
	}
	s.setEntry(sf)
	crashpoint.HitOn("filestore.link.renamed", sf.Name)
	if err := s.syncDir(filepath.Dir(dst)); err != nil {
		return true, fmt.Errorf("statemachine: link %v: %w", sf.Key, err)
	}
	return true, nil
}

// setEntry records sf as applied; it becomes its name's entry unless a
// newer one holds the name.
func (s *FileStore) setEntry(sf StoredFile) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byKey[sf.Key] = sf
	if cur, ok := s.byName[sf.Name]; !ok || cur.Index <= sf.Index {
		s.byName[sf.Name] = sf
	}
}

// recordMissing records e as applied without data on this peer, and removes
// the older version its name held so it is not served in e's place.
func (s *FileStore) recordMissing(e Entry) error {
	name, err := streamName(e.Key, e.Request)
	if err != nil {
		// The primary checked the name; an entry whose name this peer
		// refuses cannot be stored here under any name.
		s.logger.Warn("statemachine: committed stream has an unusable name on this peer",
			"index", e.Index, "stream", e.Key.String(), "err", err)
		return fmt.Errorf("statemachine: link %v: %w", e.Key, err)
	}
	sf := StoredFile{Name: name, Index: e.Index, Term: e.Term, Key: e.Key, Length: e.Length, Missing: true,
		Checksum: e.Checksum, Checksummed: e.Checksummed}
	s.logger.Warn("statemachine: committed stream has no data on this peer; its copy is missing",
		"name", name, "index", e.Index, "stream", e.Key.String())
	s.mu.RLock()
	cur, held := s.byName[name]
	s.mu.RUnlock()
	before := s.logSize
	aerr := s.appendRecord(sf)
	if aerr != nil {
		aerr = errors.Join(fmt.Errorf("statemachine: record missing %v: %w", e.Key, aerr), s.truncateLog(before))
	}
	// Recorded or not, this process must not serve the older version.
	s.setEntry(sf)
	if held && cur.Index < sf.Index && !cur.Missing {
		aerr = errors.Join(aerr, s.removeData(name))
	}
	return aerr
}

// removeData removes the copy stored under name, durably.
func (s *FileStore) removeData(name string) error {
	p := filepath.Join(dataDir, name)
	if err := s.root.Remove(p); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("statemachine: remove superseded %s: %w", name, err)
	}
	return s.syncDir(filepath.Dir(p))
}
