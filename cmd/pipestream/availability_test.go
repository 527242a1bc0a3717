package main

// Write availability under a fault schedule: which puts the group had to
// accept, and whether it did. A put is held to succeed when, for its
// whole run (from before it opened the stream to after it learned its
// outcome), its primary was up and at most one peer of the three was
// down, so that a write quorum (two) could hold it. A peer counts as down
// from just before the test sends it SIGKILL until, restarted, it has
// connected to every peer that was up and each of those has connected to
// it, as their debug logs say (reconnect.watch): a peer that is running
// but that the others have not redialed yet is one a primary routes
// around. So a put is excluded only for what the schedule did while it
// ran, as the processes themselves report it.

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pipestream/pipestream/datastream"
)

// span is a time a peer was down; to is zero while it still is.
type span struct{ from, to time.Time }

// upLog records when each peer was down. A nil *upLog records nothing.
type upLog struct {
	mu   sync.Mutex
	down map[string][]span // oldest first
	// kills counts each peer's kills, so that a watch of a restart the
	// peer has been killed again since does not mark it up.
	kills map[string]int
}

func newUpLog() *upLog { return &upLog{down: map[string][]span{}, kills: map[string]int{}} }

// markDown records that peer id is down from at.
func (u *upLog) markDown(id string, at time.Time) {
	if u == nil {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.kills[id]++
	if s := u.down[id]; len(s) > 0 && s[len(s)-1].to.IsZero() {
		return // not up again since its last kill
	}
	u.down[id] = append(u.down[id], span{from: at})
}

// markUp records that peer id is up again from at, unless it has been
// killed again since its kill number kill.
func (u *upLog) markUp(id string, kill int, at time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if s := u.down[id]; u.kills[id] == kill && len(s) > 0 && s[len(s)-1].to.IsZero() {
		s[len(s)-1].to = at
	}
}

// reconnect is a restart of peer id that watch waits on: the peers up when
// it began, with how much each had logged by then.
type reconnect struct {
	u      *upLog
	id     string
	kill   int
	others map[string]*process
	from   map[string]int // byte offsets into the others' stderr
}

// restarting notes, before peer id's new process starts, which other peers
// are up, so that watch can wait for their reconnection. It returns nil
// for a nil *upLog.
func (u *upLog) restarting(g *group, id string) *reconnect {
	if u == nil {
		return nil
	}
	r := &reconnect{u: u, id: id, others: map[string]*process{}, from: map[string]int{}}
	up := u.upNow(g.others(id))
	u.mu.Lock()
	r.kill = u.kills[id]
	u.mu.Unlock()
	for _, o := range up {
		p := g.proc(o)
		r.others[o], r.from[o] = p, p.stderr.size()
	}
	return r
}

// connectedTo returns a matcher of the debug line a peer's server logs
// once it has connected to peer id (server.connect).
func connectedTo(id string) func(string) bool {
	return func(line string) bool {
		return strings.Contains(line, "server: connected to peer") && strings.Contains(line, " to="+id+" ")
	}
}

// watch marks the restarted peer up once p, its new process, has connected
// to every peer that was up at the restart and each of those has connected
// to it: before that a primary on either side finds no connection to the
// other and routes around it (docs/protocol.md, "Write quorum"), and the
// others redial a returning peer only every redial_interval. A peer that
// exits meanwhile is not waited for; a restarted peer that is killed again
// is not marked up. It needs the peers to log at debug level.
func (r *reconnect) watch(p *process) {
	if r == nil {
		return
	}
	for o, op := range r.others {
		if _, err := op.stderr.waitLine(r.from[o], "connection to "+r.id, connectedTo(r.id), testTimeout); err != nil {
			select {
			case <-op.exited:
				continue // killed meanwhile: not a peer to reconnect to
			default:
				return // alive and not reconnected in testTimeout: r.id stays down
			}
		}
		if _, err := p.stderr.waitLine(0, "connection to "+o, connectedTo(o), testTimeout); err != nil {
			return
		}
	}
	select {
	case <-p.exited:
	default:
		r.u.markUp(r.id, r.kill, time.Now())
	}
}

// upNow returns the ids that are up now.
func (u *upLog) upNow(ids []string) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var up []string
	for _, id := range ids {
		if s := u.down[id]; len(s) == 0 || !s[len(s)-1].to.IsZero() {
			up = append(up, id)
		}
	}
	return up
}

// covers reports whether sp includes the instant at.
func (sp span) covers(at time.Time) bool {
	return !at.Before(sp.from) && (sp.to.IsZero() || at.Before(sp.to))
}

// downDuring reports whether peer id was down at some instant of
// [from, to]. u.mu must be held.
func (u *upLog) downDuring(id string, from, to time.Time) bool {
	for _, sp := range u.down[id] {
		if !sp.from.After(to) && (sp.to.IsZero() || sp.to.After(from)) {
			return true
		}
	}
	return false
}

