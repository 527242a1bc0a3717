package raft

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"slices"

	hraft "github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/group"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// Membership has two halves, both in the Raft log and so in every peer's
// log order and in the snapshots: hashicorp/raft's configuration, which
// names each voter's id and Raft address, and membership entries
// (kindMembers), which name every member with all of its addresses. A
// membership entry holds the whole group after a change, so one entry, or
// one snapshot, tells a peer everything; the FSM keeps the last one and
// calls Config.OnMembers with it. A group that never changed has no
// membership entry: its members are the list Start was given, which the
// first change takes its addresses from.
//
// A change is led by the leader, one at a time: an added member is
// recorded first and made a voter second, so that every peer dials it as
// the Raft configuration grows; a removed one is dropped from the record
// first, so that no peer forwards to it any more, and from the
// configuration second. Each step is idempotent and a change that failed
// half way is completed by asking for it again.

var kindMembers = []byte{3}

// membership is the group as a membership entry set it.
type membership struct {
	index   uint64 // the entry's log index; 0: no entry was applied
	members []group.Member
	removed []string
}

func (m membership) marshal() []byte {
	e := &pb.MembershipEntry{Removed: m.removed}
	for _, p := range m.members {
		e.Members = append(e.Members, memberPB(p))
	}
	b, err := proto.Marshal(e)
	if err != nil {
		panic(fmt.Sprintf("raft: encode membership: %v", err)) // plain strings always encode
	}
	return b
}

func unmarshalMembership(index uint64, data []byte) (membership, error) {
	var e pb.MembershipEntry
	if err := proto.Unmarshal(data, &e); err != nil {
		return membership{}, fmt.Errorf("%w: membership at index %d: %v", ErrBadEntry, index, err)
	}
	m := membership{index: index, removed: e.GetRemoved()}
	for _, p := range e.GetMembers() {
		m.members = append(m.members, memberOf(p))
	}
	return m, nil
}

func memberPB(p group.Member) *pb.Member {
	return &pb.Member{Id: p.ID, StreamAddr: p.StreamAddr, RaftAddr: p.RaftAddr, CommitAddr: p.CommitAddr}
}

func memberOf(m *pb.Member) group.Member {
	return group.Member{ID: m.GetId(), StreamAddr: m.GetStreamAddr(), RaftAddr: m.GetRaftAddr(), CommitAddr: m.GetCommitAddr()}
}

func (f *fsm) applyMembers(l *hraft.Log) any {
	m, err := unmarshalMembership(l.Index, l.Data)
	if err != nil {
		return err
	}
	f.setMembers(m)
	f.log.Info("raft: membership applied", "index", l.Index, "members", ids(m.members), "removed", m.removed)
	return nil
}

func (f *fsm) setMembers(m membership) {
	f.mu.Lock()
	f.members = m
	f.mu.Unlock()
	if f.onMembers != nil {
		f.onMembers(m)
	}
}

func (f *fsm) membership() membership {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.members
	m.members, m.removed = slices.Clone(m.members), slices.Clone(m.removed)
	return m
}

// readMembership reads a snapshot's membership: its index, and the entry
// if the index is not 0.
func readMembership(r *bufio.Reader) (membership, error) {
	index, err := binary.ReadUvarint(r)
	if err != nil {
		return membership{}, fmt.Errorf("%w: snapshot membership: %v", ErrBadEntry, err)
	}
	if index == 0 {
		return membership{}, nil
	}
	data, err := readBytes(r, MaxMessageSize)
	if err != nil {
		return membership{}, fmt.Errorf("%w: snapshot membership: %v", ErrBadEntry, err)
	}
	return unmarshalMembership(index, data)
}

// membersApplied is the FSM's onMembers: the Node's own addresses of the
// members follow, then Config.OnMembers.
func (n *Node) membersApplied(m membership) {
	n.pmu.Lock()
	n.peers = peerMap(m.members)
	n.pmu.Unlock()
	if n.cfg.OnMembers != nil {
		n.cfg.OnMembers(slices.Clone(m.members))
	}
}

