package statemachine

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/pipestream/pipestream/internal/crashpoint"
)

// Pacer paces bulk reads: Wait returns once n more bytes may go, or with
// ctx's error. Repair and Scrub take one, or nil to go at disk speed.
type Pacer interface {
	Wait(ctx context.Context, n int) error
}

// This file holds how a FileStore heals: Repair links a copy fetched from
// another peer for an entry recorded missing, and Scrub finds stored copies
// that no longer match their records and records them missing, for Repair.

// repairSuffix marks a temporary file being filled by Repair. A restart
// removes it: parseTmpName refuses the name, and a repair starts over.
const repairSuffix = ".repair"

// ErrNotMissing is returned by Repair when the entry is no longer the
// name's newest with no copy here: it was linked, repaired or replaced
// meanwhile. There is nothing to do.
var ErrNotMissing = errors.New("statemachine: copy is not missing")

// MissingEntries returns what Repair is for: the newest entry of each name
// that has no copy on this peer, in log order.
func (s *FileStore) MissingEntries() []StoredFile {
	var out []StoredFile
	for _, sf := range s.List() {
		if sf.Missing {
			out = append(out, sf)
		}
	}
	return out
}

// Repair fills in the copy of sf, an entry of MissingEntries, from src,
// which it reads to the end: the bytes go to a temporary file, are checked
// against the entry's length and CRC32C (when it has one) and against
// wantSHA256 (the source's record) when that is not zero, are fsynced, and
// are linked at sf's index. A copy that does not check out is removed and
// Repair returns an error matching ErrLengthMismatch or
// ErrChecksumMismatch; the entry stays missing. limit, if not nil, paces
// the reading. Repair and Link may run at once; a Link of a newer entry
// of the name wins.
func (s *FileStore) Repair(ctx context.Context, sf StoredFile, src io.Reader, wantSHA256 [32]byte, limit Pacer) error {
	if !s.stillMissing(sf) {
		return ErrNotMissing
	}
	tmp := tmpPath(sf.Key) + repairSuffix
	f, err := s.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("statemachine: repair %s: %w", sf.Name, err)
	}
	d, err := fill(ctx, f, src, limit)
	err = errors.Join(err, f.Sync(), f.Close())
	if err == nil {
		err = checkCopy(sf, d, wantSHA256)
	}
	if err != nil {
		return errors.Join(fmt.Errorf("statemachine: repair %s: %w", sf.Name, err), s.removeTmp(tmp))
	}

	crashpoint.HitOn("filestore.repair.filled", sf.Name)
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	if !s.stillMissing(sf) {
		return errors.Join(ErrNotMissing, s.removeTmp(tmp))
	}
	fixed := sf
	fixed.Missing, fixed.SHA256 = false, d.sha
	if committed, err := s.commit(fixed, tmp); !committed {
		return errors.Join(err, s.removeTmp(tmp))
	} else if err != nil {
		return err
	}
	s.logger.Info("statemachine: repaired a missing copy", "name", sf.Name, "index", sf.Index)
	return nil
}

// stillMissing reports whether sf is its name's newest entry and has no
// copy here.
func (s *FileStore) stillMissing(sf StoredFile) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	cur, ok := s.byName[sf.Name]
	return ok && cur.Missing && cur.Index == sf.Index && cur.Key == sf.Key
}

