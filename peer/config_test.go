package peer_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/transport"
)

func TestLoadConfig(t *testing.T) {
	cfg, err := peer.LoadConfig("testdata/group.toml", "s2")
	if err != nil {
		t.Fatal(err)
	}
	want := peer.Config{
		ID: "s2",
		Peers: []peer.Member{
			{ID: "s1", StreamAddr: "127.0.0.1:7001", RaftAddr: "127.0.0.1:7101", CommitAddr: "127.0.0.1:7201"},
			{ID: "s2", StreamAddr: "127.0.0.1:7002", RaftAddr: "127.0.0.1:7102", CommitAddr: "127.0.0.1:7202"},
			{ID: "s3", StreamAddr: "127.0.0.1:7003", RaftAddr: "127.0.0.1:7103", CommitAddr: "127.0.0.1:7203"},
		},
		DataDir:   filepath.Join("testdata", "data", "s2"),
		Transport: transport.Gnet,
		Timeouts: handler.Timeouts{
			ReplyTimeout:   10 * time.Second,
			CommitTimeout:  30 * time.Second,
			LinkTimeout:    5 * time.Minute,
			SweepInterval:  time.Second,
			RedialInterval: time.Second,
		},
		Raft: peer.RaftTuning{
			HeartbeatTimeout:   500 * time.Millisecond,
			ElectionTimeout:    500 * time.Millisecond,
			LeaderLeaseTimeout: 250 * time.Millisecond,
			CommitTimeout:      20 * time.Millisecond,
			SnapshotInterval:   2 * time.Minute,
			SnapshotThreshold:  8192,
			TrailingLogs:       10240,
		},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("LoadConfig:\n got %+v\nwant %+v", cfg, want)
	}
}

