package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pipestream/pipestream/peer"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
)

const statusHelp = `
Usage: pipestream status --config group.toml [flags]

Asks every peer of the group, at its commit address, for its state and
prints the leader and its term, then one line per peer: its Raft role,
applied index (Raft's, which counts an election's no-op, and in brackets
the last entry its state machine applied) and commit index, the streams
open on it and those closed but not yet committed, the committed files it
holds no copy of and the repairs fetching them, and the bytes of the
files under its data directory.

Exits 1 when the group is unhealthy: a peer does not answer, no peer is
the leader, a peer has missing copies, or a peer's applied index is more
than --max-lag behind the leader's commit index and does not catch up
within --settle. Exits 0 when it is healthy.
`

// Defaults of status's flags.
const (
	defaultStatusTimeout = 2 * time.Second
	defaultStatusSettle  = 3 * time.Second
	defaultStatusMaxLag  = 0
	// statusPoll is how often status asks a lagging peer again while it
	// settles.
	statusPoll = 50 * time.Millisecond
)

// errUnhealthy is status's verdict on a group it could ask but did not
// find well: exit 1.
var errUnhealthy = errors.New("group unhealthy")

func runStatus(ctx context.Context, args []string, e *env) int {
	fs := newFlagSet(e, "status", statusHelp)
	config := fs.String("config", "", "group `file` naming the peers and their commit addresses")
	s := &status{timeout: defaultStatusTimeout, settle: defaultStatusSettle}
	fs.DurationVar(&s.timeout, "timeout", s.timeout, "how long to wait for each peer's answer")
	fs.DurationVar(&s.settle, "settle", s.settle, "how long a lagging peer may take to catch up before it counts as unhealthy")
	fs.Uint64Var(&s.maxLag, "max-lag", defaultStatusMaxLag, "how many `entries` a peer's applied index may stay behind the leader's commit index")
	err := fs.parseNone(args)
	switch {
	case err != nil:
	case *config == "":
		err = usageError("--config FILE is required")
	case s.timeout <= 0:
		err = usageError("--timeout must be positive")
	case s.settle < 0:
		err = usageError("--settle must not be negative")
	}
	if err == nil {
		var cfg peer.Config
		if cfg, err = loadGroup(*config); err == nil {
			s.members, s.tls = cfg.Peers, cfg.PeerTLS
			err = s.run(ctx, e.stdout)
		}
	}
	return e.exit(ctx, "status", err)
}

// status is one run of pipestream status.
type status struct {
	members []peer.Member
	group   *raft.Membership // the leader's view, once asked
	gone    map[string]bool  // members of the file the group no longer has
	tls     *tls.Config      // nil: the commit addresses speak plain TCP
	timeout time.Duration
	settle  time.Duration
	maxLag  uint64
}

// peerAnswer is what one peer answered, or why it did not.
type peerAnswer struct {
	st  *pb.PeerStatus
	err error
}

