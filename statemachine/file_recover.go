package statemachine

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// This file holds what FileStore does with the files a crash or a failed
// link left behind: recovery at start-up, orphans, deferred links.

// recoverTmp finishes the link a crash interrupted after its record was
// written, keeps the files of closed streams as orphans for their entries,
// and removes those of streams that never closed: no peer acknowledged
// them, so no committed entry needs them.
func (s *FileStore) recoverTmp() error {
	d, err := s.root.Open(tmpDir)
	if err != nil {
		return fmt.Errorf("statemachine: file store: %w", err)
	}
	entries, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("statemachine: file store: %w", err)
	}
	removed := 0
	for _, de := range entries {
		p := filepath.Join(tmpDir, de.Name())
		base, closed := strings.CutSuffix(de.Name(), closedSuffix)
		if key, ok := parseTmpName(base); ok && de.Type().IsRegular() {
			if sf, ok := s.byKey[key]; ok && !sf.Missing {
				if s.byName[sf.Name].Key == key && s.matches(p, sf) {
					if err := s.commitRecovered(sf, p); err != nil {
						return err
					}
					s.logger.Info("statemachine: finished an interrupted link", "name", sf.Name, "index", sf.Index)
					continue
				}
			} else if closed {
				// Linked when its entry is applied (or was recorded
				// missing by a peer that could not see this file). Its
				// age counts from now: how long this process has kept it
				// waiting, not when it was written, which may be long
				// before a restart that replays its entry.
				s.orphans[key] = orphan{path: p, kept: time.Now()}
				continue
			}
		}
		if err := s.root.RemoveAll(p); err != nil {
			return fmt.Errorf("statemachine: file store: remove stale %s: %w", p, err)
		}
		removed++
	}
	if removed > 0 {
		s.logger.Info("statemachine: removed temporary files of streams that never closed", "count", removed)
	}
	if len(s.orphans) > 0 {
		s.logger.Info("statemachine: kept closed streams for their entries", "count", len(s.orphans))
	}
	if err := s.repairFromOrphans(); err != nil {
		return err
	}
	return s.checkCopies()
}

// checkCopies records missing every name whose newest entry the log calls
// linked but whose file is not in data/: a crash between a repair's record
// and its rename, or a copy removed behind the store's back. The Repairer
// then fetches it like any missing copy.
func (s *FileStore) checkCopies() error {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	var errs error
	for _, sf := range s.List() {
		if sf.Missing {
			continue
		}
		_, err := s.root.Lstat(filepath.Join(dataDir, sf.Name))
		if err == nil {
			continue
		}
		if !errors.Is(err, fs.ErrNotExist) {
			errs = errors.Join(errs, fmt.Errorf("statemachine: file store: %w", err))
			continue
		}
		s.logger.Warn("statemachine: the log names a copy that is not on disk; it is reported missing",
			"name", sf.Name, "index", sf.Index)
		if _, err := s.markMissing(sf, false); err != nil {
			errs = errors.Join(errs, err)
		}
	}
	return errs
}

// repairFromOrphans links the orphans whose entry was already applied and
// recorded missing: a peer that restarted after it applied the entry
// without seeing the file, or whose deferred link was interrupted.
func (s *FileStore) repairFromOrphans() error {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	for key := range s.orphans {
		sf, ok := s.byKey[key]
		if !ok || !sf.Missing {
			continue
		}
		e := Entry{Index: sf.Index, Term: sf.Term, Key: key, Length: sf.Length,
			Request: nameRequest(sf), Checksum: sf.Checksum, Checksummed: sf.Checksummed}
		if err := s.linkWithoutChannel(e, sf, true); err != nil && !errors.Is(err, ErrLinkDeferred) {
			return err
		}
	}
	return nil
}

// adopt checks that the orphan o holds e's data and returns the entry to
// link it under.
func (s *FileStore) adopt(e Entry, o orphan) (StoredFile, error) {
	name, err := streamName(e.Key, e.Request)
	if err != nil {
		return StoredFile{}, err
	}
	sf := StoredFile{Name: name, Index: e.Index, Term: e.Term, Key: e.Key,
		Checksum: e.Checksum, Checksummed: e.Checksummed}
	d, err := s.digestFile(o.path)
	if err != nil {
		return StoredFile{}, err
	}
	if d.n != e.Length {
		return StoredFile{}, fmt.Errorf("%w: kept copy of %v holds %d bytes, entry %d names %d",
			ErrLengthMismatch, e.Key, d.n, e.Index, e.Length)
	}
	if e.Checksummed && d.crc != e.Checksum {
		return StoredFile{}, fmt.Errorf("%w: kept copy of %v has CRC32C %08x, entry %d names %08x",
			ErrChecksumMismatch, e.Key, d.crc, e.Index, e.Checksum)
	}
	sf.Length, sf.SHA256 = d.n, d.sha
	return sf, nil
}

