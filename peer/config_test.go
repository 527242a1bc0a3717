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
		DataDir:        filepath.Join("testdata", "data", "s2"),
		Transport:      transport.Gnet,
		ReplyTimeout:   10 * time.Second,
		CommitTimeout:  30 * time.Second,
		LinkTimeout:    5 * time.Minute,
		SweepInterval:  time.Second,
		RedialInterval: time.Second,
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
		{name: "bad transport", file: `transport = "carrier pigeon"` + peers, id: "a", wantErr: "neither gnet nor netconn"},
		{name: "bad duration", file: "[stream]\nreply_timeout = \"soon\"\n" + peers, id: "a", wantErr: "soon"},
		{name: "missing address", file: "[[peers]]\nid = \"a\"\nstream_addr = \"127.0.0.1:1\"\n", id: "a", wantErr: "needs id, stream_addr, raft_addr and commit_addr"},
		{name: "port 0", file: strings.Replace(peers, ":2", ":0", 1), id: "a", wantErr: "port 0"},
		{name: "duplicate id", file: peers + peers, id: "a", wantErr: "duplicate member id"},
		{name: "not toml", file: "[[peers", id: "a", wantErr: "toml"},
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
