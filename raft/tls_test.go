package raft_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/internal/testcert"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
	"github.com/pipestream/pipestream/statemachine"
)

// withMTLS gives a peer config its own certificate from ca, for both of its
// listeners and for what it dials. The listeners take peer certificates
// only: clients of the group hold certificates from the same authority,
// and Raft is not theirs to speak (docs/security.md).
func withMTLS(t testing.TB, ca *testcert.CA) func(*raft.Config) {
	return func(cfg *raft.Config) {
		cert := ca.Peer(t, cfg.ID)
		cfg.TLS, cfg.PeerTLS = ca.ServerConfig(cert), ca.ClientConfig(cert)
		cfg.TLS.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.VerifiedChains) == 0 || !testcert.HasOU(cs.VerifiedChains[0][0], testcert.PeerOU) {
				return errors.New("not a peer certificate")
			}
			return nil
		}
	}
}

// Three peers with mutual TLS elect a leader and commit, from the leader
// and forwarded from a follower over the TLS commit RPC.
func TestTLSCommit(t *testing.T) {
	ca := testcert.NewCA(t, "raft-ca")
	c := newCluster(t, 3, false, withMTLS(t, ca))
	li := c.leader()
	fi := c.follower(li)
	streams := []statemachine.StreamInfo{streamInfo("tls", 1), streamInfo("tls", 2)}
	replies := []*pb.RaftClientReply{c.commit(li, streams[0]), c.commit(fi, streams[1])}
	c.checkLinked(t, streams, replies)
}

// A TLS peer's listeners refuse whoever does not hold a certificate the
// group trusts; the commit address answers one that does.
func TestTLSRefusesStrangers(t *testing.T) {
	ca, other := testcert.NewCA(t, "raft-ca"), testcert.NewCA(t, "other-ca")
	c := newCluster(t, 3, false, withMTLS(t, ca))
	li := c.leader()
	entry, err := proto.Marshal(&pb.StreamEntry{ClientId: []byte("probe"), StreamId: 1, Message: []byte("m"), Length: 1})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  *tls.Config // nil: plain TCP
		ok   bool
	}{
		{"peer certificate", ca.ClientConfig(ca.Peer(t, "probe")), true},
		{"plain TCP", nil, false},
		{"no certificate", ca.ClientConfig(), false},
		{"client certificate of the group's CA", ca.ClientConfig(ca.Client(t, "client")), false},
		{"certificate of another CA", ca.ClientConfig(other.Peer(t, "probe")), false},
	}
	for _, tc := range tests {
		for _, addr := range []struct{ name, addr string }{
			{"commit", c.peers[li].CommitAddr},
			{"raft", c.peers[li].RaftAddr},
		} {
			t.Run(tc.name+"/"+addr.name, func(t *testing.T) {
				conn, err := dialProbe(addr.addr, tc.cfg)
				if err != nil {
					if tc.ok {
						t.Fatal(err)
					}
					return
				}
				defer conn.Close()
				if addr.name == "raft" {
					// Raft's wire protocol is not ours to speak: a
					// trusted handshake is as far as the probe goes.
					if tc.ok {
						return
					}
					conn.SetDeadline(time.Now().Add(testTimeout))
					if tc.cfg == nil {
						// Bytes that are not a TLS hello.
						if _, err := conn.Write(entry); err != nil {
							return
						}
					}
					// TLS 1.3 lets a client finish its handshake before
					// the server has looked at its certificate: the
					// refusal is what the first read gets.
					_, err := conn.Read(make([]byte, 1))
					if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
						t.Errorf("read from the Raft listener: %v; want a refusal", err)
					}
					return
				}
				rep, err := rawCall(t, conn, commitFrame(entry))
				if (err == nil) != tc.ok {
					t.Fatalf("forwarded commit: reply %v, err %v; want success %v", rep, err, tc.ok)
				}
				if tc.ok && !rep.GetSuccess() {
					t.Errorf("leader refused a trusted commit: %v", rep)
				}
			})
		}
	}
}

func dialProbe(addr string, cfg *tls.Config) (net.Conn, error) {
	d := &net.Dialer{Timeout: testTimeout}
	if cfg == nil {
		return d.Dial("tcp", addr)
	}
	return tls.DialWithDialer(d, "tcp", addr, cfg)
}

// A peer whose certificate comes from another authority cannot join: the
// two good peers elect a leader and commit without it, and it receives
// nothing, hears of no leader and cannot commit.
func TestTLSWrongCertificateCannotJoin(t *testing.T) {
	ca, other := testcert.NewCA(t, "raft-ca"), testcert.NewCA(t, "other-ca")
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	var nodes []*raft.Node
	var peers []group.Member
	for i, authority := range []*testcert.CA{ca, ca, other} {
		cfg := testConfig(fmt.Sprintf("n%d", i))
		withMTLS(t, authority)(&cfg)
		n, err := raft.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := n.Shutdown(); err != nil {
				t.Errorf("Shutdown(%s): %v", cfg.ID, err)
			}
		})
		nodes = append(nodes, n)
		peers = append(peers, n.Addr())
	}
	for _, n := range nodes {
		if err := n.Start(ctx, peers); err != nil {
			t.Fatal(err)
		}
	}
	bad := nodes[2]

	// The good two, as a cluster of their own for the helpers.
	c := &cluster{t: t, ctx: ctx, peers: peers[:2], nodes: nodes[:2], linkers: []*recorder{{}, {}}}
	for i := range 2 {
		c.cfgs = append(c.cfgs, raft.Config{ID: peers[i].ID})
	}
	li := c.leader()
	fi := c.follower(li)
	last := c.commit(fi, streamInfo("good", 1)) // forwarded over TLS
	last = c.commit(li, streamInfo("good", 2))
	c.waitFor("both good peers applied the last entry", func() bool {
		return nodes[0].Stats().LastIndex >= last.GetLogIndex() && nodes[1].Stats().LastIndex >= last.GetLogIndex()
	})

	if st := bad.Stats(); st.LastIndex != 0 || st.Streams != 0 {
		t.Errorf("the untrusted peer applied entries: %+v", st)
	}
	if id, _ := bad.Leader(); id != "" {
		t.Errorf("the untrusted peer knows leader %q", id)
	}
	// Bounded by its own context: with no leader it can reach, Commit
	// gives up with ErrNoLeader rather than committing.
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if rep, err := bad.Commit(short, streamInfo("bad", 1)); !errors.Is(err, raft.ErrNoLeader) {
		t.Errorf("Commit on the untrusted peer: %v, %v; want ErrNoLeader", rep, err)
	}
}

func TestTLSConfigNeedsBothSides(t *testing.T) {
	ca := testcert.NewCA(t, "raft-ca")
	cert := ca.Peer(t, "n0")
	for _, tc := range []struct {
		name string
		edit func(*raft.Config)
	}{
		{"TLS alone", func(c *raft.Config) { c.TLS = ca.ServerConfig(cert) }},
		{"PeerTLS alone", func(c *raft.Config) { c.PeerTLS = ca.ClientConfig(cert) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig("n0")
			tc.edit(&cfg)
			n, err := raft.New(cfg)
			if err == nil {
				_ = n.Shutdown()
				t.Fatal("New succeeded")
			}
			if !errors.Is(err, raft.ErrConfig) {
				t.Errorf("New: %v, want ErrConfig", err)
			}
		})
	}
}
