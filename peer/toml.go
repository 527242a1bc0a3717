package peer

import (
	"fmt"
	"io/fs"
	"net"
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
// Every peer needs all three addresses, each one the other peers can dial
// and none used twice in the group (same host and port, whichever the
// fields): port 0 and wildcard hosts such as 0.0.0.0, :: or an empty one
// are refused, since the other peers could not find them. A duration
// needs its unit ("30s"; a bare 30 is refused, as TOML would make it 30ns;
// 0 is the default), and negative numbers are refused. The Logger and
// TransportOptions are left for the caller to set.
func LoadConfig(path, id string) (Config, error) {
	var f groupFile
	md, err := toml.DecodeFile(path, &f)
	if _, ok := err.(*fs.PathError); ok {
		return Config{}, fmt.Errorf("%w: %v", ErrConfig, err) // names the file
	}
	if err != nil {
		return Config{}, fmt.Errorf("%w: %s: %v", ErrConfig, path, err)
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
		ReplyTimeout:   time.Duration(f.Stream.ReplyTimeout),
		CommitTimeout:  time.Duration(f.Stream.CommitTimeout),
		LinkTimeout:    time.Duration(f.Stream.LinkTimeout),
		SweepInterval:  time.Duration(f.Stream.SweepInterval),
		RedialInterval: time.Duration(f.Stream.RedialInterval),
		Raft: RaftTuning{
			HeartbeatTimeout:   time.Duration(f.Raft.HeartbeatTimeout),
			ElectionTimeout:    time.Duration(f.Raft.ElectionTimeout),
			LeaderLeaseTimeout: time.Duration(f.Raft.LeaderLeaseTimeout),
			CommitTimeout:      time.Duration(f.Raft.CommitTimeout),
			SnapshotInterval:   time.Duration(f.Raft.SnapshotInterval),
			SnapshotThreshold:  uint64(f.Raft.SnapshotThreshold),
			TrailingLogs:       uint64(f.Raft.TrailingLogs),
			MaxDedupKeys:       int(f.Raft.MaxDedupKeys),
			ForwardTimeout:     time.Duration(f.Raft.ForwardTimeout),
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
	if _, err := findSelfNamed(cfg.Peers, id, tomlFields); err != nil {
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
		ReplyTimeout   duration `toml:"reply_timeout"`
		CommitTimeout  duration `toml:"commit_timeout"`
		LinkTimeout    duration `toml:"link_timeout"`
		SweepInterval  duration `toml:"sweep_interval"`
		RedialInterval duration `toml:"redial_interval"`
	} `toml:"stream"`
	Raft struct {
		HeartbeatTimeout   duration `toml:"heartbeat_timeout"`
		ElectionTimeout    duration `toml:"election_timeout"`
		LeaderLeaseTimeout duration `toml:"leader_lease_timeout"`
		CommitTimeout      duration `toml:"commit_timeout"`
		SnapshotInterval   duration `toml:"snapshot_interval"`
		SnapshotThreshold  count    `toml:"snapshot_threshold"`
		TrailingLogs       count    `toml:"trailing_logs"`
		MaxDedupKeys       count    `toml:"max_dedup_keys"`
		ForwardTimeout     duration `toml:"forward_timeout"`
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

// tomlFields names a Member's addresses as a group file does.
var tomlFields = memberFields{"stream_addr", "raft_addr", "commit_addr"}

// duration is a group file's duration: a string that time.ParseDuration
// reads, such as "500ms" or "5m". TOML would read a bare 30 as 30
// nanoseconds, which nobody means, so a bare number is refused, except 0
// (the default, whatever the unit). Negative durations are refused.
type duration time.Duration

func (d *duration) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case int64:
		switch {
		case v < 0:
			return fmt.Errorf("%d is negative", v)
		case v != 0:
			return fmt.Errorf("%d has no unit: write \"%ds\", \"%dms\" or another duration in quotes", v, v, v)
		}
		*d = 0
		return nil
	case string:
		t, err := time.ParseDuration(v)
		switch {
		case err != nil && strings.Trim(v, "0123456789.") == "" && v != "":
			return fmt.Errorf("%q has no unit: write \"%ss\", \"%sms\" or another duration", v, v, v)
		case err != nil:
			return fmt.Errorf("%q is not a duration such as \"500ms\", \"30s\" or \"5m\"", v)
		case t < 0:
			return fmt.Errorf("%q is negative", v)
		}
		*d = duration(t)
		return nil
	}
	return fmt.Errorf("%v is not a duration: write one in quotes, such as \"500ms\", \"30s\" or \"5m\"", v)
}

// count is a group file's whole number that must not be negative, which
// an unsigned or a size would otherwise take as a huge one.
type count int64

func (c *count) UnmarshalTOML(v any) error {
	switch n, ok := v.(int64); {
	case !ok:
		return fmt.Errorf("%#v is not a whole number", v)
	case n < 0:
		return fmt.Errorf("%d is negative", n)
	default:
		*c = count(n)
		return nil
	}
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
		if _, port, err := net.SplitHostPort(a); err == nil && strings.Trim(port, "0") == "" && port != "" {
			return a
		}
	}
	return ""
}
