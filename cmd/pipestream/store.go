package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/statemachine"
)

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
func (l *storeLocation) client() (*datastream.Client, []peer.Member, error) {
	cfg, err := loadClientGroup(l.config)
	if err != nil {
		return nil, nil, err
	}
	peers := cfg.Peers
	l.group = &cfg
	opts, err := clientOptions(cfg, l.transport)
	if err != nil {
		return nil, nil, err
	}
	if l.id != "" && !slices.ContainsFunc(peers, func(p peer.Member) bool { return p.ID == l.id }) {
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
