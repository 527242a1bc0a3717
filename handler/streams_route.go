package handler

import (
	"fmt"
	"slices"
	"strings"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

func (s *Streams) members() []string { return s.groupPeers() }

// quorum returns the write quorum as a number of peers.
func (s *Streams) quorum() int {
	n := len(s.members())
	switch q := s.cfg.WriteQuorum; {
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
// table than the write quorum are reachable from here.
func (s *Streams) checkQuorum(t *pb.RoutingTable) *pb.Error {
	if !s.recovers() {
		return nil // every successor is dialed, and must answer, as before
	}
	up, down := []string{s.cfg.ID}, []string(nil)
	for _, id := range tablePeers(t, s.cfg.ID)[1:] {
		if _, err := s.cfg.Dial(id); err != nil {
			down = append(down, id)
		} else {
			up = append(up, id)
		}
	}
	if len(up) < s.quorum() {
		return errorf(pb.ErrorCode_NOT_ENOUGH_PEERS, "%d of %d peers reachable (%s), the write quorum is %d; unreachable: %s",
			len(up), len(up)+len(down), strings.Join(up, ", "), s.quorum(), strings.Join(down, ", "))
	}
	return nil
}
