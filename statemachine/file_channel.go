package statemachine

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"sync"

	"github.com/pipestream/pipestream/internal/crashpoint"
)

// fileChannel is FileStore's DataChannel: a temporary file and a running
// SHA-256 of what was written to it.
type fileChannel struct {
	s    *FileStore
	key  StreamKey
	name string // final name, checked at open
	tmp  string // path inside the root

	mu    sync.Mutex
	state chanState
	f     *os.File // nil once closed
	h     hash.Hash
	crc   uint32 // CRC32C of what was written, to check against the entry's
	n     uint64
	dirty bool // written since the last fsync
}

func (c *fileChannel) owner() any           { return c.s }
func (c *fileChannel) streamKey() StreamKey { return c.key }

func (c *fileChannel) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != chanOpen {
		return 0, ErrChannelClosed
	}
	n, err := c.f.Write(p)
	c.h.Write(p[:n])
	c.crc = crc32.Update(c.crc, castagnoli, p[:n])
	c.n += uint64(n)
	c.dirty = c.dirty || n > 0
	return n, err
}

// Truncate implements Truncater. The running SHA-256 cannot be wound
// back, so it and the CRC32C are recomputed from the file's first size
// bytes: a resume is rare, and the kept part is read once.
func (c *fileChannel) Truncate(size uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != chanOpen {
		return ErrChannelClosed
	}
	if size > c.n {
		return fmt.Errorf("statemachine: truncate %v to %d bytes: it holds %d", c.key, size, c.n)
	}
	if size == c.n {
		return nil
	}
	if err := c.f.Truncate(int64(size)); err != nil {
		return err
	}
	if _, err := c.f.Seek(int64(size), io.SeekStart); err != nil {
		return err
	}
	h, crc := sha256.New(), uint32(0)
	r := io.NewSectionReader(c.f, 0, int64(size))
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		h.Write(buf[:n])
		crc = crc32.Update(crc, castagnoli, buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("statemachine: truncate %v: reread: %w", c.key, err)
		}
	}
	c.h, c.crc, c.n, c.dirty = h, crc, size, true
	return nil
}

func (c *fileChannel) Sync() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != chanOpen {
		return ErrChannelClosed
	}
	if err := c.f.Sync(); err != nil {
		return err
	}
	c.dirty = false
	return nil
}

// Close is idempotent; it fails only after CleanUp.
func (c *fileChannel) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeLocked()
}

func (c *fileChannel) closeLocked() error {
	switch c.state {
	case chanCleaned:
		return ErrChannelClosed
	case chanClosed, chanLinked, chanReleased:
		return nil
	}
	var err error
	if c.dirty && c.s.syncOnClose {
		err = c.f.Sync()
	}
	// The file is closed even when the fsync failed; its data is suspect,
	// so the error stands and the stream should be cleaned up.
	err = errors.Join(err, c.f.Close())
	c.f, c.state = nil, chanClosed
	if err != nil {
		return err
	}
	// The closed name is what a restart keeps: rename, and make the rename
	// durable, before this peer acknowledges the CLOSE.
	closed := c.tmp + closedSuffix
	if err := c.s.root.Rename(c.tmp, closed); err != nil {
		return err
	}
	c.tmp = closed
	crashpoint.HitOn("filestore.close.renamed", c.name)
	if c.s.syncOnClose {
		if err := c.s.syncDir(tmpDir); err != nil {
			return err
		}
	}
	crashpoint.HitOn("filestore.close.synced", c.name) // the ack is next
	return nil
}

// CleanUp removes the temporary file. It is idempotent, and a no-op after
// Link.
func (c *fileChannel) CleanUp() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cleanUpLocked()
}

func (c *fileChannel) cleanUpLocked() error {
	if c.state == chanCleaned || c.state == chanLinked || c.state == chanReleased {
		return nil
	}
	var err error
	if c.f != nil {
		err = c.f.Close()
		c.f = nil
	}
	c.state, c.h = chanCleaned, nil
	if rerr := c.s.root.Remove(c.tmp); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = errors.Join(err, fmt.Errorf("statemachine: clean up %v: %w", c.key, rerr))
	}
	return err
}

// Release implements Releaser: a closed channel's file stays under its
// closed name, which the next NewFileStore keeps for the entry. A channel
// still open has nothing a peer acknowledged, and is cleaned up.
func (c *fileChannel) Release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == chanClosed {
		c.state, c.h = chanReleased, nil
		return nil
	}
	return c.cleanUpLocked()
}