func (s *FileStore) removeTmp(p string) error {
	if err := s.root.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// checkCopy compares what a copy's bytes came to with its entry.
func checkCopy(sf StoredFile, d digest, wantSHA256 [32]byte) error {
	switch {
	case d.n != sf.Length:
		return fmt.Errorf("%w: %d bytes, entry %d names %d", ErrLengthMismatch, d.n, sf.Index, sf.Length)
	case sf.Checksummed && d.crc != sf.Checksum:
		return fmt.Errorf("%w: CRC32C %08x, entry %d names %08x", ErrChecksumMismatch, d.crc, sf.Index, sf.Checksum)
	case wantSHA256 != [32]byte{} && d.sha != wantSHA256:
		return fmt.Errorf("%w: SHA-256 %x, the source recorded %x", ErrChecksumMismatch, d.sha, wantSHA256)
	}
	return nil
}

// fill copies src to w, paced by limit, and digests what it copied.
func fill(ctx context.Context, w io.Writer, src io.Reader, limit Pacer) (digest, error) {
	h, c := sha256.New(), crc32.New(castagnoli)
	buf := make([]byte, 256<<10)
	var d digest
	for {
		if limit != nil {
			if err := limit.Wait(ctx, len(buf)); err != nil {
				return d, err
			}
		} else if err := ctx.Err(); err != nil {
			return d, err
		}
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return d, werr
			}
			h.Write(buf[:n])
			c.Write(buf[:n])
			d.n += uint64(n)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return d, err
		}
	}
	d.sha, d.crc = [32]byte(h.Sum(nil)), c.Sum32()
	return d, nil
}

// ScrubReport is what one Scrub found.
type ScrubReport struct {
	Checked int          // copies read
	Bytes   int64        // bytes read
	Bad     []StoredFile // copies that did not match their records, now missing
}

// Scrub reads every stored copy, paced by limit, and checks it against its
// record: length, SHA-256, and CRC32C when the entry has one. A copy that
// does not match is removed and its entry recorded missing (a WARN log, and
// in Missing and List), so that it is repaired, and never served. A copy
// replaced while it is read is skipped.
func (s *FileStore) Scrub(ctx context.Context, limit Pacer) (ScrubReport, error) {
	var rep ScrubReport
	for _, sf := range s.List() {
		if sf.Missing {
			continue
		}
		d, err := s.scrubOne(ctx, sf, limit)
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		if err != nil {
			// Gone, or unreadable (a bad sector): bad, unless the name
			// was replaced meanwhile, which markMissing sees.
			if err := s.scrubBad(sf, &rep); err != nil {
				return rep, err
			}
			continue
		}
		rep.Checked++
		rep.Bytes += int64(d.n)
		bad := d.n != sf.Length || d.sha != sf.SHA256 || (sf.Checksummed && d.crc != sf.Checksum)
		if !bad {
			continue
		}
		if err := s.scrubBad(sf, &rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// scrubBad records a copy Scrub found bad (or gone, or unreadable).
func (s *FileStore) scrubBad(sf StoredFile, rep *ScrubReport) error {
	s.linkMu.Lock()
	marked, err := s.markMissing(sf, true)
	s.linkMu.Unlock()
	if marked {
		s.logger.Warn("statemachine: stored copy does not match its record; it is removed and reported missing",
			"name", sf.Name, "index", sf.Index)
		rep.Bad = append(rep.Bad, sf)
	}
	return err
}

func (s *FileStore) scrubOne(ctx context.Context, sf StoredFile, limit Pacer) (digest, error) {
	f, err := s.root.Open(filepath.Join(dataDir, sf.Name))
	if err != nil {
		return digest{}, err
	}
	defer f.Close()
	return fill(ctx, io.Discard, f, limit)
}

// markMissing records sf, whose copy is bad or gone, as missing, unless a
// newer link changed the name meanwhile; with remove it also removes the
// copy, but only once the record stands, so that a restart never finds the
// log naming a copy that is gone. Call with linkMu held.
func (s *FileStore) markMissing(sf StoredFile, remove bool) (bool, error) {
	s.mu.RLock()
	cur := s.byName[sf.Name]
	s.mu.RUnlock()
	if cur != sf {
		return false, nil
	}
	missing := sf
	missing.Missing, missing.SHA256 = true, [32]byte{}
	before := s.logSize
	err := s.appendRecord(missing)
	s.setEntry(missing) // recorded or not, never served again
	if err != nil {
		return true, errors.Join(fmt.Errorf("statemachine: record missing %s: %w", sf.Name, err), s.truncateLog(before))
	}
	if remove {
		if rerr := s.root.Remove(filepath.Join(dataDir, sf.Name)); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return true, rerr
		}
	}
	return true, nil
}
