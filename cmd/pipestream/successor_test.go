package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// Writes that survive a replica failure, with real processes: a successor
// of a large stream is SIGKILLed at a random offset, and its predecessor
// recovers the pipeline around it (docs/protocol.md, "Pipeline recovery"),
// so the stream still commits on the write quorum. The killed peer, once
// restarted, learns the entry from the log and repairs its copy from a
// holder.

// successorPoints is how many kill points TestSuccessorKilledMidStream
// tries per routing in an ordinary run; -crash.rounds N makes it N.
const successorPoints = 3

// routing is a shape of a stream's routing table.
type routing struct {
	name  string
	table func(primary string, others []string) *pb.RoutingTable
}

// routings are the two shapes docs/protocol.md describes: a chain through
// every peer (the client's default) and a star from the primary.
var routings = []routing{
	{"chain", func(primary string, others []string) *pb.RoutingTable {
		return pb.Chain(append([]string{primary}, others...)...)
	}},
	{"star", func(primary string, others []string) *pb.RoutingTable { return pb.Star(primary, others...) }},
}

// For a chain and for a star, a stream of 16 to 17 MiB goes to the
// leader, and one of its successors (in a chain the middle peer or the
// tail, at random) is SIGKILLed once a random offset of the stream has
// been handed to the client. CLOSE must succeed, the two survivors must
// hold the stream byte-equal, and the victim, restarted, must repair its
// copy within healTimeout. The seed (-crash.seed) fixes the victims and
// the offsets; -crash.rounds sets the points per routing.
func TestSuccessorKilledMidStream(t *testing.T) {
	if testing.Short() {
		t.Skip("runs, kills and restarts three processes")
	}
	seed := testSeed(t, *crashSeed, "crash.seed")
	points := successorPoints
	if *crashRounds > 0 {
		points = *crashRounds
	}
	g := startGroup(t)
	c := g.newClient()
	h := new(history)
	for ri, rt := range routings {
		for k := range points {
			rng := rand.New(rand.NewPCG(seed, uint64(ri*1000+k)))
			// The victim alternates from a random start, so that any two
			// points of a chain kill its middle and its tail.
			g.killSuccessor(h, c, rng, (k+int(seed%2))%2, rt, fmt.Sprintf("successor/%s-%d", rt.name, k))
		}
	}
	g.barrier(context.Background(), h, c)
	g.checkOrFail(h, nil)
}

// killSuccessor runs one point of TestSuccessorKilledMidStream: a put as
// name routed by rt, its successor number nth (0 or 1, in the order of
// the group file) SIGKILLed at an offset rng chooses.
func (g *group) killSuccessor(h *history, c *datastream.Client, rng *rand.Rand, nth int, rt routing, name string) {
	t := g.t
	t.Helper()
	// The primary is the leader, so that the kill tests the pipeline and
	// not an election as well.
	primary := g.currentLeader()
	others := g.others(primary)
	victim := others[nth]
	size := 16<<20 + rng.IntN(1<<20)
	// Past the first packet, which every peer acknowledges before the
	// rest goes (putEvents.opened): the victim holds the stream open, so
	// the kill is one mid-stream and not one the primary routes around
	// when the header comes.
	offset := datastream.DefaultPacketSize + rng.IntN(size-datastream.DefaultPacketSize)
	data := randomBytes(rng.Uint64(), size)
	where := "a branch of the star"
	if rt.name == "chain" {
		where = map[bool]string{true: "the middle", false: "the tail"}[victim == others[0]]
	}
	t.Logf("%s: %s %s→%v, kill %s (%s) at offset %d of %d", name, rt.name, primary, others, victim, where, offset, size)

	ev := newPutEvents(offset)
	ev.opened = true
	done := make(chan *putRecord, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		done <- streamPut(ctx, h, c, name, primary, data, ev, datastream.WithRoutingTable(rt.table(primary, others)))
	}()
	select {
	case <-ev.atOffset:
	case rec := <-done:
		t.Fatalf("%s ended before offset %d: %v", name, offset, rec)
	}
	g.kill(victim)
	rec := <-done
	if rec.Outcome != outCommitted {
		t.Fatalf("%s with %s killed at offset %d: %v; want it committed by the other two", name, victim, offset, rec)
	}
	for _, id := range g.ids {
		if id != victim {
			g.waitHolds(id, rec, data)
		}
	}
	// The commit went through a recovery: the victim's predecessor (the
	// primary, or in a chain whose tail died the middle peer) says so.
	if !g.logged(fmt.Sprintf("%s/%d", rec.Client, rec.Stream), "recovering the pipeline around it", "peer="+victim) {
		t.Errorf("%s committed with %s killed at offset %d, and no peer logged a recovery around it", name, victim, offset)
	}
	g.restartAll(victim)
	g.waitHolds(victim, rec, data)
}

