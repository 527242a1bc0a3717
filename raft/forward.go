package raft

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	hraft "github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/codec"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// The commit RPC. A peer sends requests to another peer's commit address
// and reads back a RaftClientReply for each. Every message is a 4-byte
// big-endian length and its bytes (codec.WriteFrame and codec.ReadFrame,
// the bare length prefix of the DataStream framing); a request's bytes
// start with its kind:
//
//	reqCommit      a StreamEntry, for the leader to append
//	reqStatus      nothing; the reply carries the peer's CommitInfo
//	reqPeerStatus  nothing; the reply carries the CommitInfo and a
//	               PeerStatus (QueryStatus)
//	reqSettled     nothing; the leader answers, after a barrier, with its
//	               CommitInfo, whose applied index then covers every entry
//	               committed before (CaughtUp); another peer: NOT_LEADER
//	reqMembers     nothing; the reply's message is the peer's Membership
//	reqChange      a MembershipRequest from a tool: the peer carries it
//	               out, on the leader if it is not the leader itself; the
//	               reply's message is the leader's Membership afterwards
//	reqChangeLeader a MembershipRequest from a peer, for the leader only;
//	               another peer answers NOT_LEADER (no second hop)
//
// reqStatus is on every commit's path (each reply collects the peers'
// indexes), so it stays cheap; reqPeerStatus, for an operator's status
// command, may cost more. A peer older than reqPeerStatus answers it with
// BAD_HEADER.
//
// A connection carries any number of request/reply pairs in turn and is
// pooled by the sender.

// MaxMessageSize bounds one message of the commit RPC, and so the size of
// a stream entry.
const MaxMessageSize = 1 << 20

// maxIdleConns is how many commit connections a Node keeps per peer.
const maxIdleConns = 4

// Request kinds of the commit RPC.
var (
	reqCommit       = []byte{1}
	reqStatus       = []byte{2}
	reqPeerStatus   = []byte{3}
	reqSettled      = []byte{4}
	reqMembers      = []byte{5}
	reqChange       = []byte{6}
	reqChangeLeader = []byte{7}
)

// readFrame reads one message of the commit RPC into a new buffer; one
// over MaxMessageSize is ErrTooLarge.
func readFrame(r io.Reader) ([]byte, error) {
	b, err := codec.ReadFrame(r, MaxMessageSize)
	if errors.Is(err, codec.ErrFrameTooLong) {
		return nil, fmt.Errorf("%w: %v", ErrTooLarge, err)
	}
	return b, err
}

// exchange sends the request kind+body on c and reads the reply.
func exchange(c io.ReadWriter, kind, body []byte) (*pb.RaftClientReply, error) {
	if err := codec.WriteFrame(c, kind, body); err != nil {
		return nil, err
	}
	buf, err := readFrame(c)
	if err != nil {
		return nil, err
	}
	var rep pb.RaftClientReply
	if err := proto.Unmarshal(buf, &rep); err != nil {
		return nil, fmt.Errorf("%w: reply: %v", ErrBadEntry, err)
	}
	return &rep, nil
}

// forward sends a marshaled StreamEntry to the commit address addr and
// returns the leader's reply.
func (n *Node) forward(ctx context.Context, addr string, entry []byte) (*pb.RaftClientReply, error) {
	return n.call(ctx, addr, reqCommit, entry)
}

// call sends one request of the commit RPC to addr and returns the reply.
func (n *Node) call(ctx context.Context, addr string, kind, body []byte) (*pb.RaftClientReply, error) {
	return n.callTimeout(ctx, addr, kind, body, n.cfg.ForwardTimeout)
}

// callTimeout is call with the I/O bounded by timeout (and ctx) instead of
// Config.ForwardTimeout.
func (n *Node) callTimeout(ctx context.Context, addr string, kind, body []byte, timeout time.Duration) (*pb.RaftClientReply, error) {
	if addr == "" {
		return nil, fmt.Errorf("%w: peer has no commit address", ErrConfig)
	}
	c, err := n.getConn(ctx, addr)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetDeadline(deadline)
	// A canceled ctx interrupts the I/O in progress by moving the deadline.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })

	rep, err := exchange(c, kind, body)
	interrupted := !stop()
	if err != nil {
		c.Close()
		if interrupted {
			err = errors.Join(err, ctx.Err())
		}
		return nil, fmt.Errorf("raft: call %s: %w", addr, err)
	}
	if interrupted {
		c.Close() // its deadline is in the past now
	} else {
		c.SetDeadline(time.Time{})
		n.putConn(addr, c)
	}
	return rep, nil
}

