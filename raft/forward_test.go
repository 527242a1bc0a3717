package raft_test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
)

// rawCall sends one frame to a commit address and reads one reply frame,
// speaking the forwarding protocol by hand: 4-byte big-endian length, then
// the message.
func rawCall(t *testing.T, conn net.Conn, frame []byte) (*pb.RaftClientReply, error) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(testTimeout))
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(frame)))
	if _, err := conn.Write(append(msg, frame...)); err != nil {
		return nil, err
	}
	var hdr [4]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return nil, err
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(conn, body); err != nil {
		return nil, err
	}
	var rep pb.RaftClientReply
	if err := proto.Unmarshal(body, &rep); err != nil {
		t.Fatalf("reply does not decode: %v", err)
	}
	return &rep, nil
}

// mustCall is rawCall failing the test if the call does.
func mustCall(t *testing.T, conn net.Conn, frame []byte) *pb.RaftClientReply {
	t.Helper()
	rep, err := rawCall(t, conn, frame)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// dialCommit connects to a commit address; the test's end closes the
// connection.
func dialCommit(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// commitFrame is a commit request: its kind byte, then the entry.
func commitFrame(entry []byte) []byte { return append([]byte{1}, entry...) }

func TestForwardingProtocol(t *testing.T) {
	c := newCluster(t, 3, false, nil)
	li := c.leader()
	fi := c.follower(li)
	entry, err := proto.Marshal(&pb.StreamEntry{ClientId: []byte("raw"), StreamId: 9, Message: []byte("m"), Length: 3})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		to       int
		frame    []byte
		wantCode pb.ErrorCode
		wantHint string
	}{
		{"to the leader", li, commitFrame(entry), pb.ErrorCode_ERROR_NONE, ""},
		{"to a follower", fi, commitFrame(entry), pb.ErrorCode_NOT_LEADER, c.cfgs[li].ID},
		{"malformed entry", li, commitFrame([]byte{0xff, 0xff, 0xff}), pb.ErrorCode_BAD_HEADER, ""},
		{"unknown kind", li, []byte{9, 1, 2}, pb.ErrorCode_BAD_HEADER, ""},
		{"empty request", li, nil, pb.ErrorCode_BAD_HEADER, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn := dialCommit(t, c.peers[tc.to].CommitAddr)
			// Two calls on one connection: it carries requests in turn.
			for range 2 {
				rep := mustCall(t, conn, tc.frame)
				if rep.GetErrorCode() != tc.wantCode || rep.GetSuccess() != (tc.wantCode == pb.ErrorCode_ERROR_NONE) ||
					rep.GetLeaderHint() != tc.wantHint || rep.GetServerId() != c.cfgs[tc.to].ID {
					t.Errorf("reply %v, want code %v, hint %q", rep, tc.wantCode, tc.wantHint)
				}
				if tc.wantCode == pb.ErrorCode_ERROR_NONE && (rep.GetLogIndex() == 0 || rep.GetCallId() != 9) {
					t.Errorf("success reply %v lacks the entry or the call id", rep)
				}
			}
		})
	}

	t.Run("oversized frame closes the connection", func(t *testing.T) {
		conn := dialCommit(t, c.peers[li].CommitAddr)
		conn.SetDeadline(time.Now().Add(testTimeout))
		if _, err := conn.Write(binary.BigEndian.AppendUint32(nil, raft.MaxMessageSize+1)); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Errorf("read after an oversized length: %v, want EOF", err)
		}
	})
	c.waitLinked(1) // the raw entry, once despite two calls

	// A status request answers with the peer's own indexes: its FSM's at
	// the moment it answered. The second commit of the raw entry (a
	// duplicate, which links nothing) may still be on its way to the
	// follower, so the answer is bracketed by what the FSM reports before
	// and after the call.
	t.Run("status", func(t *testing.T) {
		conn := dialCommit(t, c.peers[fi].CommitAddr)
		before := c.nodes[fi].Stats().LastIndex
		rep := mustCall(t, conn, []byte{2})
		after := c.nodes[fi].Stats().LastIndex
		infos := rep.GetCommitInfos()
		if !rep.GetSuccess() || len(infos) != 1 || infos[0].GetServerId() != c.cfgs[fi].ID ||
			infos[0].GetAppliedIndex() < before || infos[0].GetAppliedIndex() > after {
			t.Errorf("status reply %v, want the follower's own info with an applied index in [%d, %d]", rep, before, after)
		}
	})

	if got := c.sameEntries(); len(got) != 1 {
		t.Errorf("linked %v, want the raw entry once", got)
	}
}

// CaughtUp asks the leader for its commit index after a barrier; a
// follower that applied it is caught up, and a settle request to a
// follower is refused.
func TestCaughtUp(t *testing.T) {
	c := newCluster(t, 3, false, nil)
	li := c.leader()
	fi := c.follower(li)
	c.commit(li, streamInfo("c", 1))
	for _, i := range []int{li, fi} {
		c.waitFor(c.cfgs[i].ID+" caught up", func() bool {
			ok, err := c.nodes[i].CaughtUp(c.ctx)
			return ok && err == nil
		})
	}
	conn := dialCommit(t, c.peers[fi].CommitAddr)
	rep := mustCall(t, conn, []byte{4})
	if rep.GetSuccess() || rep.GetErrorCode() != pb.ErrorCode_NOT_LEADER {
		t.Errorf("settle request to a follower: %v, want NOT_LEADER", rep)
	}
	conn2 := dialCommit(t, c.peers[li].CommitAddr)
	before := c.nodes[li].Stats().LastIndex
	rep = mustCall(t, conn2, []byte{4})
	after := c.nodes[li].Stats().LastIndex
	if infos := rep.GetCommitInfos(); !rep.GetSuccess() || len(infos) != 1 ||
		infos[0].GetAppliedIndex() < before || infos[0].GetAppliedIndex() > after {
		t.Errorf("settle request to the leader: %v, want its FSM's last applied entry, in [%d, %d]", rep, before, after)
	}
}
