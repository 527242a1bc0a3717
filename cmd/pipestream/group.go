package main

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/raft"
)

// loadGroup returns a group file as peer.LoadConfig reads it for its first
// member: the members and the group-wide settings, and with [tls] that
// member's certificate, which the commit port of a peer requires.
func loadGroup(path string) (peer.Config, error) {
	// LoadConfig wants the id of a member; take the first one's. Every
	// other key is LoadConfig's to check.
	var ids struct {
		Peers []struct {
			ID string `toml:"id"`
		} `toml:"peers"`
	}
	if _, err := toml.DecodeFile(path, &ids); err != nil {
		return peer.Config{}, fmt.Errorf("%w: %v", peer.ErrConfig, err)
	}
	if len(ids.Peers) == 0 {
		return peer.Config{}, fmt.Errorf("%w: %s lists no [[peers]]", peer.ErrConfig, path)
	}
	return peer.LoadConfig(path, ids.Peers[0].ID)
}

// loadClientGroup returns a group file as a client of the stream port
// sees it: peer.LoadClientConfig checks every key, and reads [tls]'s CA
// and client certificate, no peer's key.
func loadClientGroup(path string) (peer.ClientConfig, error) {
	return peer.LoadClientConfig(path)
}

// clientOptions returns the options of a datastream client of group g:
// its transport, or the --transport flag's if set, and its TLS. A group
// with TLS needs netconn, so --transport gnet is refused rather than
// dropping TLS or the flag in silence.
func clientOptions(g peer.ClientConfig, kind *transportValue) ([]datastream.Option, error) {
	k := g.Transport
	if kind != nil && kind.set {
		k = kind.kind
	}
	if g.TLS != nil {
		if !k.Caps().TLS {
			return nil, usageError("--transport %s: the group file has [tls], which needs netconn", kind)
		}
		return []datastream.Option{datastream.WithTLS(g.TLS)}, nil
	}
	return []datastream.Option{datastream.WithTransport(k)}, nil
}

// tlsHint adds to an error of a client of a group with TLS what to check
// when the connection was lost: with TLS 1.3 a peer that refuses the
// client's certificate closes the connection only after the handshake,
// so the client sees no more than that (see docs/security.md).
func tlsHint(g *peer.ClientConfig, err error) error {
	if g == nil || g.TLS == nil || !errors.Is(err, datastream.ErrConnectionLost) {
		return err
	}
	if len(g.TLS.Certificates) == 0 {
		return fmt.Errorf("%w (the group requires a client certificate: give [tls.client] cert_file and key_file in the group file)", err)
	}
	return fmt.Errorf("%w (did the peers refuse the certificate of [tls.client]? it must be signed by [tls] ca_file; their log says why at debug level)", err)
}

// parsePeers parses put's --peers: "p1=127.0.0.1:7001,p2=127.0.0.1:7002",
// each peer's id and stream address.
func parsePeers(s string) ([]peer.Member, error) {
	var out []peer.Member
	for _, item := range strings.Split(s, ",") {
		id, addr, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("--peers: %q is not id=host:port", item)
		}
		out = append(out, peer.Member{ID: id, StreamAddr: addr})
	}
	return out, nil
}

// parseMember parses serve's --member: "p1=STREAM,RAFT,COMMIT", the three
// host:port addresses of peer p1.
func parseMember(s string) (peer.Member, error) {
	id, addrs, ok := strings.Cut(s, "=")
	a := strings.Split(addrs, ",")
	if !ok || id == "" || len(a) != 3 || a[0] == "" || a[1] == "" || a[2] == "" {
		return peer.Member{}, fmt.Errorf("--member: %q is not id=STREAM_ADDR,RAFT_ADDR,COMMIT_ADDR", s)
	}
	return peer.Member{ID: id, StreamAddr: a[0], RaftAddr: a[1], CommitAddr: a[2]}, nil
}

// sampleConfig returns a group file for n peers on host, stream ports from
// port, Raft ports from port+100 and commit ports from port+200, keeping
// data in dataDir/<id>.
func sampleConfig(n int, host string, port int, dataDir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# A pipestream group: every peer reads this file and picks its own entry
# by id (pipestream serve --config group.toml --id p1). See docs/operations.md.

# Peer <id> keeps its Raft log in data_dir/<id>/raft and its files in
# data_dir/<id>/files. Relative to this file; leave it out to keep
# everything in memory.
data_dir = %q
transport = "gnet" # or "netconn"

[stream]
reply_timeout = %q   # a packet's wait for its successors' replies
commit_timeout = %q  # a closed stream's commit, election included
link_timeout = %q     # a closed stream's wait for its entry; > commit_timeout
sweep_interval = %q   # the tick that checks the timeouts above
redial_interval = %q  # the longest wait between reconnects to a peer

[raft]
heartbeat_timeout = %q
election_timeout = %q
leader_lease_timeout = %q
commit_timeout = %q
snapshot_interval = %q
snapshot_threshold = %d
trailing_logs = %d
`, dataDir,
		shortDuration(handler.DefaultReplyTimeout), shortDuration(handler.DefaultCommitTimeout),
		shortDuration(handler.DefaultLinkTimeout), shortDuration(handler.DefaultSweepInterval),
		shortDuration(handler.DefaultRedialInterval),
		shortDuration(raft.DefaultHeartbeatTimeout), shortDuration(raft.DefaultElectionTimeout),
		shortDuration(raft.DefaultLeaderLeaseTimeout), shortDuration(raft.DefaultCommitTimeout),
		shortDuration(raft.DefaultSnapshotInterval), raft.DefaultSnapshotThreshold, raft.DefaultTrailingLogs)
	for i := range n {
		fmt.Fprintf(&b, `
[[peers]]
id = "p%d"
stream_addr = %q
raft_addr = %q
commit_addr = %q
`, i+1, hostPort(host, port+i), hostPort(host, port+100+i), hostPort(host, port+200+i))
	}
	return b.String()
}

// shortDuration writes d as a person would in a group file: "5m", not
// time.Duration's "5m0s".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }
