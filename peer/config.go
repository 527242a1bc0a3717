package peer

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"strconv"
	"strings"

	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/pipeline"
	"github.com/pipestream/pipestream/raft"
	"github.com/pipestream/pipestream/repair"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

// ErrConfig reports an invalid Config or member list.
var ErrConfig = errors.New("peer: invalid configuration")

// Member is one peer of a group as the others reach it; a peer needs
// every address of every member.
type Member = group.Member

// complete reports whether m names all that a peer needs of a member.
func complete(m Member) bool {
	return m.ID != "" && m.StreamAddr != "" && m.RaftAddr != "" && m.CommitAddr != ""
}

// Config configures one Peer. ID and Peers are required; the zero values
// of the other fields mean the defaults named on each, and negative
// values are refused.
type Config struct {
	// ID is this peer's id; Peers must list it.
	ID string
	// Peers lists every member of the group, this one included. New needs
	// the ids only; Start (the function) needs every address.
	Peers []Member

	// Join starts a new peer of a running group: with empty stores it
	// does not bootstrap a group of its own from Peers but waits until a
	// member adds it (Peer.AddMember, pipestream join). Peers must still
	// list it, and should list the members it can reach. A peer with state
	// ignores Join.
	Join bool

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

	// Policy, Limits and Timeouts are the stream server's settings,
	// declared (with their defaults) in package handler and passed to
	// server.Config whole: every peer of a group should have the same
	// Policy, and LinkTimeout must exceed CommitTimeout.
	handler.Policy
	handler.Limits
	handler.Timeouts

	// Pipeline, if set, is called for every client or predecessor
	// connection of the stream server once its stages are installed, to
	// add, wrap or replace stages; see server.Config.Pipeline.
	Pipeline func(*pipeline.Pipeline) error

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

	// Repair tunes how a peer with a FileStore fetches the copies it lacks
	// from the others, and Scrub how often it rereads the copies it holds;
	// see package repair for the defaults.
	Repair repair.Config
	Scrub  repair.ScrubConfig

	// Events, if set, observes the server's streams, packets and
	// connections and the repairs (unless Repair.Events is set); see
	// handler.Events, and package metrics for one that exports them.
	Events handler.Events
}

// RaftTuning is the Raft node's timeouts and sizes, passed to
// raft.Config unchanged; the defaults are raft's (see raft.Tuning).
type RaftTuning = raft.Tuning

// defaultAddr is the address bound for an empty one.
const defaultAddr = "127.0.0.1:0"

// withDefaults checks c and fills in its zero values.
func (c Config) withDefaults() (Config, error) {
	if c.ID == "" {
		return c, fmt.Errorf("%w: empty ID", ErrConfig)
	}
	self, err := findSelf(c.Peers, c.ID)
	if err != nil {
		return c, err
	}
	if err := c.checkNegative(); err != nil {
		return c, err
	}
	for _, a := range []struct {
		field *string
		name  string
		entry string
	}{{&c.StreamAddr, "StreamAddr", self.StreamAddr}, {&c.RaftAddr, "RaftAddr", self.RaftAddr}, {&c.CommitAddr, "CommitAddr", self.CommitAddr}} {
		if *a.field == "" {
			*a.field = a.entry
		}
		if *a.field == "" {
			*a.field = defaultAddr
		}
		if _, err := dialable(*a.field); err != nil {
			return c, fmt.Errorf("%w: %s %q %v", ErrConfig, a.name, *a.field, err)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if err := c.Limits.Check(); err != nil {
		return c, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	c.Limits = c.Limits.WithDefaults()
	c.Timeouts = c.Timeouts.WithDefaults()
	if c.LinkTimeout <= c.CommitTimeout {
		return c, fmt.Errorf("%w: LinkTimeout %v must exceed CommitTimeout %v, or a stream may be discarded while its commit is under way",
			ErrConfig, c.LinkTimeout, c.CommitTimeout)
	}
	return c, nil
}

// checkNegative refuses negative settings: zero means a default, and a
// negative one is a mistake (a -1 meant as "unlimited" is not). It walks
// the settings structs, so that a field added to one is checked too.
func (c Config) checkNegative() error {
	for _, set := range []struct {
		prefix string
		v      any
	}{{"", c.Limits}, {"", c.Timeouts}, {"Raft.", c.Raft}} {
		v := reflect.ValueOf(set.v)
		for i := range v.NumField() {
			if f := v.Field(i); f.CanInt() && f.Int() < 0 {
				return fmt.Errorf("%w: %s%s is negative (%v); zero means the default", ErrConfig, set.prefix, v.Type().Field(i).Name, f.Interface())
			}
		}
	}
	return nil
}

// memberFields names a Member's addresses in errors.
type memberFields [3]string

var goFields = memberFields{"StreamAddr", "RaftAddr", "CommitAddr"}

// checkAddrs checks the addresses members give (an empty one is checked
// where it matters): each must be one the other peers can dial, and no two
// may be the same, in one member or across members, since two listeners
// cannot share one. Port 0, which only New's binding takes, may repeat.
// Host names are compared as written, not resolved.
func checkAddrs(members []Member, names memberFields) error {
	type use struct{ id, field string }
	seen := make(map[string]use)
	for _, m := range members {
		for i, a := range []string{m.StreamAddr, m.RaftAddr, m.CommitAddr} {
			if a == "" {
				continue
			}
			key, err := dialable(a)
			if err != nil {
				return fmt.Errorf("peer %q's %s %q %v", m.ID, names[i], a, err)
			}
			if strings.HasSuffix(key, ":0") {
				continue
			}
			if first, dup := seen[key]; dup {
				return fmt.Errorf("%s is both peer %q's %s and peer %q's %s; every address needs a listener of its own",
					key, first.id, first.field, m.ID, names[i])
			}
			seen[key] = use{m.ID, names[i]}
		}
	}
	return nil
}

// dialable checks that addr is a host:port another peer can dial: a host
// that is not a wildcard address, and a numeric port (0 allowed, for
// binding). It returns addr in a canonical form, for comparing.
func dialable(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", errors.New("is not host:port")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", errors.New("has a port that is not a number from 1 to 65535")
	}
	const useOwn = "; give this machine's address (127.0.0.1 for a group on one machine)"
	if host == "" {
		return "", errors.New("has no host, so the other peers could not dial it" + useOwn)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return net.JoinHostPort(strings.ToLower(host), port), nil
	}
	if ip.IsUnspecified() {
		return "", errors.New("is a wildcard address, which the other peers cannot dial" + useOwn)
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(n)).String(), nil
}

// findSelf checks that members have unique, non-empty ids and addresses
// that checkAddrs accepts, and returns the entry of id.
func findSelf(members []Member, id string) (Member, error) {
	return findSelfNamed(members, id, goFields)
}

// findSelfNamed is findSelf, naming the addresses in errors by names.
func findSelfNamed(members []Member, id string, names memberFields) (Member, error) {
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
	if err := checkAddrs(members, names); err != nil {
		return self, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return self, nil
}