func TestLoadConfigFile(t *testing.T) {
	const peers = `
[[peers]]
id = "a"
stream_addr = "127.0.0.1:1"
raft_addr = "127.0.0.1:2"
commit_addr = "127.0.0.1:3"
`
	for _, tc := range []struct {
		name, file string
		id         string
		check      func(t *testing.T, dir string, c peer.Config)
		wantErr    string
	}{
		{name: "minimal, in memory", file: peers, id: "a", check: func(t *testing.T, _ string, c peer.Config) {
			if c.DataDir != "" || c.Transport != transport.Gnet || len(c.Peers) != 1 || c.CommitTimeout != 0 {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "netconn", file: `transport = "netconn"` + peers, id: "a", check: func(t *testing.T, _ string, c peer.Config) {
			if c.Transport != transport.NetConn {
				t.Errorf("transport %v", c.Transport)
			}
		}},
		{name: "relative data_dir", file: `data_dir = "d"` + peers, id: "a", check: func(t *testing.T, dir string, c peer.Config) {
			if want := filepath.Join(dir, "d", "a"); c.DataDir != want {
				t.Errorf("DataDir %q, want %q", c.DataDir, want)
			}
		}},
		{name: "peer's own data_dir", file: `data_dir = "/x"` + peers + `data_dir = "/y/z"`, id: "a", check: func(t *testing.T, _ string, c peer.Config) {
			if c.DataDir != "/y/z" {
				t.Errorf("DataDir %q", c.DataDir)
			}
		}},
		{name: "unknown id", file: peers, id: "b", wantErr: `"b" is not among the members`},
		{name: "unknown key", file: "colour = 1\n" + peers, id: "a", wantErr: "unknown keys colour"},
		{name: "unknown key in a section", file: "[raft]\nspeed = 1\n" + peers, id: "a", wantErr: "unknown keys raft.speed"},
		{name: "bad transport", file: `transport = "carrier pigeon"` + peers, id: "a", wantErr: "want gnet or netconn"},
		{name: "bad duration", file: "[stream]\nreply_timeout = \"soon\"\n" + peers, id: "a", wantErr: "soon"},
		{name: "missing address", file: "[[peers]]\nid = \"a\"\nstream_addr = \"127.0.0.1:1\"\n", id: "a", wantErr: "needs id, stream_addr, raft_addr and commit_addr"},
		{name: "port 0", file: strings.Replace(peers, ":2", ":0", 1), id: "a", wantErr: "port 0"},
		{name: "duplicate id", file: peers + peers, id: "a", wantErr: "duplicate member id"},
		{name: "not toml", file: "[[peers", id: "a", wantErr: "toml"},

		// Addresses the other peers could not dial, or that two listeners
		// would share.
		{name: "wildcard IPv4", file: strings.Replace(peers, "127.0.0.1:1", "0.0.0.0:1", 1), id: "a",
			wantErr: `peer "a"'s stream_addr "0.0.0.0:1" is a wildcard address`},
		{name: "wildcard IPv6", file: strings.Replace(peers, "127.0.0.1:2", "[::]:2", 1), id: "a",
			wantErr: `peer "a"'s raft_addr "[::]:2" is a wildcard address`},
		{name: "empty host", file: strings.Replace(peers, "127.0.0.1:3", ":3", 1), id: "a",
			wantErr: `peer "a"'s commit_addr ":3" has no host`},
		{name: "no port", file: strings.Replace(peers, "127.0.0.1:3", "127.0.0.1", 1), id: "a",
			wantErr: `peer "a"'s commit_addr "127.0.0.1" is not host:port`},
		{name: "port not a number", file: strings.Replace(peers, "127.0.0.1:3", "127.0.0.1:http", 1), id: "a",
			wantErr: `peer "a"'s commit_addr "127.0.0.1:http" has a port that is not a number from 1 to 65535`},
		{name: "same address twice in a peer", file: strings.Replace(peers, "127.0.0.1:3", "127.0.0.1:1", 1), id: "a",
			wantErr: `127.0.0.1:1 is both peer "a"'s stream_addr and peer "a"'s commit_addr`},
		{name: "same stream address in two peers", file: peers + strings.NewReplacer(`"a"`, `"b"`, ":2", ":5", ":3", ":6").Replace(peers), id: "a",
			wantErr: `127.0.0.1:1 is both peer "a"'s stream_addr and peer "b"'s stream_addr`},
		{name: "one peer's raft port is another's commit port", file: peers + strings.NewReplacer(`"a"`, `"b"`, ":1", ":4", ":2", ":5").Replace(peers), id: "a",
			wantErr: `127.0.0.1:3 is both peer "a"'s commit_addr and peer "b"'s commit_addr`},
		{name: "same IPv6 address spelled twice", file: strings.NewReplacer("127.0.0.1:1", "[::1]:1", "127.0.0.1:2", "[0:0::1]:1").Replace(peers), id: "a",
			wantErr: `[::1]:1 is both peer "a"'s stream_addr and peer "a"'s raft_addr`},
		{name: "other hosts may share a port", file: peers + strings.ReplaceAll(strings.Replace(peers, `"a"`, `"b"`, 1), "127.0.0.1", "127.0.0.2"), id: "b",
			check: func(t *testing.T, _ string, c peer.Config) {
				if len(c.Peers) != 2 || c.Peers[1].StreamAddr != "127.0.0.2:1" {
					t.Errorf("got %+v", c.Peers)
				}
			}},

		// Durations need a unit: TOML would read a bare 30 as 30ns.
		{name: "bare integer duration", file: "[stream]\nreply_timeout = 30\n" + peers, id: "a",
			wantErr: `(last key "stream.reply_timeout"): 30 has no unit: write "30s"`},
		{name: "bare number in a string", file: "[raft]\nheartbeat_timeout = \"500\"\n" + peers, id: "a",
			wantErr: `(last key "raft.heartbeat_timeout"): "500" has no unit: write "500s"`},
		{name: "float duration", file: "[stream]\nlink_timeout = 1.5\n" + peers, id: "a",
			wantErr: `(last key "stream.link_timeout"): 1.5 is not a duration`},
		{name: "negative duration", file: "[stream]\ncommit_timeout = \"-5s\"\n" + peers, id: "a",
			wantErr: `(last key "stream.commit_timeout"): "-5s" is negative`},
		{name: "negative bare duration", file: "[raft]\nforward_timeout = -5\n" + peers, id: "a",
			wantErr: `(last key "raft.forward_timeout"): -5 is negative`},
		{name: "zero durations mean the defaults", file: "[stream]\nreply_timeout = 0\nsweep_interval = \"0s\"\n" + peers, id: "a",
			check: func(t *testing.T, _ string, c peer.Config) {
				if c.ReplyTimeout != 0 || c.SweepInterval != 0 {
					t.Errorf("got %v, %v", c.ReplyTimeout, c.SweepInterval)
				}
			}},

		// Counts must not wrap.
		{name: "negative snapshot_threshold", file: "[raft]\nsnapshot_threshold = -1\n" + peers, id: "a",
			wantErr: `(last key "raft.snapshot_threshold"): -1 is negative`},
		{name: "negative trailing_logs", file: "[raft]\ntrailing_logs = -1\n" + peers, id: "a",
			wantErr: `(last key "raft.trailing_logs"): -1 is negative`},
		{name: "negative max_dedup_keys", file: "[raft]\nmax_dedup_keys = -1\n" + peers, id: "a",
			wantErr: `(last key "raft.max_dedup_keys"): -1 is negative`},
		{name: "count as a string", file: "[raft]\ntrailing_logs = \"10\"\n" + peers, id: "a",
			wantErr: `(last key "raft.trailing_logs"): "10" is not a whole number`},
		{name: "counts", file: "[raft]\nsnapshot_threshold = 0\ntrailing_logs = 7\nmax_dedup_keys = 9\n" + peers, id: "a",
			check: func(t *testing.T, _ string, c peer.Config) {
				if c.Raft.SnapshotThreshold != 0 || c.Raft.TrailingLogs != 7 || c.Raft.MaxDedupKeys != 9 {
					t.Errorf("got %+v", c.Raft)
				}
			}},
		{name: "parse errors name the file", file: "[stream]\nreply_timeout = 30\n" + peers, id: "a", wantErr: "group.toml: toml: line 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "group.toml")
			if err := os.WriteFile(path, []byte(tc.file), 0o644); err != nil {
				t.Fatal(err)
			}
			c, err := peer.LoadConfig(path, tc.id)
			if tc.wantErr != "" {
				if err == nil || !errors.Is(err, peer.ErrConfig) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("LoadConfig: %v, want ErrConfig mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, dir, c)
		})
	}
}

func TestNewRejects(t *testing.T) {
	ids := []string{"a", "b"}
	for _, tc := range []struct {
		name string
		edit func(*peer.Config)
	}{
		{"no id", func(c *peer.Config) { c.ID = "" }},
		{"not a member", func(c *peer.Config) { c.ID = "c" }},
		{"duplicate member", func(c *peer.Config) { c.Peers = append(c.Peers, peer.Member{ID: "b"}) }},
		{"member without id", func(c *peer.Config) { c.Peers = append(c.Peers, peer.Member{}) }},
		{"link timeout not above commit timeout", func(c *peer.Config) { c.LinkTimeout = c.CommitTimeout }},
		{"default link timeout below commit timeout", func(c *peer.Config) { c.CommitTimeout, c.LinkTimeout = time.Hour, 0 }},
		{"negative reply timeout", func(c *peer.Config) { c.ReplyTimeout = -time.Second }},
		{"negative commit timeout", func(c *peer.Config) { c.CommitTimeout = -time.Second }},
		{"negative sweep interval", func(c *peer.Config) { c.SweepInterval = -time.Second }},
		{"negative raft timeout", func(c *peer.Config) { c.Raft.HeartbeatTimeout = -time.Second }},
		{"negative max dedup keys", func(c *peer.Config) { c.Raft.MaxDedupKeys = -1 }},
		{"negative max streams", func(c *peer.Config) { c.Limits.MaxStreams = -1 }},
		{"negative max conn bytes", func(c *peer.Config) { c.Limits.MaxConnBytes = -1 }},
		{"negative idle timeout", func(c *peer.Config) { c.IdleTimeout = -time.Second }},
		{"wildcard stream address", func(c *peer.Config) { c.StreamAddr = "0.0.0.0:0" }},
		{"wildcard commit address", func(c *peer.Config) { c.CommitAddr = "[::]:0" }},
		{"member on a wildcard address", func(c *peer.Config) {
			c.Peers[1] = peer.Member{ID: "b", StreamAddr: "0.0.0.0:1", RaftAddr: "127.0.0.1:2", CommitAddr: "127.0.0.1:3"}
		}},
		{"members sharing an address", func(c *peer.Config) {
			c.Peers[0] = peer.Member{ID: "a", StreamAddr: "127.0.0.1:1", RaftAddr: "127.0.0.1:2", CommitAddr: "127.0.0.1:3"}
			c.Peers[1] = peer.Member{ID: "b", StreamAddr: "127.0.0.1:4", RaftAddr: "127.0.0.1:1", CommitAddr: "127.0.0.1:6"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig("a", ids)
			tc.edit(&cfg)
			p, err := peer.New(context.Background(), cfg)
			if !errors.Is(err, peer.ErrConfig) {
				if p != nil {
					p.Shutdown(context.Background())
				}
				t.Fatalf("New: %v, want ErrConfig", err)
			}
		})
	}
}

func TestStartRejects(t *testing.T) {
	ctx := context.Background()
	ids := []string{"a", "b"}
	p, err := peer.New(ctx, testConfig("a", ids))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(ctx)
	self := p.Addrs()
	other := peer.Member{ID: "b", StreamAddr: "127.0.0.1:1", RaftAddr: "127.0.0.1:2", CommitAddr: "127.0.0.1:3"}
	for _, tc := range []struct {
		name    string
		members []peer.Member
	}{
		{"too few", []peer.Member{self}},
		{"unknown member", []peer.Member{self, {ID: "c", StreamAddr: "x:1", RaftAddr: "x:2", CommitAddr: "x:3"}}},
		{"missing address", []peer.Member{self, {ID: "b", StreamAddr: "x:1"}}},
		{"self moved", []peer.Member{{ID: "a", StreamAddr: self.StreamAddr, RaftAddr: self.RaftAddr, CommitAddr: "127.0.0.1:9"}, other}},
		{"self missing", []peer.Member{other, {ID: "c", StreamAddr: "x:1", RaftAddr: "x:2", CommitAddr: "x:3"}}},
		{"other on self's address", []peer.Member{self, {ID: "b", StreamAddr: "127.0.0.1:1", RaftAddr: self.StreamAddr, CommitAddr: "127.0.0.1:3"}}},
		{"other on a wildcard address", []peer.Member{self, {ID: "b", StreamAddr: "127.0.0.1:1", RaftAddr: "0.0.0.0:2", CommitAddr: "127.0.0.1:3"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := p.Start(ctx, tc.members); !errors.Is(err, peer.ErrConfig) {
				t.Errorf("Start: %v, want ErrConfig", err)
			}
		})
	}
	if err := p.Start(ctx, []peer.Member{self, other}); err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx, []peer.Member{self, other}); !errors.Is(err, peer.ErrStarted) {
		t.Errorf("second Start: %v, want ErrStarted", err)
	}
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if err := p.Start(ctx, []peer.Member{self, other}); !errors.Is(err, peer.ErrClosed) {
		t.Errorf("Start after Shutdown: %v, want ErrClosed", err)
	}
}