func (n *Node) getConn(ctx context.Context, addr string) (net.Conn, error) {
	n.mu.Lock()
	if cs := n.idle[addr]; len(cs) > 0 {
		c := cs[len(cs)-1]
		n.idle[addr] = cs[:len(cs)-1]
		n.mu.Unlock()
		return c, nil
	}
	n.mu.Unlock()
	c, err := dial(ctx, addr, n.cfg.ForwardTimeout, n.cfg.PeerTLS)
	if err != nil {
		return nil, fmt.Errorf("raft: forward: %w", err)
	}
	return c, nil
}

func (n *Node) putConn(addr string, c net.Conn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed || len(n.idle[addr]) >= maxIdleConns {
		c.Close()
		return
	}
	n.idle[addr] = append(n.idle[addr], c)
}

// serveCommits accepts forwarding connections until Shutdown.
func (n *Node) serveCommits() {
	defer n.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := n.commit.Accept()
		if err != nil {
			if n.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait and retry.
			n.log.Warn("raft: accept commit connection", "err", err)
			select {
			case <-n.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		n.mu.Lock()
		if n.closed {
			n.mu.Unlock()
			c.Close()
			return
		}
		n.srvConns[c] = struct{}{}
		n.wg.Add(1)
		n.mu.Unlock()
		go n.serveCommitConn(c)
	}
}

// idleCommitConn is how long an accepted forwarding connection may wait
// for its next request.
const idleCommitConn = 5 * time.Minute

// serveCommitConn serves the accepted connection raw, which Shutdown
// closes to end it.
func (n *Node) serveCommitConn(raw net.Conn) {
	defer n.wg.Done()
	c := raw
	defer func() {
		n.mu.Lock()
		delete(n.srvConns, raw)
		n.mu.Unlock()
		c.Close()
	}()
	if n.cfg.TLS != nil {
		tc := tls.Server(raw, n.cfg.TLS)
		ctx, cancel := context.WithTimeout(n.ctx, handshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			n.log.Debug("raft: commit connection: TLS handshake", "remote", raw.RemoteAddr(), "err", err)
			return
		}
		c = tc
	}
	for {
		c.SetReadDeadline(time.Now().Add(idleCommitConn))
		// A fresh buffer each time: raft keeps the entry's bytes in its log.
		data, err := readFrame(c)
		if err != nil {
			if !errors.Is(err, io.EOF) && n.ctx.Err() == nil {
				n.log.Debug("raft: commit connection", "remote", c.RemoteAddr(), "err", err)
			}
			return
		}
		var rep *pb.RaftClientReply
		switch {
		case len(data) > 0 && data[0] == reqCommit[0]:
			rep = n.serveCommit(data[1:])
		case len(data) == 1 && data[0] == reqStatus[0]:
			rep = &pb.RaftClientReply{ServerId: n.cfg.ID, Success: true, CommitInfos: []*pb.CommitInfo{n.commitInfo()}}
		case len(data) == 1 && data[0] == reqSettled[0]:
			rep = n.serveSettled()
		case len(data) == 1 && data[0] == reqPeerStatus[0]:
			rep = &pb.RaftClientReply{ServerId: n.cfg.ID, Success: true, CommitInfos: []*pb.CommitInfo{n.commitInfo()},
				PeerStatus: n.peerStatus()}
		case len(data) == 1 && data[0] == reqMembers[0]:
			rep = n.serveMembers()
		case len(data) > 0 && data[0] == reqChange[0]:
			rep = n.serveChange(data[1:], true)
		case len(data) > 0 && data[0] == reqChangeLeader[0]:
			rep = n.serveChange(data[1:], false)
		default:
			rep = &pb.RaftClientReply{ServerId: n.cfg.ID, ErrorCode: pb.ErrorCode_BAD_HEADER,
				ErrorMessage: fmt.Sprintf("%v: unknown request", ErrBadEntry)}
		}
		body, err := proto.Marshal(rep)
		if err != nil {
			n.log.Error("raft: commit connection: encode reply", "err", err)
			return
		}
		c.SetWriteDeadline(time.Now().Add(n.cfg.ForwardTimeout))
		if err := codec.WriteFrame(c, body); err != nil {
			return
		}
	}
}

// serveCommit commits one forwarded entry if this Node is the leader.
// The reply reports the commit only: the forwarding peer reports its own
// Link, and a failure of the leader's Link is the leader's to log.
func (n *Node) serveCommit(data []byte) *pb.RaftClientReply {
	var e pb.StreamEntry
	if err := proto.Unmarshal(data, &e); err != nil {
		return &pb.RaftClientReply{ServerId: n.cfg.ID, ErrorCode: pb.ErrorCode_BAD_HEADER,
			ErrorMessage: fmt.Sprintf("%v: %v", ErrBadEntry, err)}
	}
	rep := &pb.RaftClientReply{ClientId: e.GetClientId(), CallId: e.GetStreamId(), ServerId: n.cfg.ID}
	r, err := n.started()
	if err == nil && r.State() != hraft.Leader {
		err = hraft.ErrNotLeader
	}
	var res applyResult
	if err == nil {
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.ForwardTimeout)
		res, err = n.applyStream(ctx, r, data)
		cancel()
	}
	if err != nil {
		rep.ErrorCode, _ = classify(err)
		if errors.Is(err, ErrClosed) {
			// Shutting down: as good as not the leader any more, and the
			// forwarding peer should look for the next one.
			rep.ErrorCode = pb.ErrorCode_NOT_LEADER
		}
		rep.ErrorMessage = err.Error()
		if rep.ErrorCode == pb.ErrorCode_NOT_LEADER {
			rep.LeaderHint = n.leaderHint()
		}
		return rep
	}
	rep.Success = true
	rep.LogIndex, rep.Term = res.index, res.term
	return rep
}

