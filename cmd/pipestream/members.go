package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/pipestream/pipestream/peer"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
)

const joinHelp = `
Usage: pipestream join --config group.toml --id ID [--stream ADDR --raft ADDR --commit ADDR] [flags]

Adds peer ID to the running group. Start the new peer first, with an empty
data directory and --join, so that it waits to be added instead of
bootstrapping a group of its own:

  pipestream serve --config group.toml --id p4 --join

ID's addresses come from its [[peers]] entry in the group file, or from
--stream, --raft and --commit. The request goes to the members the file
lists, the first that answers takes it to the Raft leader, which records
the new member (every peer then connects to it) and makes it a voter.
The new peer then catches up by itself: Raft sends it the log or a
snapshot, and it fetches every committed file from the others.

Refused, with the reason: an id that was ever removed from the group (ids
are never reused), an id or address that is a member's already, a peer
that does not answer at its commit address, or one that bootstrapped a
group of its own (started without --join). Add ID's entry to the group
file of every client and peer afterwards, so that put, get, ls and a
restart see it.
`

const leaveHelp = `
Usage: pipestream leave --config group.toml --id ID [flags]

Removes peer ID from the group: the leader records the group without it,
so that no peer forwards to it any more, and removes it from the Raft
configuration. A running ID sees itself removed and stops; its data
directory stays on its disk. The id is never used again: a replacement
gets a new one. The last voter cannot leave. Remove ID's entry from the
group file afterwards.
`

const transferHelp = `
Usage: pipestream transfer-leader --config group.toml [--to ID] [flags]

Hands Raft leadership to voter ID, or without --to to another voter, and
prints the new leader. Use it before stopping the leader for maintenance:
streams committing meanwhile wait out the handover instead of an election.
`

// defaultChangeTimeout bounds join, leave and transfer-leader.
const defaultChangeTimeout = time.Minute

func runJoin(ctx context.Context, args []string, e *env) int {
	fs := newFlagSet(e, "join", joinHelp)
	config := fs.String("config", "", "group `file` naming the members to ask (required)")
	id := fs.String("id", "", "the new peer's `id` (required)")
	stream := fs.String("stream", "", "the new peer's stream `host:port` (default: its entry in the group file)")
	raftAddr := fs.String("raft", "", "its Raft `host:port` (default: its entry)")
	commit := fs.String("commit", "", "its commit `host:port` (default: its entry)")
	timeout := fs.Duration("timeout", defaultChangeTimeout, "how long to try")
	g, err := changeArgs(fs, args, config, id, timeout)
	if err == nil {
		m := peer.Member{ID: *id}
		if i := slices.IndexFunc(g.Peers, func(p peer.Member) bool { return p.ID == *id }); i >= 0 {
			m = g.Peers[i]
		}
		for _, f := range []struct{ flag, field *string }{{stream, &m.StreamAddr}, {raftAddr, &m.RaftAddr}, {commit, &m.CommitAddr}} {
			if *f.flag != "" {
				*f.field = *f.flag
			}
		}
		if m.StreamAddr == "" || m.RaftAddr == "" || m.CommitAddr == "" {
			err = usageError("%s has no complete [[peers]] entry in %s: give --stream, --raft and --commit", *id, *config)
		} else {
			err = change(ctx, e.stdout, g, *timeout, &pb.MembershipRequest{Op: pb.MembershipRequest_ADD,
				Member: &pb.Member{Id: m.ID, StreamAddr: m.StreamAddr, RaftAddr: m.RaftAddr, CommitAddr: m.CommitAddr}})
		}
	}
	return e.exit(ctx, "join", err)
}

func runLeave(ctx context.Context, args []string, e *env) int { return leaveOp.run(ctx, args, e) }

func runTransfer(ctx context.Context, args []string, e *env) int {
	return transferOp.run(ctx, args, e)
}

// peerOp is a membership command that sends one request about at most
// one peer, named by a flag: leave and transfer-leader. join is not one:
// it sends the new member's addresses too.
type peerOp struct {
	name, help  string
	op          pb.MembershipRequest_Op
	flag, usage string // the flag naming the peer
	required    bool   // whether that flag must be given
}

var (
	leaveOp = peerOp{name: "leave", help: leaveHelp, op: pb.MembershipRequest_REMOVE,
		flag: "id", usage: "`id` of the peer to remove (required)", required: true}
	transferOp = peerOp{name: "transfer-leader", help: transferHelp, op: pb.MembershipRequest_TRANSFER_LEADER,
		flag: "to", usage: "`id` of the voter to lead (default: any other voter)"}
)

func (c peerOp) run(ctx context.Context, args []string, e *env) int {
	fs := newFlagSet(e, c.name, c.help)
	config := fs.String("config", "", "group `file` naming the members to ask (required)")
	id := fs.String(c.flag, "", c.usage)
	timeout := fs.Duration("timeout", defaultChangeTimeout, "how long to try")
	required := id
	if !c.required {
		required = nil
	}
	g, err := changeArgs(fs, args, config, required, timeout)
	if err == nil {
		err = change(ctx, e.stdout, g, *timeout, &pb.MembershipRequest{Op: c.op, Id: *id})
	}
	return e.exit(ctx, c.name, err)
}

