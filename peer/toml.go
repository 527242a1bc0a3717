package peer

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/pipestream/pipestream/transport"
)

// LoadConfig reads a group file and returns the Config of member id. Every
// peer of a group reads the same file. Durations are strings such as
// "500ms" or "5m"; every key but peers is optional, and a key the format
// does not know is an error. An example, testdata/group.toml:
//
//	# Every peer keeps its data in data_dir/<id>. A relative data_dir is
//	# relative to this file; no data_dir keeps everything in memory.
//	data_dir = "data"
//	transport = "gnet"             # or "netconn"
//
//	[stream]                       # the DataStream side, Config's fields
//	reply_timeout = "10s"
//	commit_timeout = "30s"
//	link_timeout = "5m"            # must exceed commit_timeout
//	sweep_interval = "1s"
//	redial_interval = "1s"
//
//	[raft]                         # RaftTuning's fields
//	heartbeat_timeout = "500ms"
//	election_timeout = "500ms"
//	leader_lease_timeout = "250ms"
//	commit_timeout = "20ms"
//	snapshot_interval = "2m"
//	snapshot_threshold = 8192
//	trailing_logs = 10240
//	max_dedup_keys = 65536
//	forward_timeout = "10s"
//
//	[[peers]]
//	id = "s1"
//	stream_addr = "127.0.0.1:7001"
//	raft_addr = "127.0.0.1:7101"
//	commit_addr = "127.0.0.1:7201"
//	# data_dir = "/disk2/s1"       # this peer's own directory instead
//
//	[[peers]]
//	id = "s2"
//	...
//
// Every peer needs all three addresses; port 0 is refused here, since the
// other peers could not find it. The Logger and TransportOptions are left
// for the caller to set.
func LoadConfig(path, id string) (Config, error) {
	var f groupFile
	md, err := toml.DecodeFile(path, &f)
	if err != nil {
		return Config{}, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if extra := md.Undecoded(); len(extra) > 0 {
		keys := make([]string, len(extra))
		for i, k := range extra {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("%w: %s: unknown keys %s", ErrConfig, path, strings.Join(keys, ", "))
	}
	cfg := Config{
		ID:             id,
		ReplyTimeout:   f.Stream.ReplyTimeout,
		CommitTimeout:  f.Stream.CommitTimeout,
		LinkTimeout:    f.Stream.LinkTimeout,
		SweepInterval:  f.Stream.SweepInterval,
		RedialInterval: f.Stream.RedialInterval,
		Raft: RaftTuning{
			HeartbeatTimeout:   f.Raft.HeartbeatTimeout,
			ElectionTimeout:    f.Raft.ElectionTimeout,
			LeaderLeaseTimeout: f.Raft.LeaderLeaseTimeout,
			CommitTimeout:      f.Raft.CommitTimeout,
			SnapshotInterval:   f.Raft.SnapshotInterval,
			SnapshotThreshold:  f.Raft.SnapshotThreshold,
			TrailingLogs:       f.Raft.TrailingLogs,
			MaxDedupKeys:       f.Raft.MaxDedupKeys,
			ForwardTimeout:     f.Raft.ForwardTimeout,
		},
	}
	if cfg.Transport, err = parseTransport(f.Transport); err != nil {
		return Config{}, fmt.Errorf("%w: %s: %v", ErrConfig, path, err)
	}
	var self *peerEntry
	for i, p := range f.Peers {
		m := Member{ID: p.ID, StreamAddr: p.StreamAddr, RaftAddr: p.RaftAddr, CommitAddr: p.CommitAddr}
		if !m.complete() {
			return Config{}, fmt.Errorf("%w: %s: peer %d (%q) needs id, stream_addr, raft_addr and commit_addr", ErrConfig, path, i+1, p.ID)
		}
		if a := zeroPort(m); a != "" {
			return Config{}, fmt.Errorf("%w: %s: peer %q has port 0 in %s", ErrConfig, path, p.ID, a)
		}
		cfg.Peers = append(cfg.Peers, m)
		if p.ID == id {
			self = &f.Peers[i]
		}
	}
	if _, err := findSelf(cfg.Peers, id); err != nil {
		return Config{}, fmt.Errorf("%w (%s)", err, path)
	}
	switch {
	case self.DataDir != "":
		cfg.DataDir = self.DataDir
	case f.DataDir != "":
		cfg.DataDir = filepath.Join(f.DataDir, id)
	}
	if cfg.DataDir != "" && !filepath.IsAbs(cfg.DataDir) {
		cfg.DataDir = filepath.Join(filepath.Dir(path), cfg.DataDir)
	}
	return cfg, nil
}

// groupFile is the layout of a group file; see LoadConfig.
type groupFile struct {
	DataDir   string `toml:"data_dir"`
	Transport string `toml:"transport"`
	Stream    struct {
		ReplyTimeout   time.Duration `toml:"reply_timeout"`
		CommitTimeout  time.Duration `toml:"commit_timeout"`
		LinkTimeout    time.Duration `toml:"link_timeout"`
		SweepInterval  time.Duration `toml:"sweep_interval"`
		RedialInterval time.Duration `toml:"redial_interval"`
	} `toml:"stream"`
	Raft struct {
		HeartbeatTimeout   time.Duration `toml:"heartbeat_timeout"`
		ElectionTimeout    time.Duration `toml:"election_timeout"`
		LeaderLeaseTimeout time.Duration `toml:"leader_lease_timeout"`
		CommitTimeout      time.Duration `toml:"commit_timeout"`
		SnapshotInterval   time.Duration `toml:"snapshot_interval"`
		SnapshotThreshold  uint64        `toml:"snapshot_threshold"`
		TrailingLogs       uint64        `toml:"trailing_logs"`
		MaxDedupKeys       int           `toml:"max_dedup_keys"`
		ForwardTimeout     time.Duration `toml:"forward_timeout"`
	} `toml:"raft"`
	Peers []peerEntry `toml:"peers"`
}

type peerEntry struct {
	ID         string `toml:"id"`
	StreamAddr string `toml:"stream_addr"`
	RaftAddr   string `toml:"raft_addr"`
	CommitAddr string `toml:"commit_addr"`
	DataDir    string `toml:"data_dir"`
}

// Transports by their names in a group file.
var transports = map[string]transport.Kind{"": transport.Gnet, "gnet": transport.Gnet, "netconn": transport.NetConn}

func parseTransport(name string) (transport.Kind, error) {
	k, ok := transports[strings.ToLower(name)]
	if !ok {
		return 0, fmt.Errorf("transport %q is neither gnet nor netconn", name)
	}
	return k, nil
}

// zeroPort returns the first of m's addresses whose port is 0, or "".
func zeroPort(m Member) string {
	for _, a := range []string{m.StreamAddr, m.RaftAddr, m.CommitAddr} {
		if strings.HasSuffix(a, ":0") {
			return a
		}
	}
	return ""
}
