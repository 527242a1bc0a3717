package handler

import (
	"fmt"
	"slices"
	"strings"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

func (s *Streams) members() []string { return s.groupPeers() }

// quorum returns the write quorum as a number of peers.
func (s *Streams) quorum() int { return quorumOf(len(s.members()), s.cfg.WriteQuorum) }

// quorumOf returns write quorum q (WriteQuorum's meaning) of a group of n.
func quorumOf(n, q int) int {
	switch {
	case q == 0:
		return n/2 + 1
	case q < 0 || q > n:
		return n
	default:
		return q
	}
}

// recovers reports whether streams go on without a failed peer.
func (s *Streams) recovers() bool { return s.quorum() < len(s.members()) }

// tableFor validates a header's routing table and returns it with the star
// default spelled out. A resume's table is the stream's tree without the
// peers dropped from it, so it need only span some of the group.
func (s *Streams) tableFor(t *pb.RoutingTable, primary string, resume bool) (*pb.RoutingTable, error) {
	peers := s.members()
	if resume && len(t.GetRoutes()) > 0 {
		peers = tablePeers(t, primary)
		for _, id := range peers {
			if !slices.Contains(s.members(), id) {
				return nil, fmt.Errorf("%w: peer %q is not in the group", pb.ErrInvalidRoutingTable, id)
			}
		}
	}
	if err := t.Validate(primary, peers); err != nil {
		return nil, err
	}
	return t.OrStar(primary, peers), nil
}

// tablePeers lists the peers a routing table names, primary first.
func tablePeers(t *pb.RoutingTable, primary string) []string {
	out := []string{primary}
	add := func(id string) {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	for _, r := range t.GetRoutes() {
		add(r.GetPeer())
		for _, id := range r.GetSuccessors() {
			add(id)
		}
	}
	return out
}

// successorsIn returns this peer's successors in table t of a stream
// whose primary is primary.
func (s *Streams) successorsIn(t *pb.RoutingTable, primary string) []string {
	if len(t.GetRoutes()) == 0 {
		t = t.OrStar(primary, s.members())
	}
	return t.Successors(s.cfg.ID)
}

// checkQuorum refuses a stream, at its primary, when fewer peers of its
// table than the write quorum are reachable from here. The error counts
// the whole group and names every peer the stream cannot have: those of
// its table that are unreachable, and those a resume's table left out,
// which the stream was moved away from.
func (s *Streams) checkQuorum(t *pb.RoutingTable) *pb.Error {
	// One look at the group, so that the count, the quorum and the peers
	// left out agree while its membership changes.
	members := s.members()
	quorum := quorumOf(len(members), s.cfg.WriteQuorum)
	if quorum >= len(members) {
		return nil // no recovery (recovers): every successor is dialed, and must answer, as before
	}
	in := tablePeers(t, s.cfg.ID)
	up, down := []string{s.cfg.ID}, []string(nil)
	for _, id := range in[1:] {
		if _, err := s.cfg.Dial(id); err != nil {
			down = append(down, id)
		} else {
			up = append(up, id)
		}
	}
	if len(up) >= quorum {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d peers reachable (%s), the write quorum is %d",
		len(up), len(members), strings.Join(up, ", "), quorum)
	if len(down) > 0 {
		fmt.Fprintf(&b, "; unreachable: %s", strings.Join(down, ", "))
	}
	var left []string
	for _, id := range members {
		if !slices.Contains(in, id) {
			left = append(left, id)
		}
	}
	if len(left) > 0 {
		fmt.Fprintf(&b, "; dropped from the stream: %s", strings.Join(left, ", "))
	}
	return errorf(pb.ErrorCode_NOT_ENOUGH_PEERS, "%s", b.String())
}
