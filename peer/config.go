package peer

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

// ErrConfig reports an invalid Config or member list.
var ErrConfig = errors.New("peer: invalid configuration")

// Member is one peer of a group as the others reach it.
type Member struct {
	// ID names the peer; it must be unique in the group and never reused.
	ID string
	// StreamAddr is where the peer accepts DataStream connections, from
	// clients and from the peers that forward to it.
	StreamAddr string
	// RaftAddr is the peer's Raft transport.
	RaftAddr string
	// CommitAddr is where the peer accepts commits forwarded by the
	// others while it is the leader.
	CommitAddr string
}

func (m Member) complete() bool {
	return m.ID != "" && m.StreamAddr != "" && m.RaftAddr != "" && m.CommitAddr != ""
}

// Config configures one Peer. ID and Peers are required; the zero values
// of the other fields mean the defaults named on each.
type Config struct {
	// ID is this peer's id; Peers must list it.
	ID string
	// Peers lists every member of the group, this one included. New needs
	// the ids only; Start (the function) needs every address.
	Peers []Member

	// StreamAddr, RaftAddr and CommitAddr are the addresses to bind. Empty
	// takes this peer's entry in Peers, or "127.0.0.1:0" if that is empty
	// too. They must not be wildcard addresses: the bound address is what
	// the other peers dial.
	StreamAddr, RaftAddr, CommitAddr string

	// DataDir holds the peer's durable state: the Raft log and snapshots
	// in DataDir/raft and the files in DataDir/files. Empty keeps the Raft
	// log in memory and stores streams in a statemachine.Memory, for tests
	// and benchmarks.
	DataDir string
	// StateMachine, if set, stores the streams instead of the one DataDir
	// implies (the Raft log still follows DataDir). The caller owns it and
	// closes it, if it needs closing, after Shutdown.
	StateMachine statemachine.StateMachine

	// Transport picks the DataStream transport, gnet by default;
	// TransportOptions go to the listener and the connections to peers.
	Transport        transport.Kind
	TransportOptions []transport.Option

	// Logger receives the log of the server, the Raft node and hashicorp/
	// raft. Nil means slog.Default().
	Logger *slog.Logger

	// ReplyTimeout bounds how long a packet waits for its successors'
	// replies. Default handler.DefaultReplyTimeout (10s).
	ReplyTimeout time.Duration
	// CommitTimeout bounds a closed stream's commit, forwarding to the
	// leader and waiting out an election included. Default
	// handler.DefaultCommitTimeout (30s).
	CommitTimeout time.Duration
	// LinkTimeout is how long a stream closed on every peer waits for its
	// entry before its data is discarded. It must exceed CommitTimeout.
	// Default handler.DefaultLinkTimeout (5m).
	LinkTimeout time.Duration
	// SweepInterval is the tick on which the timeouts above are checked.
	// Default: see server.Config.
	SweepInterval time.Duration
	// RedialInterval is the longest wait between attempts to reconnect to
	// a peer. Default one second.
	RedialInterval time.Duration

	// Limits bound what clients may hold on this peer; see
	// server.Config. Zero fields take the server's defaults.
	Limits Limits

	// TLS and PeerTLS secure the stream traffic and the Raft and commit
	// traffic alike: TLS is the listening side (certificate, and for
	// mutual TLS ClientAuth and ClientCAs), PeerTLS the dialing side (root
	// CAs and this peer's certificate). They need the netconn transport.
	// AuthorizePeer, if set, tells a peer's certificate from a client's:
	// only a peer may open a peer connection on the stream port (see
	// server.Config), and only a peer may speak Raft or forward a commit.
	// See docs/security.md.
	TLS, PeerTLS  *tls.Config
	AuthorizePeer func(*x509.Certificate) bool

	// Raft tunes the Raft node; see raft.Config for the meaning and
	// defaults of each field.
	Raft RaftTuning
}

// Limits are the server.Config limits a Peer passes through.
type Limits struct {
	MaxFrame          int
	MaxHeader         int
	MaxStreams        int
	MaxStreamsPerConn int
	MaxConnBytes      int64
	IdleTimeout       time.Duration
}

// RaftTuning holds the raft.Config fields a Peer passes through.
type RaftTuning struct {
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// CommitTimeout is raft's, not the stream's: how late a follower may
	// learn that an entry committed.
	CommitTimeout     time.Duration
	SnapshotInterval  time.Duration
	SnapshotThreshold uint64
	TrailingLogs      uint64
	MaxDedupKeys      int
	ForwardTimeout    time.Duration
}

// Defaults used by Config.
const (
	defaultAddr           = "127.0.0.1:0"
	defaultRedialInterval = time.Second
)

// Defaults the handler applies too; repeated here so that withDefaults
// can compare LinkTimeout with CommitTimeout.
const (
	defaultCommitTimeout = 30 * time.Second
	defaultLinkTimeout   = 5 * time.Minute
)

// withDefaults checks c and fills in its zero values.
func (c Config) withDefaults() (Config, error) {
	if c.ID == "" {
		return c, fmt.Errorf("%w: empty ID", ErrConfig)
	}
	self, err := findSelf(c.Peers, c.ID)
	if err != nil {
		return c, err
	}
	for _, a := range []struct {
		field *string
		entry string
	}{{&c.StreamAddr, self.StreamAddr}, {&c.RaftAddr, self.RaftAddr}, {&c.CommitAddr, self.CommitAddr}} {
		if *a.field == "" {
			*a.field = a.entry
		}
		if *a.field == "" {
			*a.field = defaultAddr
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.CommitTimeout <= 0 {
		c.CommitTimeout = defaultCommitTimeout
	}
	if c.LinkTimeout <= 0 {
		c.LinkTimeout = defaultLinkTimeout
	}
	if c.LinkTimeout <= c.CommitTimeout {
		return c, fmt.Errorf("%w: LinkTimeout %v must exceed CommitTimeout %v, or a stream may be discarded while its commit is under way",
			ErrConfig, c.LinkTimeout, c.CommitTimeout)
	}
	if c.RedialInterval <= 0 {
		c.RedialInterval = defaultRedialInterval
	}
	return c, nil
}

// findSelf checks that members have unique, non-empty ids and returns the
// entry of id.
func findSelf(members []Member, id string) (Member, error) {
	var self Member
	found := false
	seen := make(map[string]bool, len(members))
	for _, m := range members {
		if m.ID == "" {
			return self, fmt.Errorf("%w: a member has no id", ErrConfig)
		}
		if seen[m.ID] {
			return self, fmt.Errorf("%w: duplicate member id %q", ErrConfig, m.ID)
		}
		seen[m.ID] = true
		if m.ID == id {
			self, found = m, true
		}
	}
	if !found {
		return self, fmt.Errorf("%w: %q is not among the members", ErrConfig, id)
	}
	return self, nil
}
