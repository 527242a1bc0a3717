package raft

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"time"

	"github.com/pipestream/pipestream/group"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// Config configures one Node. The zero values of the optional fields mean
// the defaults named on each.
type Config struct {
	// ID is this peer's id; it must appear in the peers passed to Start.
	ID string
	// RaftAddr is the TCP address the Raft transport binds to. Port 0 picks
	// a free port; Node.Addr reports it. It must not be a wildcard address:
	// the bound address is what other peers dial.
	RaftAddr string
	// CommitAddr is the TCP address for forwarded commits, like RaftAddr.
	CommitAddr string

	// Join makes Start leave the group's bootstrapping to others: a Node
	// with empty stores waits until the leader of a running group adds it
	// (AddMember). Without it, a Node with empty stores bootstraps the
	// group from the peers Start is given. A Node with state ignores it.
	Join bool
	// OnMembers, if set, is called with the whole group whenever the
	// membership this Node knows changes: when its FSM applies a
	// membership entry, and when raft restores a snapshot that holds one.
	// It runs on raft's FSM goroutine, in log order, and must not block.
	OnMembers func(members []group.Member)

	// TLS, if set, makes both listeners, Raft's and the commit address,
	// speak TLS: Certificates, and for mutual TLS ClientAuth
	// tls.RequireAndVerifyClientCert with ClientCAs. PeerTLS is the dialing
	// side, for Raft RPCs and forwarded commits to the other peers:
	// RootCAs, and for mutual TLS this peer's certificate in Certificates;
	// ServerName defaults to the host of the address dialed. Set both or
	// neither: every peer dials the others' listeners.
	TLS     *tls.Config
	PeerTLS *tls.Config

	// Dir holds the Raft log and stable store (raft.db, raft-boltdb) and the
	// snapshots. Empty means everything is kept in memory, for tests.
	Dir string

	// Linker links committed streams to the data this peer holds. Nil
	// records the entries without linking anything.
	Linker statemachine.Linker
	// DataSink receives the entries written by ApplyData. Nil counts and
	// discards them.
	DataSink DataSink

	// Logger receives hashicorp/raft's log and the node's own. Nil discards
	// both; the handler's level decides how much raft says.
	Logger *slog.Logger

	// Tuning holds the timeouts and sizes, each with its default; peer
	// passes its own RaftTuning, the same type, through unchanged.
	Tuning

	// Status, if set, supplies what this peer's answer to a peer status
	// request (QueryStatus) tells beyond Raft's own state: its streams,
	// copies and disk. The Node sets the Raft fields of what it returns,
	// which must be a new message each call. It runs on the connection's
	// goroutine and should be quick.
	Status func() *pb.PeerStatus
}

// Tuning is a Node's timeouts and sizes. The zero value of each field
// means the default named on it.
type Tuning struct {
	// HeartbeatTimeout is how long a follower waits without hearing from the
	// leader before it starts an election. Default 500ms.
	HeartbeatTimeout time.Duration
	// ElectionTimeout is how long a candidate waits for votes. Default 500ms;
	// at least HeartbeatTimeout.
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout is how long a leader stays leader without reaching
	// a quorum. Default 250ms; at most HeartbeatTimeout.
	LeaderLeaseTimeout time.Duration
	// CommitTimeout bounds how late a follower learns that an entry has
	// committed (and so applies it) when no other entry follows. Default 20ms.
	CommitTimeout time.Duration

	// SnapshotInterval, SnapshotThreshold and TrailingLogs are passed to
	// hashicorp/raft unchanged. Defaults 120s, 8192 and 10240, which are
	// hashicorp/raft's own.
	SnapshotInterval  time.Duration
	SnapshotThreshold uint64
	TrailingLogs      uint64

	// MaxDedupKeys bounds how many committed stream keys the FSM remembers
	// to recognise duplicates; the oldest are forgotten first. It must be the
	// same on every peer. Default 65536.
	MaxDedupKeys int

	// ForwardTimeout bounds how long a leader works on one forwarded commit
	// and how long a forwarding connection may take for one message.
	// Default 10s.
	ForwardTimeout time.Duration
}

// Defaults for Tuning's zero values.
const (
	DefaultHeartbeatTimeout   = 500 * time.Millisecond
	DefaultElectionTimeout    = 500 * time.Millisecond
	DefaultLeaderLeaseTimeout = 250 * time.Millisecond
	DefaultCommitTimeout      = 20 * time.Millisecond
	DefaultMaxDedupKeys       = 1 << 16
	DefaultForwardTimeout     = 10 * time.Second

	// hashicorp/raft's defaults, named here so that they are declared in
	// one place with the others (a test holds them to hashicorp's).
	DefaultSnapshotInterval  = 120 * time.Second
	DefaultSnapshotThreshold = 8192
	DefaultTrailingLogs      = 10240
)

// withDefaults returns c with its zero values replaced by the defaults, or
// an error if a required field is missing.
func (c Config) withDefaults() (Config, error) {
	if c.ID == "" {
		return c, fmt.Errorf("%w: empty ID", ErrConfig)
	}
	if c.RaftAddr == "" || c.CommitAddr == "" {
		return c, fmt.Errorf("%w: %s needs both RaftAddr and CommitAddr", ErrConfig, c.ID)
	}
	if (c.TLS == nil) != (c.PeerTLS == nil) {
		return c, fmt.Errorf("%w: %s: TLS and PeerTLS must be set together", ErrConfig, c.ID)
	}
	setDuration(&c.HeartbeatTimeout, DefaultHeartbeatTimeout)
	setDuration(&c.ElectionTimeout, max(DefaultElectionTimeout, c.HeartbeatTimeout))
	setDuration(&c.LeaderLeaseTimeout, min(DefaultLeaderLeaseTimeout, c.HeartbeatTimeout))
	setDuration(&c.CommitTimeout, DefaultCommitTimeout)
	setDuration(&c.ForwardTimeout, DefaultForwardTimeout)
	setDuration(&c.SnapshotInterval, DefaultSnapshotInterval)
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = DefaultTrailingLogs
	}
	if c.MaxDedupKeys <= 0 {
		c.MaxDedupKeys = DefaultMaxDedupKeys
	}
	return c, nil
}

func setDuration(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// checkPeers verifies that peers is a usable group containing self, whose
// entry must name the addresses self is bound to.
func checkPeers(peers []group.Member, self group.Member) error {
	if len(peers) == 0 {
		return fmt.Errorf("%w: no peers", ErrConfig)
	}
	seen := make(map[string]bool, len(peers))
	found := false
	for _, p := range peers {
		if p.ID == "" || p.RaftAddr == "" || p.CommitAddr == "" {
			return fmt.Errorf("%w: incomplete peer %+v", ErrConfig, p)
		}
		if seen[p.ID] {
			return fmt.Errorf("%w: duplicate peer id %q", ErrConfig, p.ID)
		}
		seen[p.ID] = true
		if p.ID == self.ID {
			if p.RaftAddr != self.RaftAddr || p.CommitAddr != self.CommitAddr {
				return fmt.Errorf("%w: peer %q is listed as %+v but bound to %+v", ErrConfig, p.ID, p, self)
			}
			found = true
		}
	}
	if !found {
		return fmt.Errorf("%w: %q is not among the peers", ErrConfig, self.ID)
	}
	return nil
}