// matches reports whether the file at p holds sf's data.
func (s *FileStore) matches(p string, sf StoredFile) bool {
	d, err := s.digestFile(p)
	return err == nil && d.n == sf.Length && d.sha == sf.SHA256 && (!sf.Checksummed || d.crc == sf.Checksum)
}

// digest is what reading a whole file tells about it.
type digest struct {
	n   uint64
	sha [32]byte
	crc uint32 // CRC32C
}

func (s *FileStore) digestFile(p string) (digest, error) {
	f, err := s.root.Open(p)
	if err != nil {
		return digest{}, err
	}
	defer f.Close()
	h, c := sha256.New(), crc32.New(castagnoli)
	n, err := io.Copy(io.MultiWriter(h, c), f)
	if err != nil {
		return digest{}, err
	}
	return digest{n: uint64(n), sha: [32]byte(h.Sum(nil)), crc: c.Sum32()}, nil
}

// castagnoli is the CRC32C table, computed by the CPU where it can.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (s *FileStore) commitRecovered(sf StoredFile, tmp string) error {
	dst := filepath.Join(dataDir, sf.Name)
	err := s.mkdirs(filepath.Dir(dst))
	if err == nil {
		err = s.root.Rename(tmp, dst)
	}
	if err == nil {
		err = s.syncDir(filepath.Dir(dst))
	}
	if err != nil {
		return fmt.Errorf("statemachine: file store: recover %s: %w", sf.Name, err)
	}
	return nil
}

// Orphans returns the number of closed streams kept since start-up whose
// entry has not been applied yet.
func (s *FileStore) Orphans() int {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	return len(s.orphans)
}

// SweepOrphans removes the kept closed streams that NewFileStore found
// before cutoff, and returns how many it removed. Their entries
// will never come: call it only once this peer has applied the log as far
// as the group has committed it, with a cutoff at least as old as the
// longest a primary may take to commit a closed stream (the LinkTimeout of
// handler.Config). Package peer does so on a tick.
func (s *FileStore) SweepOrphans(cutoff time.Time) (int, error) {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	var errs error
	n := 0
	for key, o := range s.orphans {
		if !o.kept.Before(cutoff) {
			continue
		}
		if err := s.root.Remove(o.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = errors.Join(errs, fmt.Errorf("statemachine: sweep %s: %w", o.path, err))
			continue
		}
		delete(s.orphans, key)
		n++
	}
	if n > 0 {
		s.logger.Info("statemachine: removed closed streams that were never committed", "count", n)
	}
	return n, errs
}

// Deferred returns the number of applied entries whose link is waiting to
// be retried (see ErrLinkDeferred).
func (s *FileStore) Deferred() int {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	return len(s.deferred)
}

// RetryDeferred retries the links whose record could not be written, and
// returns how many are still waiting. Every Link retries them first too;
// package peer also calls it on a tick, so a peer that receives no new
// stream still heals once its disk has room.
func (s *FileStore) RetryDeferred() int {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	s.retryDeferredLocked()
	return len(s.deferred)
}

func (s *FileStore) retryDeferredLocked() {
	for key, d := range s.deferred {
		committed, err := s.commit(d.sf, d.tmp)
		if !committed {
			continue // still failing; reported when it was deferred
		}
		delete(s.deferred, key)
		if err != nil {
			s.logger.Warn("statemachine: deferred link recorded with an error", "name", d.sf.Name, "err", err)
		} else {
			s.logger.Info("statemachine: deferred link done", "name", d.sf.Name, "index", d.sf.Index)
		}
	}
}

// nameRequest is the request a stored entry was linked by: its name stands
// for the message, which streamName maps back to it.
func nameRequest(sf StoredFile) *pb.RaftClientRequest {
	return &pb.RaftClientRequest{
		ClientId: []byte(sf.Key.ClientID), CallId: sf.Key.StreamID,
		Type: pb.RaftClientRequest_STREAM, Message: []byte(sf.Name),
	}
}