func (s *status) run(ctx context.Context, w io.Writer) error {
	answers := s.ask(ctx, s.members)
	leader := s.leader(answers)
	answers = s.adopt(ctx, answers, leader)
	leader = s.leader(answers) // it may be a member the file lacks
	if leader != nil {
		if err := s.settleLagging(ctx, answers, leader.GetCommitIndex()); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.report(w, answers, leader)
}

// adopt asks the group for its membership, the leader's view if there is
// a leader, and follows it: a member the group file lacks (joined since)
// is asked too, and one the group removed is reported as such rather than
// as unreachable.
func (s *status) adopt(ctx context.Context, answers []peerAnswer, leader *pb.PeerStatus) []peerAnswer {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	m, ok := groupMembership(ctx, s.members, s.tls, leader.GetServerId())
	if !ok {
		return answers
	}
	s.group = &m
	if m.Index == 0 {
		return answers // never changed: the file's list is the group
	}
	s.gone = make(map[string]bool)
	for _, f := range s.members {
		if _, ok := m.Member(f.ID); !ok {
			s.gone[f.ID] = true
		}
	}
	var extra []peer.Member
	for _, p := range m.Members {
		if !slices.ContainsFunc(s.members, func(f peer.Member) bool { return f.ID == p.ID }) {
			extra = append(extra, p)
		}
	}
	s.members = append(s.members, extra...)
	return append(answers, s.ask(ctx, extra)...)
}

// report prints the answers and returns errUnhealthy, with every problem
// found, unless the group is healthy.
func (s *status) report(w io.Writer, answers []peerAnswer, leader *pb.PeerStatus) error {
	var problems []string
	if leader != nil {
		fmt.Fprintf(w, "leader %s, term %d, commit index %d\n", leader.GetServerId(), leader.GetTerm(), leader.GetCommitIndex())
	} else {
		var known []string
		for i, m := range s.members {
			if id := answers[i].st.GetLeaderId(); id != "" {
				known = append(known, fmt.Sprintf("%s names %s", m.ID, id))
			}
		}
		line := "no leader among the peers that answered"
		if len(known) > 0 {
			line += " (" + strings.Join(known, ", ") + ")"
		}
		fmt.Fprintln(w, line)
		problems = append(problems, "no leader")
	}
	if s.group != nil {
		fmt.Fprintln(w, memberLine(*s.group))
	}
	for i, m := range s.members {
		a := answers[i]
		if s.gone[m.ID] {
			fmt.Fprintf(w, "%s  not a member: removed from the group (drop it from the group file)\n", m.ID)
			continue
		}
		if a.err != nil {
			fmt.Fprintf(w, "%s  unreachable: %s\n", m.ID, message(a.err))
			problems = append(problems, m.ID+" unreachable")
			continue
		}
		fmt.Fprintf(w, "%s  %s\n", m.ID, describePeer(a.st))
		if leader != nil && a.st.GetAppliedIndex()+s.maxLag < leader.GetCommitIndex() {
			problems = append(problems, fmt.Sprintf("%s applied %d of %d", m.ID, a.st.GetAppliedIndex(), leader.GetCommitIndex()))
		}
		if n := a.st.GetMissingCopies(); n > 0 {
			problems = append(problems, fmt.Sprintf("%s misses %d copies", m.ID, n))
		}
	}
	if len(problems) > 0 {
		err := fmt.Errorf("%w: %s", errUnhealthy, strings.Join(problems, "; "))
		fmt.Fprintln(w, err)
		return err
	}
	fmt.Fprintln(w, "group healthy")
	return nil
}

// ask queries members at once and returns their answers in their order.
func (s *status) ask(ctx context.Context, members []peer.Member) []peerAnswer {
	out := make([]peerAnswer, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, s.timeout)
			defer cancel()
			st, err := raft.QueryStatus(ctx, m.CommitAddr, s.tls)
			if err == nil && st.GetServerId() != m.ID {
				err = fmt.Errorf("%s answers as peer %q", m.CommitAddr, st.GetServerId())
			}
			out[i] = peerAnswer{st, err}
		})
	}
	wg.Wait()
	return out
}

// leader returns the status of the peer that says it is the leader, the
// one of the highest term if a deposed one has not heard yet, or nil.
func (s *status) leader(answers []peerAnswer) *pb.PeerStatus {
	var l *pb.PeerStatus
	for _, a := range answers {
		if a.err == nil && a.st.GetState() == "Leader" && (l == nil || a.st.GetTerm() > l.GetTerm()) {
			l = a.st
		}
	}
	return l
}

// settleLagging asks the peers whose applied index is more than maxLag
// behind commit again until they catch up or settle has passed, and keeps
// their last answers.
func (s *status) settleLagging(ctx context.Context, answers []peerAnswer, commit uint64) error {
	deadline := time.Now().Add(s.settle)
	for {
		var idx []int
		var lagging []peer.Member
		for i, a := range answers {
			if a.err == nil && !s.gone[s.members[i].ID] && a.st.GetAppliedIndex()+s.maxLag < commit {
				idx = append(idx, i)
				lagging = append(lagging, s.members[i])
			}
		}
		if len(lagging) == 0 || !time.Now().Add(statusPoll).Before(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(statusPoll):
		}
		for j, a := range s.ask(ctx, lagging) {
			answers[idx[j]] = a
		}
	}
}

// describePeer is the line status prints for a peer that answered.
func describePeer(st *pb.PeerStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-9s applied %d (state machine %d), commit %d; streams: %d open, %d awaiting commit",
		st.GetState(), st.GetAppliedIndex(), st.GetFsmAppliedIndex(), st.GetCommitIndex(),
		st.GetOpenStreams(), st.GetPendingStreams())
	if st.MissingCopies != nil {
		fmt.Fprintf(&b, "; missing copies %d", st.GetMissingCopies())
	} else {
		b.WriteString("; no file store")
	}
	if st.RepairsRunning != nil {
		fmt.Fprintf(&b, ", repairs %d running, %d waiting", st.GetRepairsRunning(), st.GetRepairsWaiting())
	}
	if st.DataDirBytes != nil {
		fmt.Fprintf(&b, "; data dir %s", formatBytes(int64(st.GetDataDirBytes())))
	} else {
		b.WriteString("; in memory")
	}
	return b.String()
}