// mostDown returns the most peers of ids down at one instant of
// [from, to]. The count changes only where a span starts, so it is
// enough to look at from and at every start within. u.mu must be held.
func (u *upLog) mostDown(ids []string, from, to time.Time) int {
	instants := []time.Time{from}
	for _, id := range ids {
		for _, sp := range u.down[id] {
			if sp.from.After(from) && !sp.from.After(to) {
				instants = append(instants, sp.from)
			}
		}
	}
	most := 0
	for _, at := range instants {
		n := 0
		for _, id := range ids {
			if slices.ContainsFunc(u.down[id], func(sp span) bool { return sp.covers(at) }) {
				n++
			}
		}
		most = max(most, n)
	}
	return most
}

// availability is how a history's puts fared against the up-log.
type availability struct {
	held, committed int          // puts held to succeed, and of those committed
	primaryDown     int          // excluded: the primary was down (or reconnecting) at some point of the put
	noQuorum        int          // excluded: more than one peer was down at some point of it
	unavailable     []*putRecord // held to succeed and did not
}

// availability classifies every put of h. quorum is the write quorum of
// the peers ids.
func (u *upLog) availability(h *history, ids []string, quorum int) availability {
	u.mu.Lock()
	defer u.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	var a availability
	for _, p := range h.puts {
		switch {
		case u.downDuring(p.Primary, p.Start, p.End):
			a.primaryDown++
		case len(ids)-u.mostDown(ids, p.Start, p.End) < quorum:
			a.noQuorum++
		default:
			a.held++
			if p.Outcome == outCommitted {
				a.committed++
			} else {
				a.unavailable = append(a.unavailable, p)
			}
		}
	}
	return a
}

func (a availability) String() string {
	pct := 100.0
	if a.held > 0 {
		pct = 100 * float64(a.committed) / float64(a.held)
	}
	return fmt.Sprintf("write availability %.1f%%: %d of %d puts made while a quorum and their primary were up committed; excluded %d whose primary was down or reconnecting, %d while two peers were",
		pct, a.committed, a.held, a.primaryDown, a.noQuorum)
}

// spans describes the up-log, for a failure.
func (u *upLog) spans() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var b strings.Builder
	ids := make([]string, 0, len(u.down))
	for id := range u.down {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		for _, sp := range u.down[id] {
			fmt.Fprintf(&b, "\n  %s down %s to %s", id, sp.from.Format("15:04:05.000"), sp.to.Format("15:04:05.000"))
		}
	}
	return b.String()
}

// logsOf returns what the running peers logged about put p's stream, for
// a failure.
func (g *group) logsOf(p *putRecord) string {
	key := fmt.Sprintf("%s/%d", p.Client, p.Stream)
	var b strings.Builder
	for _, id := range g.ids {
		for line := range strings.Lines(g.proc(id).stderr.String()) {
			if strings.Contains(line, key) {
				fmt.Fprintf(&b, "\n    %s: %s", id, strings.TrimSuffix(line, "\n"))
			}
		}
	}
	return b.String()
}

// lostAndStale counts, once the group has healed, the copies the checker's
// invariant is about: lost, a peer's newest record of a name is the
// name's newest committed put (the highest index of h) without that put's
// bytes, or there is no record at all; stale, its newest record is an
// older entry. A later entry than h's newest (an indeterminate put that
// committed) is the checker's to judge.
func lostAndStale(h *history, stores []*peerStore) (lost, stale int) {
	h.mu.Lock()
	truth := map[string]*putRecord{}
	for _, p := range h.puts {
		if t := truth[p.Name]; p.Outcome == outCommitted && (t == nil || p.Index > t.Index) {
			truth[p.Name] = p
		}
	}
	h.mu.Unlock()
	for name, p := range truth {
		sum := hex.EncodeToString(p.SHA256[:])
		for _, s := range stores {
			switch r, ok := s.newest[name]; {
			case ok && r.Index < p.Index:
				stale++
			case !ok || r.Index == p.Index && (r.Missing || s.dataSum[name] != sum):
				lost++
			}
		}
	}
	return lost, stale
}

// writer makes puts back to back, through a primary chosen among the
// peers up at the time, while a fault schedule runs.
type writer struct {
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// writeThroughout starts a writer of small puts (up to 256 KiB, names from
// a pool of three so that versions matter) into h; halt ends it, and so
// does the test's end. g.ups must be set: the writer chooses each put's
// primary among the peers up by it.
func (g *group) writeThroughout(c *datastream.Client, h *history, seed uint64) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	g.t.Cleanup(w.halt)
	go func() {
		defer close(w.done)
		rng := rand.New(rand.NewPCG(seed, 1<<40))
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			up := g.ups.upNow(g.ids)
			if len(up) == 0 {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			data := randomBytes(seed^uint64(1<<40+i), rng.IntN(256<<10+1))
			rec := streamPut(ctx, h, c, fmt.Sprintf("live/%d", rng.IntN(3)), up[rng.IntN(len(up))], data, nil)
			cancel()
			if rec.Outcome != outCommitted {
				// A refusal is quick: pause, or puts without a quorum
				// would outnumber the rest a hundred to one.
				time.Sleep(50 * time.Millisecond)
			}
		}
	}()
	return w
}

// halt stops the writer and waits until its last put has ended.
func (w *writer) halt() {
	w.once.Do(func() { close(w.stop) })
	<-w.done
}
