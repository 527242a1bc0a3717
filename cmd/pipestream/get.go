package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/pipestream/pipestream/datastream"
)

const getHelp = `
Usage: pipestream get NAME --config group.toml [--id ID] [--local] [-o FILE]
       pipestream get NAME --data-dir DIR [-o FILE]

Copies the committed file NAME to stdout, or to FILE with -o, and checks
its length and SHA-256 against what the serving peer recorded when it
committed it; a mismatch is an error. With -o the copy goes to a
temporary file next to FILE that replaces FILE only once it is checked:
a get that fails leaves FILE as it was. A name whose newest entry a peer
holds no copy of (ls shows it as missing) is an error on that peer, never
an older version.

With --config it reads over the network: from peer ID alone, or without
--id from any peer that holds a copy, moving on to another if one fails
part way; and without --id, a copy to FILE that fails its check is read
again from the other peers. With --local (and --config, --id), or --data-dir, it reads the
peer's data directory on this machine instead, for a peer that is down.
`

func runGet(ctx context.Context, args []string, e *env) int {
	fs := newFlagSet(e, "get", getHelp)
	loc := storeFlags(fs)
	out := fs.String("o", "", "write to `file` instead of stdout (- is stdout); it is replaced only by a checked copy")
	pos, err := fs.parse(args)
	switch {
	case err != nil:
	case len(pos) == 0:
		err = usageError("which file? pipestream get NAME")
	case len(pos) > 1:
		err = usageError("one file at a time; got %d arguments", len(pos))
	default:
		err = loc.check()
	}
	if err != nil {
		return e.exit(ctx, "get", err)
	}
	if loc.network() {
		return e.exit(ctx, "get", getNetwork(ctx, e, loc, pos[0], *out))
	}
	return e.exit(ctx, "get", get(e, loc, pos[0], *out))
}

func get(e *env, loc *storeLocation, name, out string) error {
	s, err := loc.open()
	if err != nil {
		return err
	}
	sf, err := s.lookup(name)
	if err != nil {
		return err
	}
	if out == "" || out == "-" {
		return s.copy(e.stdout, sf)
	}
	return writeChecked(out, func(w io.Writer) error { return s.copy(w, sf) })
}

// getNetwork reads name from peer --id, or from any peer, and checks it
// against the record of the peer that answered first. Without --id, a
// copy to a file that fails its check is read again from the peers not
// yet found bad: one bad copy on disk does not fail the get.
func getNetwork(ctx context.Context, e *env, loc *storeLocation, name, out string) error {
	c, peers, err := loc.client()
	if err != nil {
		return err
	}
	defer c.Close()
	toStdout := out == "" || out == "-"
	ids := []string{loc.id}
	if loc.id == "" {
		ids = nil // every peer, from a random one
	}
	for {
		err := getFrom(ctx, e, c, ids, name, out, toStdout)
		var bad *mismatchError
		if loc.id != "" || toStdout || !errors.As(err, &bad) {
			return tlsHint(loc.group, err)
		}
		if ids == nil {
			for _, p := range peers {
				ids = append(ids, p.ID)
			}
		}
		ids = slices.DeleteFunc(ids, func(id string) bool { return id == bad.info.Peer })
		if len(ids) == 0 {
			return err
		}
		fmt.Fprintf(e.stderr, "pipestream get: %v; reading from another peer\n", err)
	}
}

// getFrom reads name from the peers ids (nil: any) to stdout or out.
func getFrom(ctx context.Context, e *env, c *datastream.Client, ids []string, name, out string, toStdout bool) error {
	var opts []datastream.ReadOption
	if ids != nil {
		opts = append(opts, datastream.WithReadPeer(ids...))
	}
	r, err := c.Open(ctx, name, opts...)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		id := ""
		if len(ids) == 1 {
			id = ids[0]
		}
		return openError(err, name, id)
	}
	defer r.Close()
	read := func(w io.Writer) error {
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(w, h), r)
		if err != nil {
			return hint(err)
		}
		info := r.Info()
		if uint64(n) != info.Length || !bytes.Equal(h.Sum(nil), info.SHA256) {
			return &mismatchError{name: name, n: n, sum: h.Sum(nil), info: info}
		}
		return nil
	}
	if toStdout {
		return read(e.stdout)
	}
	return writeChecked(out, read)
}

// mismatchError is a read that is not what the peer recorded.
type mismatchError struct {
	name string
	n    int64
	sum  []byte
	info datastream.FileInfo
}

func (m *mismatchError) Error() string {
	return fmt.Sprintf("%s: read %d bytes with sha256 %x; peer %s recorded %d bytes with sha256 %x at log index %d",
		m.name, m.n, m.sum, m.info.Peer, m.info.Length, m.info.SHA256, m.info.Index)
}

// openError explains why Open found no copy of name to read, on peer id
// or, if id is empty, on any peer.
func openError(err error, name, id string) error {
	switch {
	case errors.Is(err, datastream.ErrMissing) && id != "":
		return fmt.Errorf("%s: peer %s holds no copy of its newest entry (ls shows it missing); get it from another peer with --id, or leave out --id to read from any", name, id)
	case errors.Is(err, datastream.ErrMissing):
		return fmt.Errorf("%s: no peer reached holds a copy of its newest entry (%w)", name, err)
	case errors.Is(err, datastream.ErrNotFound) && id != "":
		return fmt.Errorf("peer %s holds no file %q (pipestream ls lists what it holds)", id, name)
	case errors.Is(err, datastream.ErrNotFound):
		return fmt.Errorf("no peer reached holds a file %q (pipestream ls lists what a peer holds)", name)
	}
	return hint(err)
}

// writeChecked writes path through write, replacing path only if write
// succeeds: write goes to a temporary file in path's directory, which is
// synced and renamed over path once write returns nil, and removed
// otherwise. A path that exists and is not a regular file (a device, a
// pipe) is written in place, since it cannot be replaced.
func writeChecked(path string, write func(io.Writer) error) (err error) {
	perm := fs.FileMode(0o644)
	if fi, serr := os.Stat(path); serr == nil {
		if fi.IsDir() {
			return fmt.Errorf("%s is a directory", path)
		}
		if !fi.Mode().IsRegular() {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			return errors.Join(write(f), f.Close())
		}
		perm = fi.Mode().Perm()
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".pipestream-get-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := write(tmp); err != nil {
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