// QueryStatus asks the peer whose commit address is addr for its
// PeerStatus, over a connection of its own: for tools outside the group,
// such as pipestream status. tlsConf is nil for plain TCP; a group that
// speaks TLS wants what its peers dial each other with (Config.PeerTLS),
// since the commit address may accept peers only. ctx bounds the call.
func QueryStatus(ctx context.Context, addr string, tlsConf *tls.Config) (*pb.PeerStatus, error) {
	rep, err := roundTrip(ctx, addr, tlsConf, reqPeerStatus, nil)
	if err != nil {
		return nil, fmt.Errorf("raft: status %s: %w", addr, err)
	}
	st := rep.GetPeerStatus()
	if !rep.GetSuccess() || st == nil {
		return nil, fmt.Errorf("%w: status %s: peer %q answered %v %q (older than peer status requests?)",
			ErrBadEntry, addr, rep.GetServerId(), rep.GetErrorCode(), rep.GetErrorMessage())
	}
	return st, nil
}

// QueryMembership asks the peer whose commit address is addr for its view
// of the group (Node.Membership), as QueryStatus does for its status.
func QueryMembership(ctx context.Context, addr string, tlsConf *tls.Config) (Membership, error) {
	rep, err := roundTrip(ctx, addr, tlsConf, reqMembers, nil)
	if err != nil {
		return Membership{}, fmt.Errorf("raft: membership %s: %w", addr, err)
	}
	return changeReply(rep)
}

// RequestChange asks the group, through the peer whose commit address is
// addr, to carry out req (Node.AddMember, RemoveMember or
// TransferLeadership, as one of the group would): that peer takes it to
// the leader. It returns the group as the leader knows it afterwards,
// whose Leader is the new leader after a transfer. Errors are the
// leader's (ErrUnknownMember, ErrIDRemoved, ...). ctx bounds the call;
// the peer gives up on its own after 30 seconds.
func RequestChange(ctx context.Context, addr string, tlsConf *tls.Config, req *pb.MembershipRequest) (Membership, error) {
	body, err := proto.Marshal(req)
	if err != nil {
		return Membership{}, fmt.Errorf("raft: encode request: %w", err)
	}
	rep, err := roundTrip(ctx, addr, tlsConf, reqChange, body)
	if err != nil {
		return Membership{}, fmt.Errorf("raft: membership request to %s: %w", addr, err)
	}
	return changeReply(rep)
}

// roundTrip sends one request of the commit RPC to addr over a
// connection of its own and returns the reply.
func roundTrip(ctx context.Context, addr string, tlsConf *tls.Config, kind, body []byte) (*pb.RaftClientReply, error) {
	if addr == "" {
		return nil, fmt.Errorf("%w: no commit address", ErrConfig)
	}
	c, err := dial(ctx, addr, 0, tlsConf)
	if err != nil {
		return nil, errors.Join(err, ctx.Err())
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	rep, err := exchange(c, kind, body)
	if err != nil {
		return nil, errors.Join(err, ctx.Err())
	}
	return rep, nil
}
