package statemachine

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// This file holds FileStore's on-disk formats: directory helpers, the names
// of temporary files, and committed.log.

// mkdirs creates dir and its missing parents inside the root, fsyncing the
// parent of each directory it creates so the new entries survive a crash.
func (s *FileStore) mkdirs(dir string) error {
	elems := strings.Split(dir, string(filepath.Separator))
	p := ""
	for _, el := range elems {
		parent := p
		p = filepath.Join(p, el)
		err := s.root.Mkdir(p, 0o755)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return err
		}
		if parent == "" {
			parent = "."
		}
		if err := s.syncDir(parent); err != nil {
			return err
		}
	}
	return nil
}

func (s *FileStore) syncDir(dir string) error {
	d, err := s.root.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

func tmpPath(key StreamKey) string {
	return filepath.Join(tmpDir, hex.EncodeToString([]byte(key.ClientID))+"-"+strconv.FormatUint(key.StreamID, 10))
}

func parseTmpName(base string) (StreamKey, bool) {
	i := strings.LastIndexByte(base, '-')
	if i < 0 {
		return StreamKey{}, false
	}
	client, err := hex.DecodeString(base[:i])
	if err != nil {
		return StreamKey{}, false
	}
	id, err := strconv.ParseUint(base[i+1:], 10, 64)
	if err != nil {
		return StreamKey{}, false
	}
	return StreamKey{ClientID: string(client), StreamID: id}, true
}

// record is one line of committed.log.
type record struct {
	Index  uint64 `json:"index"`
	Term   uint64 `json:"term"`
	Client string `json:"client"` // hex
	Stream uint64 `json:"stream"`
	Name   string `json:"name"`
	Length uint64 `json:"length"`
	SHA256 string `json:"sha256"` // hex; empty when missing
	// Missing marks an entry applied with no copy on this peer.
	Missing bool `json:"missing,omitempty"`
	// CRC32C is the entry's checksum of the data, hex, when it has one.
	CRC32C string `json:"crc32c,omitempty"`
}

func (s *FileStore) appendRecord(sf StoredFile) error {
	r := record{
		Index: sf.Index, Term: sf.Term,
		Client: hex.EncodeToString([]byte(sf.Key.ClientID)), Stream: sf.Key.StreamID,
		Name: filepath.ToSlash(sf.Name), Length: sf.Length,
		Missing: sf.Missing,
	}
	if !sf.Missing {
		r.SHA256 = hex.EncodeToString(sf.SHA256[:])
	}
	if sf.Checksummed {
		r.CRC32C = fmt.Sprintf("%08x", sf.Checksum)
	}
	line, err := json.Marshal(r)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	// One write, so a crash leaves at most a torn last line, which has no
	// newline and is dropped by loadLog.
	n, err := s.log.Write(line)
	s.logSize += int64(n)
	if err != nil {
		return err
	}
	return s.log.Sync()
}

func (s *FileStore) truncateLog(size int64) error {
	if err := s.log.Truncate(size); err != nil {
		return fmt.Errorf("statemachine: roll back %s: %w", logName, err)
	}
	s.logSize = size
	if err := s.log.Sync(); err != nil {
		return fmt.Errorf("statemachine: roll back %s: %w", logName, err)
	}
	return nil
}

// loadLog reads committed.log into the index and leaves it open for
// appending. A last line without a newline is a torn write and is cut off;
// any other bad line fails the store, since the log is its only record.
func (s *FileStore) loadLog() error {
	f, err := s.root.OpenFile(logName, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("statemachine: file store: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("statemachine: file store: read %s: %w", logName, err)
	}
	s.log = f
	off, err := parseLog(data, s.setEntry)
	if err != nil {
		return fmt.Errorf("statemachine: file store: %w", err)
	}
	if off < len(data) {
		s.logger.Warn("statemachine: dropping torn last line of "+logName, "bytes", len(data)-off)
		if err := s.truncateLog(int64(off)); err != nil {
			return err
		}
	}
	s.logSize = int64(off)
	return nil
}

// parseLog calls each for every whole line of a committed.log, in order,
// and returns how many bytes those lines take: a last line without a
// newline is being written, or was torn by a crash.
func parseLog(data []byte, each func(StoredFile)) (int, error) {
	off, line := 0, 1
	for off < len(data) {
		i := bytes.IndexByte(data[off:], '\n')
		if i < 0 {
			break
		}
		sf, err := parseRecord(data[off : off+i])
		if err != nil {
			return off, fmt.Errorf("%s line %d: %w", logName, line, err)
		}
		each(sf)
		off += i + 1
		line++
	}
	return off, nil
}

// ReadLog reads the committed.log of the FileStore directory dir without
// opening the store, and returns what List would: the newest entry of each
// name, in log order, missing copies included. It only reads, so it may
// run beside the peer that uses dir (a line being appended is left out).
// A directory with no log yet holds nothing; one that does not exist is
// an error matching fs.ErrNotExist. Its errors are not prefixed with the
// package's name: a command prints them to people as they are.
func ReadLog(dir string) ([]StoredFile, error) {
	data, err := os.ReadFile(filepath.Join(dir, logName))
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(dir); serr != nil {
			var pe *fs.PathError
			if errors.As(serr, &pe) {
				serr = pe.Err // the path is in the message already
			}
			return nil, fmt.Errorf("no file store at %s: %w", dir, serr)
		}
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("statemachine: %w", err)
	}
	s := &FileStore{byKey: make(map[StreamKey]StoredFile), byName: make(map[string]StoredFile)}
	if _, err := parseLog(data, s.setEntry); err != nil {
		return nil, fmt.Errorf("statemachine: %s: %w", dir, err)
	}
	return s.List(), nil
}

func parseRecord(line []byte) (StoredFile, error) {
	var r record
	if err := json.Unmarshal(line, &r); err != nil {
		return StoredFile{}, err
	}
	client, err := hex.DecodeString(r.Client)
	if err != nil {
		return StoredFile{}, fmt.Errorf("client: %w", err)
	}
	sf := StoredFile{
		Index: r.Index, Term: r.Term,
		Key:    StreamKey{ClientID: string(client), StreamID: r.Stream},
		Length: r.Length, Missing: r.Missing,
	}
	if sf.Name, err = safeName(filepath.FromSlash(r.Name)); err != nil {
		return StoredFile{}, err
	}
	if r.CRC32C != "" {
		v, err := strconv.ParseUint(r.CRC32C, 16, 32)
		if err != nil || len(r.CRC32C) != 8 {
			return StoredFile{}, fmt.Errorf("bad crc32c %q", r.CRC32C)
		}
		sf.Checksum, sf.Checksummed = uint32(v), true
	}
	if sf.Missing {
		return sf, nil
	}
	sum, err := hex.DecodeString(r.SHA256)
	if err != nil || len(sum) != len(sf.SHA256) {
		return StoredFile{}, fmt.Errorf("bad sha256 %q", r.SHA256)
	}
	copy(sf.SHA256[:], sum)
	return sf, nil
}
