package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/statemachine"
)

const lsHelp = `
Usage: pipestream ls (--config group.toml --id ID | --data-dir DIR)

Lists the files peer ID's file store holds: name, size, the log index and
term of the entry that wrote it, its status and the SHA-256 the peer
computed while writing it. Status "missing" means the entry committed but
this peer holds no copy of it (it was down, or its copy failed); get the
file from another peer. A name with a character that is not printable is
shown quoted, as Go quotes strings, so that every file is one line.

It reads the peer's data directory on this machine, not the network (the
DataStream protocol only writes), and only reads it, so it works whether
the peer runs or not. Run it where the peer's data is.
`

const getHelp = `
Usage: pipestream get NAME (--config group.toml --id ID | --data-dir DIR) [-o FILE]

Copies the file peer ID's store holds as NAME to stdout, or to FILE with
-o, and checks its length and SHA-256 against what the peer recorded when
it committed it; a mismatch is an error. With -o the copy goes to a
temporary file next to FILE that replaces FILE only once it is checked:
a get that fails leaves FILE as it was. A name whose newest entry this
peer holds no copy of (ls shows it as missing) is an error, not an older
version.

Like ls, it reads the peer's data directory on this machine, and only
reads it.
`

func runLs(ctx context.Context, args []string, e *env) int {
	fs := newFlagSet(e, "ls", lsHelp)
	loc := storeFlags(fs)
	pos, err := fs.parse(args)
	if err == nil && len(pos) > 0 {
		err = usageError("unexpected argument %q", pos[0])
	}
	if err != nil {
		return e.exit(ctx, "ls", err)
	}
	return e.exit(ctx, "ls", ls(e, loc))
}

func ls(e *env, loc *storeLocation) error {
	s, err := loc.open()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tBYTES\tINDEX\tTERM\tSTATUS\tSHA256")
	for _, f := range s.list() {
		status, sum := "ok", hex.EncodeToString(f.SHA256[:])
		if f.Missing {
			status, sum = "missing", "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\n", displayName(f.Name), f.Length, f.Index, f.Term, status, sum)
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
	}
	if err != nil {
		return e.exit(ctx, "get", err)
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

// storeLocation is where ls and get find a peer's data directory.
type storeLocation struct {
	config, id, dataDir string
}

func storeFlags(fs *flagSet) *storeLocation {
	l := new(storeLocation)
	fs.StringVar(&l.config, "config", "", "group `file`; the peer's data directory is data_dir/ID, or its own data_dir")
	fs.StringVar(&l.id, "id", "", "the `id` of the peer whose store to read, with --config")
	fs.StringVar(&l.dataDir, "data-dir", "", "the peer's data `directory`, as serve's --data-dir, instead of --config and --id")
	return l
}

// open reads the store the flags point at.
func (l *storeLocation) open() (*localStore, error) {
	dir := l.dataDir
	switch {
	case dir != "" && (l.config != "" || l.id != ""):
		return nil, usageError("--data-dir goes without --config and --id")
	case dir == "" && (l.config == "" || l.id == ""):
		return nil, usageError("give --config FILE and --id ID, or --data-dir DIR")
	case dir == "":
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
