package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/statemachine"
)

const lsHelp = `
Usage: pipestream ls --config group.toml [--id ID] [--local]
       pipestream ls --data-dir DIR

Lists the files a peer's file store holds: name, size, the log index and
term of the entry that wrote it, its status and the SHA-256 the peer
computed while writing it. Status "missing" means the entry committed but
this peer holds no copy of it (it was down, or its copy failed, and it has
not repaired it yet); get the file from another peer. A name with a
character that is not printable is shown quoted, as Go quotes strings, so
that every file is one line.

With --config it asks peer ID over the network, or without --id the first
peer of the group file that answers, and says on stderr which one did.
With --local (and --config, --id), or --data-dir, it reads the peer's data
directory on this machine instead, and only reads it: that works whether
the peer runs or not.
`

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

func runLs(ctx context.Context, args []string, e *env) int {
	fs := newFlagSet(e, "ls", lsHelp)
	loc := storeFlags(fs)
	pos, err := fs.parse(args)
	if err == nil && len(pos) > 0 {
		err = usageError("unexpected argument %q", pos[0])
	}
	if err == nil {
		err = loc.check()
	}
	if err != nil {
		return e.exit(ctx, "ls", err)
	}
	if loc.network() {
		return e.exit(ctx, "ls", lsNetwork(ctx, e, loc))
	}
	return e.exit(ctx, "ls", ls(e, loc))
}

// catalogEntry is one line of ls, from a local store or a peer's catalog.
type catalogEntry struct {
	name        string
	length      uint64
	index, term uint64
	missing     bool
	sha256      []byte
}

func ls(e *env, loc *storeLocation) error {
	s, err := loc.open()
	if err != nil {
		return err
	}
	files := s.list()
	entries := make([]catalogEntry, len(files))
	for i, f := range files {
		entries[i] = catalogEntry{f.Name, f.Length, f.Index, f.Term, f.Missing, f.SHA256[:]}
	}
	return printCatalog(e, entries)
}