func peerMap(peers []group.Member) map[string]group.Member {
	out := make(map[string]group.Member, len(peers))
	for _, p := range peers {
		out[p.ID] = p
	}
	return out
}

func ids(peers []group.Member) []string {
	out := make([]string, len(peers))
	for i, p := range peers {
		out[i] = p.ID
	}
	return out
}

// Membership is a Node's view of its group.
type Membership struct {
	// Members are the group as the last membership entry this Node
	// applied set it, or the list Start was given while it applied none
	// (Index 0).
	Members []group.Member
	// Removed are the ids removed from the group; none is used again.
	Removed []string
	// Index is the log index of that membership entry.
	Index uint64
	// Voters and Nonvoters are the ids of this Node's latest Raft
	// configuration.
	Voters, Nonvoters []string
	// Leader is the leader this Node knows of, or empty.
	Leader string
}

// Member returns the member named id.
func (m Membership) Member(id string) (group.Member, bool) {
	i := slices.IndexFunc(m.Members, func(p group.Member) bool { return p.ID == id })
	if i < 0 {
		return group.Member{}, false
	}
	return m.Members[i], true
}

// IsVoter reports whether id is a voter of the Raft configuration.
func (m Membership) IsVoter(id string) bool { return slices.Contains(m.Voters, id) }

func (m Membership) proto(self string) *pb.Membership {
	out := &pb.Membership{ServerId: self, LeaderId: m.Leader, Removed: m.Removed, Index: m.Index,
		Voters: m.Voters, Nonvoters: m.Nonvoters}
	for _, p := range m.Members {
		out.Members = append(out.Members, memberPB(p))
	}
	return out
}

func membershipOf(pm *pb.Membership) Membership {
	m := Membership{Removed: pm.GetRemoved(), Index: pm.GetIndex(), Voters: pm.GetVoters(),
		Nonvoters: pm.GetNonvoters(), Leader: pm.GetLeaderId()}
	for _, p := range pm.GetMembers() {
		m.Members = append(m.Members, memberOf(p))
	}
	return m
}

// Membership returns the group as this Node knows it; see the fields.
func (n *Node) Membership() (Membership, error) {
	r, err := n.started()
	if err != nil {
		return Membership{}, err
	}
	f := n.fsm.membership()
	m := Membership{Members: f.members, Removed: f.removed, Index: f.index}
	if f.index == 0 {
		n.pmu.Lock()
		m.Members = slices.Clone(n.start)
		n.pmu.Unlock()
	}
	conf := r.GetConfiguration()
	if err := conf.Error(); err != nil {
		return Membership{}, fmt.Errorf("raft: configuration: %w", err)
	}
	for _, s := range conf.Configuration().Servers {
		if s.Suffrage == hraft.Voter {
			m.Voters = append(m.Voters, string(s.ID))
		} else {
			m.Nonvoters = append(m.Nonvoters, string(s.ID))
		}
	}
	m.Leader, _ = n.Leader()
	return m, nil
}

// Members returns the members as Membership does, without the Raft
// configuration.
func (n *Node) Members() []group.Member {
	if f := n.fsm.membership(); f.index > 0 {
		return f.members
	}
	n.pmu.Lock()
	defer n.pmu.Unlock()
	return slices.Clone(n.start)
}

var _ hraft.ConfigurationStore = (*fsm)(nil)

// StoreConfiguration implements hraft.ConfigurationStore, for its side
// effect alone: raft then counts a configuration entry as applied by the
// FSM, so that a snapshot can be taken right after a membership change
// rather than only after the next stream entry. raft keeps the
// configuration itself, in its log and in the snapshots' metadata.
func (f *fsm) StoreConfiguration(uint64, hraft.Configuration) {}