// waitHolds waits, up to healTimeout, until peer id's newest record of
// rec's name is rec's entry with a copy (not missing), and fails the test
// unless the file under the name then holds exactly data.
func (g *group) waitHolds(id string, rec *putRecord, data []byte) {
	t := g.t
	t.Helper()
	deadline := time.Now().Add(healTimeout)
	for {
		s, err := readPeerStore(id, g.files(id))
		if err != nil {
			t.Fatal(err)
		}
		r, ok := s.newest[rec.Name]
		if ok && r.Index > rec.Index {
			t.Fatalf("%s: %s has an entry at index %d, after the put's %d", id, rec.Name, r.Index, rec.Index)
		}
		var readErr error
		if ok && r.Index == rec.Index && !r.Missing {
			// The store records a link in committed.log, durably, before it
			// renames the file into place: a file not there yet is a link
			// in progress, which the deadline bounds.
			got, err := os.ReadFile(filepath.Join(g.files(id), "data", filepath.FromSlash(rec.Name)))
			if err == nil && !bytes.Equal(got, data) || err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("%s: %s at index %d holds %d bytes (%v) that are not the %d put", id, rec.Name, r.Index, len(got), err, len(data))
			}
			if err == nil {
				return
			}
			readErr = err
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no copy of %s (index %d) within %v; newest record %+v (found %v; %v)", id, rec.Name, rec.Index, healTimeout, r, ok, readErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logged reports whether a running peer's stderr has a line with every
// one of words.
func (g *group) logged(words ...string) bool {
	for _, id := range g.ids {
		for line := range strings.Lines(g.proc(id).stderr.String()) {
			if !slices.ContainsFunc(words, func(w string) bool { return !strings.Contains(line, w) }) {
				return true
			}
		}
	}
	return false
}

// currentLeader asks the group (pipestream status, which names the leader
// even when it exits 1 for an unhealthy group) which peer leads now,
// waiting, up to testTimeout, while it has none.
func (g *group) currentLeader() string {
	g.t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		stdout, stderr, _ := g.cli("status", "--config", g.config, "--timeout", "500ms", "--settle", "0s")
		if m := statusLeader.FindStringSubmatch(stdout); m != nil && slices.Contains(g.ids, m[1]) {
			return m[1]
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("status names no leader within %v:\n%s%s", testTimeout, stdout, stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Two of the three peers are SIGKILLed: a put, by the CLI and through the
// library, fails with NOT_ENOUGH_PEERS naming both, and nothing of it is
// committed: once they are back, no peer lists the name, serves it, or
// records it in its store.
func TestQuorumLostPutFails(t *testing.T) {
	if testing.Short() {
		t.Skip("runs, kills and restarts three processes")
	}
	g := startGroup(t)
	c := g.newClient()
	h := new(history)
	survivor, down := "p1", []string{"p2", "p3"}
	for _, id := range down {
		g.kill(id)
	}
	// What the missing peers are called in either refusal: at the header
	// (they cannot be dialed) or at CLOSE (they hold no copy).
	named := regexp.MustCompile(`NOT_ENOUGH_PEERS: .*the write quorum is 2; (unreachable:|missing) p2, p3`)

	src := writeFile(t, t.TempDir(), "f", randomBytes(7, 1<<20))
	stdout, stderr, code := g.cli("put", src, "--config", g.config, "--name", "lost/cli", "--quiet")
	if code == exitOK || !named.MatchString(stderr) {
		t.Errorf("put with %v down: exit %d, want a failure naming them\n--- stdout\n%s--- stderr\n%s", down, code, stdout, stderr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	rec := streamPut(ctx, h, c, "lost/api", survivor, randomBytes(8, 1<<20), nil)
	cancel()
	if rec.Outcome != outFailed || !named.MatchString(rec.Err) {
		t.Errorf("library put with %v down: %v; want NOT_ENOUGH_PEERS naming them", down, rec)
	}
	t.Logf("with %v down, put says: %s; the library: %s", down, strings.TrimSpace(stderr), rec.Err)

	g.restartAll(down...)
	g.barrier(context.Background(), h, c)
	// The barrier shows every peer applied it, not that each has asked the
	// new leader since: the survivor, out of touch while alone, refuses
	// reads until it has. Each read waits for that answer, so that "get
	// fails" means the name is unknown, not that the peer refused.
	for _, id := range g.ids {
		ls, lsErr, code := g.cliCaughtUp("ls", "--config", g.config, "--id", id)
		if code != exitOK {
			t.Errorf("%s: ls exit %d\n--- stdout\n%s--- stderr\n%s", id, code, ls, lsErr)
		} else if strings.Contains(ls, "lost/") {
			t.Errorf("%s: ls lists a failed put:\n%s", id, ls)
		}
		for _, name := range []string{"lost/cli", "lost/api"} {
			out, getErr, code := g.cliCaughtUp("get", name, "--config", g.config, "--id", id)
			if unknown := fmt.Sprintf("peer %s holds no file %q", id, name); code == exitOK || !strings.Contains(getErr, unknown) {
				t.Errorf("%s: get %s: exit %d with %d bytes, want %s\n--- stderr\n%s", id, name, code, len(out), unknown, getErr)
			}
		}
		s, err := readPeerStore(id, g.files(id))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range s.records {
			if strings.HasPrefix(r.Name, "lost/") {
				t.Errorf("%s: committed.log records %s at index %d", id, r.Name, r.Index)
			}
		}
	}
	g.checkOrFail(h, nil)
}