// lsNetwork lists peer --id's catalog, or the first peer's that answers.
func lsNetwork(ctx context.Context, e *env, loc *storeLocation) error {
	c, peers, err := loc.client()
	if err != nil {
		return err
	}
	defer c.Close()
	ids := []string{loc.id}
	if loc.id == "" {
		ids = ids[:0]
		for _, p := range peers {
			ids = append(ids, p.ID)
		}
	}
	var errs []error
	for _, id := range ids {
		files, err := c.List(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(e.stderr, "pipestream ls: catalog of peer %s\n", id)
		entries := make([]catalogEntry, len(files))
		for i, f := range files {
			entries[i] = catalogEntry{f.Name, f.Length, f.Index, f.Term, f.Missing, f.SHA256}
		}
		return printCatalog(e, entries)
	}
	return tlsHint(loc.group, hint(errors.Join(errs...)))
}

func printCatalog(e *env, entries []catalogEntry) error {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tBYTES\tINDEX\tTERM\tSTATUS\tSHA256")
	for _, f := range entries {
		status, sum := "ok", hex.EncodeToString(f.sha256)
		if f.missing {
			status, sum = "missing", "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\n", displayName(f.name), f.length, f.index, f.term, status, sum)
	}
	return tw.Flush()
}

// displayName returns name as ls shows it: as it is, or quoted if it has
// anything a terminal would not show as one line of text (a newline, a
// tab, other control characters, bytes that are not UTF-8), or starts
// with a quote and so would read as quoted.
func displayName(name string) string {
	if !utf8.ValidString(name) || strings.HasPrefix(name, `"`) ||
		strings.ContainsFunc(name, func(r rune) bool { return !strconv.IsPrint(r) }) {
		return strconv.Quote(name)
	}
	return name
}

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

// storeLocation is where ls and get find a peer's store: over the
// network through the group file, or in a data directory on this machine.
type storeLocation struct {
	config, id, dataDir string
	local               bool
	transport           *transportValue
	logger              func() (*slog.Logger, func())
	group               *peer.ClientConfig // set by client
}

func storeFlags(fs *flagSet) *storeLocation {
	l := new(storeLocation)
	fs.StringVar(&l.config, "config", "", "group `file` to find the peers in")
	fs.StringVar(&l.id, "id", "", "the `id` of the peer to read from (default: any)")
	fs.BoolVar(&l.local, "local", false, "read peer --id's data directory on this machine (data_dir/ID, or its own data_dir), not the network")
	fs.StringVar(&l.dataDir, "data-dir", "", "read the peer data `directory` on this machine, as serve's --data-dir, instead of --config")
	l.transport = fs.transportFlag("DataStream `transport`: gnet or netconn (default: the group file's, else gnet)")
	l.logger = fs.logFlag(slog.LevelWarn)
	return l
}

// localFlags is storeFlags for a command that only reads locally: --local
// is implied, and there is no network to tune.
func localFlags(fs *flagSet) *storeLocation {
	l := &storeLocation{local: true}
	fs.StringVar(&l.config, "config", "", "group `file`; the peer's data directory is data_dir/ID, or its own data_dir")
	fs.StringVar(&l.id, "id", "", "the `id` of the peer whose data directory to read, with --config")
	fs.StringVar(&l.dataDir, "data-dir", "", "the peer's data `directory`, as serve's --data-dir, instead of --config and --id")
	return l
}

// check validates the combination of flags.
func (l *storeLocation) check() error {
	switch {
	case l.dataDir != "" && (l.config != "" || l.id != ""):
		return usageError("--data-dir goes without --config and --id")
	case l.dataDir != "":
	case l.config == "":
		return usageError("give --config FILE (and --id ID), or --data-dir DIR")
	case l.local && l.id == "":
		return usageError("--local reads one peer's data directory: which? give --id ID")
	}
	return nil
}

// network reports whether the store is read over the network.
func (l *storeLocation) network() bool { return l.dataDir == "" && !l.local }

// client returns a datastream client for the group file's peers, set up
// as put's, and the peers.
func (l *storeLocation) client() (*datastream.Client, []datastream.Peer, error) {
	cfg, err := loadClientGroup(l.config)
	if err != nil {
		return nil, nil, err
	}
	peers := streamPeers(cfg.Peers)
	l.group = &cfg
	opts, err := clientOptions(cfg, l.transport)
	if err != nil {
		return nil, nil, err
	}
	if l.id != "" && !slices.ContainsFunc(peers, func(p datastream.Peer) bool { return p.ID == l.id }) {
		return nil, nil, usageError("--id %q is not a peer of %s", l.id, l.config)
	}
	log, _ := l.logger()
	c, err := datastream.NewClient(peers, append(opts, datastream.WithLogger(log))...)
	if err != nil {
		return nil, nil, err
	}
	return c, peers, nil
}

// open reads the local store the flags point at.
func (l *storeLocation) open() (*localStore, error) {
	if err := l.check(); err != nil {
		return nil, err
	}
	dir := l.dataDir
	if dir == "" {
		cfg, err := peer.LoadConfig(l.config, l.id)
		if err != nil {
			return nil, err
		}
		if cfg.DataDir == "" {
			return nil, fmt.Errorf("%s keeps no data on disk (no data_dir): its peers store in memory", l.config)
		}
		dir = cfg.DataDir
	}
	return openLocalStore(filepath.Join(dir, "files"))
}

// localStore is a read-only view of a statemachine.FileStore's directory.
// ls and get must not open it as a FileStore: that would take it over from
// a running peer (removing the files of streams in progress, appending to
// its log), and only one FileStore may use a directory at a time.
// statemachine.ReadLog reads its committed.log without taking it over.
type localStore struct {
	dir    string
	byName map[string]statemachine.StoredFile // slash-separated names
	files  []statemachine.StoredFile          // in log order
}

// openLocalStore reads the FileStore directory dir.
func openLocalStore(dir string) (*localStore, error) {
	files, err := statemachine.ReadLog(dir)
	if err != nil {
		return nil, err
	}
	s := &localStore{dir: dir, byName: make(map[string]statemachine.StoredFile, len(files)), files: files}
	for i := range files {
		files[i].Name = filepath.ToSlash(files[i].Name)
		s.byName[files[i].Name] = files[i]
	}
	return s, nil
}

// list returns the stored files in log order.
func (s *localStore) list() []statemachine.StoredFile { return s.files }

// lookup returns the record of the file the store holds as name, or an
// error if it holds none, or no copy of the newest.
func (s *localStore) lookup(name string) (statemachine.StoredFile, error) {
	clean, err := statemachine.CleanName(name)
	if err != nil {
		return statemachine.StoredFile{}, usageError("%v", err)
	}
	sf, ok := s.byName[filepath.ToSlash(clean)]
	switch {
	case !ok:
		return sf, fmt.Errorf("%s holds no file %q (pipestream ls lists what it holds)", s.dir, name)
	case sf.Missing:
		return sf, fmt.Errorf("%s: copy missing on this peer (log index %d, term %d); get it from another peer", name, sf.Index, sf.Term)
	}
	return sf, nil
}

// copy writes the stored file sf to w and checks it against its record.
func (s *localStore) copy(w io.Writer, sf statemachine.StoredFile) error {
	root, err := os.OpenRoot(filepath.Join(s.dir, "data"))
	if err != nil {
		return err
	}
	defer root.Close()
	f, err := root.Open(filepath.FromSlash(sf.Name))
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), f)
	if err != nil {
		return err
	}
	if uint64(n) != sf.Length || [32]byte(h.Sum(nil)) != sf.SHA256 {
		// The file under a name is replaced after its new record is
		// written, so a get racing a put of the same name may see this.
		return fmt.Errorf("%s: read %d bytes with sha256 %x; the store recorded %d bytes with sha256 %x at log index %d (was it being replaced? try again)",
			sf.Name, n, h.Sum(nil), sf.Length, sf.SHA256, sf.Index)
	}
	return nil
}