// changeArgs parses and checks the arguments of join, leave or
// transfer-leader and loads the group file they name. id is nil for a
// command that needs no --id.
func changeArgs(fs *flagSet, args []string, config, id *string, timeout *time.Duration) (peer.Config, error) {
	if err := fs.parseNone(args); err != nil {
		return peer.Config{}, err
	}
	switch {
	case *config == "":
		return peer.Config{}, usageError("--config FILE is required")
	case id != nil && *id == "":
		return peer.Config{}, usageError("--id is required")
	case *timeout <= 0:
		return peer.Config{}, usageError("--timeout must be positive")
	}
	return loadGroup(*config)
}

// change sends req to the members of g in turn until one answers, and
// prints the outcome and the group as the leader then knows it. The peer
// the request is about is asked last: it may be down.
func change(ctx context.Context, w io.Writer, g peer.Config, timeout time.Duration, req *pb.MembershipRequest) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	about := req.GetId()
	if req.GetOp() == pb.MembershipRequest_ADD {
		about = req.GetMember().GetId()
	}
	ask := slices.Clone(g.Peers)
	slices.SortStableFunc(ask, func(a, b peer.Member) int {
		return boolInt(a.ID == about) - boolInt(b.ID == about)
	})
	var errs []error
	for _, m := range ask {
		got, err := raft.RequestChange(ctx, m.CommitAddr, g.PeerTLS, req)
		if err == nil {
			printChange(w, req, got)
			return nil
		}
		if answered(err) || ctx.Err() != nil {
			return err
		}
		errs = append(errs, fmt.Errorf("%s: %w", m.ID, err))
	}
	return fmt.Errorf("no member answered: %w", errors.Join(errs...))
}

// answered tells an error a member answered with from one of reaching it.
func answered(err error) bool {
	for _, e := range []error{raft.ErrUnknownMember, raft.ErrMemberExists, raft.ErrIDRemoved, raft.ErrLastVoter,
		raft.ErrNotJoinable, raft.ErrChangeFailed, raft.ErrNoLeader, raft.ErrConfig} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func printChange(w io.Writer, req *pb.MembershipRequest, m raft.Membership) {
	switch req.GetOp() {
	case pb.MembershipRequest_ADD:
		fmt.Fprintf(w, "%s joined the group\n", req.GetMember().GetId())
	case pb.MembershipRequest_REMOVE:
		fmt.Fprintf(w, "%s left the group\n", req.GetId())
	case pb.MembershipRequest_TRANSFER_LEADER:
		fmt.Fprintf(w, "leader %s\n", m.Leader)
	}
	printMembers(w, m)
}

// printMembers prints a group's members, one line each, with their part
// in the Raft configuration.
func printMembers(w io.Writer, m raft.Membership) {
	fmt.Fprintf(w, "members (leader %s):\n", orNone(m.Leader))
	for _, p := range m.Members {
		fmt.Fprintf(w, "  %-6s %-10s stream %s, raft %s, commit %s\n", p.ID, suffrage(m, p.ID), p.StreamAddr, p.RaftAddr, p.CommitAddr)
	}
	for _, id := range m.Voters {
		if _, ok := m.Member(id); !ok {
			fmt.Fprintf(w, "  %-6s %-10s no addresses recorded\n", id, "voter")
		}
	}
}

// suffrage is id's part in m's Raft configuration.
func suffrage(m raft.Membership, id string) string {
	switch {
	case m.IsVoter(id):
		return "voter"
	case slices.Contains(m.Nonvoters, id):
		return "nonvoter"
	}
	return "pending" // recorded, not (yet) in the Raft configuration: join it again to finish
}

func orNone(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// groupMembership asks the members for the group's membership, the
// leader's view if one of them leads, and returns it.
func groupMembership(ctx context.Context, members []peer.Member, tlsConf *tls.Config, leader string) (raft.Membership, bool) {
	order := slices.Clone(members)
	slices.SortStableFunc(order, func(a, b peer.Member) int { return boolInt(b.ID == leader) - boolInt(a.ID == leader) })
	for _, m := range order {
		got, err := raft.QueryMembership(ctx, m.CommitAddr, tlsConf)
		if err == nil {
			return got, true
		}
	}
	return raft.Membership{}, false
}

// memberLine is the status line of the members.
func memberLine(m raft.Membership) string {
	var parts []string
	for _, p := range m.Members {
		parts = append(parts, p.ID+"("+suffrage(m, p.ID)+")")
	}
	s := "members " + strings.Join(parts, " ")
	if len(m.Removed) > 0 {
		s += "; removed " + strings.Join(m.Removed, " ")
	}
	return s
}
