package pipestreamv1

import (
	"errors"
	"fmt"
)

// ErrInvalidRoutingTable is wrapped by every error Validate returns; the
// rest of the message says what is wrong.
var ErrInvalidRoutingTable = errors.New("pipestreamv1: invalid routing table")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidRoutingTable}, args...)...)
}

// Validate reports whether t can carry a stream from primary to every peer of
// a group. peers lists the group's member ids and must include primary.
//
// An empty table (nil, or no routes) is valid: it stands for Star, the
// primary forwarding to every other peer itself. Otherwise t must be a tree
// over exactly the group's peers rooted at primary: every route and every
// successor names a peer of the group, no peer has two routes or is its own
// successor, the primary has no predecessor, every other peer has exactly
// one, and so every peer is reached from the primary once.
//
// A peer with no route is a leaf. Errors wrap ErrInvalidRoutingTable.
func (t *RoutingTable) Validate(primary string, peers []string) error {
	if primary == "" {
		return invalid("empty primary id")
	}
	type node struct {
		pred     string // the peer that forwards to this one
		hasPred  bool
		hasRoute bool
		reached  bool // connected to the primary through preds
	}
	all := make([]node, len(peers)) // one allocation for every node
	nodes := make(map[string]*node, len(peers))
	for i, id := range peers {
		if id == "" {
			return invalid("empty peer id in the group")
		}
		if nodes[id] != nil {
			return invalid("peer %q is listed twice in the group", id)
		}
		nodes[id] = &all[i]
	}
	root := nodes[primary]
	if root == nil {
		return invalid("primary %q is not in the group", primary)
	}
	routes := t.GetRoutes()
	if len(routes) == 0 {
		return nil
	}

	for _, r := range routes {
		from := r.GetPeer()
		n := nodes[from]
		switch {
		case n == nil:
			return invalid("route for peer %q, which is not in the group", from)
		case n.hasRoute:
			return invalid("peer %q has two routes", from)
		}
		n.hasRoute = true
		for _, to := range r.GetSuccessors() {
			s := nodes[to]
			switch {
			case s == nil:
				return invalid("peer %q forwards to %q, which is not in the group", from, to)
			case to == from:
				return invalid("peer %q forwards to itself", from)
			case s == root:
				return invalid("peer %q forwards to the primary %q", from, to)
			case s.hasPred && s.pred == from:
				return invalid("peer %q lists successor %q twice", from, to)
			case s.hasPred:
				return invalid("peer %q has two predecessors, %q and %q", to, s.pred, from)
			}
			s.pred, s.hasPred = from, true
		}
	}

	// Every peer but the primary now has at most one predecessor, so walking
	// up from any peer either reaches the primary, stops at a peer with no
	// predecessor, or goes round a cycle. A walk longer than the group must
	// be on a cycle. Marking reached peers keeps the whole check linear.
	root.reached = true
	for _, id := range peers {
		cur := id
		for steps := 0; !nodes[cur].reached; steps++ {
			n := nodes[cur]
			if !n.hasPred {
				return invalid("peer %q has no predecessor, so it is not reached from the primary %q", cur, primary)
			}
			if steps >= len(peers) {
				return invalid("peers form a cycle through %q", cur)
			}
			cur = n.pred
		}
		for cur := id; !nodes[cur].reached; cur = nodes[cur].pred {
			nodes[cur].reached = true
		}
	}
	return nil
}

// Successors returns the peers that peer forwards to, as t lists them: nil
// for a peer without a route, and for everybody when t is empty (resolve the
// star default with OrStar first). The slice is t's own; do not modify it.
func (t *RoutingTable) Successors(peer string) []string {
	for _, r := range t.GetRoutes() {
		if r.GetPeer() == peer {
			return r.GetSuccessors()
		}
	}
	return nil
}

// OrStar returns t, or when t is empty, the star that an empty table stands
// for: primary forwarding to every other peer of the group.
func (t *RoutingTable) OrStar(primary string, peers []string) *RoutingTable {
	if len(t.GetRoutes()) > 0 {
		return t
	}
	others := make([]string, 0, len(peers))
	for _, p := range peers {
		if p != primary {
			others = append(others, p)
		}
	}
	return &RoutingTable{Routes: []*Route{{Peer: primary, Successors: others}}}
}

// Star returns a table in which primary forwards to each of others directly.
// It is what an empty table means; spell it out to make the choice explicit.
// Star does not validate its arguments.
func Star(primary string, others ...string) *RoutingTable {
	return &RoutingTable{Routes: []*Route{{Peer: primary, Successors: append([]string(nil), others...)}}}
}

// Chain returns a table in which each peer forwards to the next, the first
// being the primary: every peer sends each byte once, at the cost of a hop of
// latency per peer. It has one route per peer, the last with no successors,
// so that Chain(p) is not mistaken for the empty table's star. Chain does not
// validate its arguments.
func Chain(peers ...string) *RoutingTable {
	t := &RoutingTable{Routes: make([]*Route, len(peers))}
	for i, p := range peers {
		t.Routes[i] = &Route{Peer: p}
		if i+1 < len(peers) {
			t.Routes[i].Successors = []string{peers[i+1]}
		}
	}
	return t
}
