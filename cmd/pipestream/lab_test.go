package main

// Tests in the network lab (internal/netlab): every peer is a serve process
// in a network namespace of its own, the client (labclient_test.go) in
// another, all on one switch with egress limits, so that a partition is a
// host that goes silent and a slow peer is a slow link, not a proxy's
// imitation of them. They need root and take minutes, so they run only
// with -lab:
//
//	go test -run TestLab ./cmd/pipestream -lab

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/internal/netlab"
)

var labRun = flag.Bool("lab", false, "run the network-lab tests: peers in network namespaces (root; see docs/operations.md)")

// Every peer listens on the same ports of its own host's address.
const (
	labStreamPort = 7001
	labRaftPort   = 7101
	labCommitPort = 7201
)

// needLab skips a lab test unless -lab is given and the lab can run.
func needLab(t *testing.T) {
	t.Helper()
	if !*labRun {
		t.Skip("a network-lab test: run with -lab, as root")
	}
	if err := netlab.Check(); err != nil {
		t.Skip(err)
	}
}

// labGroupFile is crashGroupFile's group on the lab's peer hosts.
func labGroupFile(hosts []*netlab.Host) string {
	var b strings.Builder
	b.WriteString("data_dir = \"data\"\n[raft]\nheartbeat_timeout = \"1s\"\nelection_timeout = \"1s\"\nleader_lease_timeout = \"500ms\"\n")
	b.WriteString("\n[stream]\nreply_timeout = \"3s\"\ncommit_timeout = \"8s\"\nlink_timeout = \"2m\"\nredial_interval = \"200ms\"\n")
	for _, h := range hosts {
		fmt.Fprintf(&b, "\n[[peers]]\nid = %q\nstream_addr = \"%s:%d\"\nraft_addr = \"%s:%d\"\ncommit_addr = \"%s:%d\"\n",
			h.Name, h.Addr, labStreamPort, h.Addr, labRaftPort, h.Addr, labCommitPort)
	}
	return b.String()
}

// labGroup is a group of serve processes in a lab, and its client.
type labGroup struct {
	*group
	client *labClient
}

// startLabGroup starts a lab of peers p1..pN and a client host c1, each
// host's egress limited to rate, and a serve process on each peer host,
// and waits until every peer is ready.
func startLabGroup(t *testing.T, bin string, peers int, rate netlab.Rate) *labGroup {
	t.Helper()
	var names []string
	for i := range peers {
		names = append(names, fmt.Sprintf("p%d", i+1))
	}
	lab := netlab.New(t, netlab.Config{Hosts: append(slices.Clone(names), "c1"), Rate: rate})
	g := &group{t: t, bin: bin, dir: t.TempDir(), ids: names, procs: map[string]*process{}, lab: lab}
	g.config = filepath.Join(g.dir, "group.toml")
	var hosts []*netlab.Host
	for _, id := range names {
		hosts = append(hosts, lab.Host(id))
	}
	if err := os.WriteFile(g.config, []byte(labGroupFile(hosts)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, id := range names {
		g.procs[id] = g.startPeer(id)
	}
	for _, id := range names {
		if err := g.waitReady(id); err != nil {
			t.Fatal(err)
		}
	}
	lg := &labGroup{group: g, client: startLabClient(t, lab.Host("c1").Command(os.Args[0], "-test.run=^$"), g.config)}
	if g.leader = lg.currentLeader(""); g.leader == "" {
		t.Fatal("no leader")
	}
	return lg
}

var statusLeader = regexp.MustCompile(`(?m)^leader (\S+),`)

// currentLeader asks the group, from the client host, for its leader
// until one other than not answers, for up to testTimeout; "" if none did.
func (lg *labGroup) currentLeader(not string) string {
	deadline := time.Now().Add(testTimeout)
	for time.Now().Before(deadline) {
		cmd := lg.lab.Host("c1").Command(lg.bin, "status", "--config", lg.config, "--timeout", "500ms", "--settle", "0s")
		out, _ := cmd.Output() // exit 1 for an unhealthy group, which still names its leader
		if m := statusLeader.FindSubmatch(out); m != nil && string(m[1]) != not {
			return string(m[1])
		}
		time.Sleep(100 * time.Millisecond)
	}
	return ""
}

// put is labClient.put, in the shape barrierWith wants.
func (lg *labGroup) barrierPut(ctx context.Context, h *history, name, primary string) *putRecord {
	return lg.client.put(ctx, h, name, primary, 1, 8, nil)
}

// labLoad is puts made back to back from the client host while a fault
// schedule runs: random names from a small pool (so that versions
// matter), sizes and primaries.
type labLoad struct {
	lg        *labGroup
	h         *history
	names     []string
	primaries []string
	maxSize   int
	rng       *rand.Rand

	stop    chan struct{}
	midPut  chan struct{} // a put has handed over a random part of its bytes
	done    chan struct{}
	mu      sync.Mutex
	started int
}

// startLoad starts workers workers putting through primaries.
func (lg *labGroup) startLoad(h *history, seed uint64, primaries []string, workers int) *labLoad {
	l := &labLoad{lg: lg, h: h, names: []string{"lab/a", "lab/b", "lab/c"}, primaries: primaries, maxSize: 6 << 20,
		rng: rand.New(rand.NewPCG(seed, 19)), stop: make(chan struct{}), midPut: make(chan struct{}), done: make(chan struct{})}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(l.work)
	}
	go func() {
		wg.Wait()
		close(l.done)
	}()
	return l
}

func (l *labLoad) work() {
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		l.mu.Lock()
		l.started++
		n := l.started
		name := l.names[l.rng.IntN(len(l.names))]
		primary := l.primaries[l.rng.IntN(len(l.primaries))]
		size := l.rng.IntN(l.maxSize + 1)
		ev := newPutEvents(l.rng.IntN(size + 1))
		l.mu.Unlock()
		done := make(chan struct{})
		go func() {
			select {
			case <-ev.atOffset:
				select {
				case l.midPut <- struct{}{}:
				case <-done:
				}
			case <-done:
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		rec := l.lg.client.put(ctx, l.h, name, primary, uint64(n)<<20|uint64(size), size, ev)
		cancel()
		close(done)
		if rec.Outcome != outCommitted {
			// A peer that is down refuses at once; a client would back
			// off too, and the history stays readable.
			select {
			case <-l.stop:
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// waitMidPut waits until some put of the load is part-way through.
func (l *labLoad) waitMidPut(t *testing.T) {
	t.Helper()
	select {
	case <-l.midPut:
	case <-time.After(testTimeout):
		t.Fatalf("no put got under way within %v", testTimeout)
	}
}

// waitPuts waits until n more puts have ended (any outcome), or the
// timeout passes.
func (l *labLoad) waitPuts(n int, timeout time.Duration) {
	want := len(l.h.lines()) + n
	deadline := time.Now().Add(timeout)
	for len(l.h.lines()) < want && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
}

// end stops the load and waits for its last puts.
func (l *labLoad) end() {
	close(l.stop)
	<-l.done
}

// finish heals the group's view of itself (a barrier through every
// primary), runs the checker, waits for every missing copy to be
// repaired, reads every name back from every peer over the lab's network
// and compares it with what the stores hold, and logs what the puts came
// to.
func (lg *labGroup) finish(h *history, label string) {
	t := lg.t
	t.Helper()
	n := h.counts() // the faults' puts, not the barrier's
	lg.barrierWith(context.Background(), h, lg.barrierPut)
	stores, v, missing, healed := lg.checkHealed(h, label)
	if len(v) > 0 {
		t.Errorf("%s: %d violations:\n  %s\nputs:\n  %s\nstores:\n%s", label, len(v), strings.Join(v, "\n  "),
			strings.Join(h.lines(), "\n  "), describe(stores))
	}
	// No stale read: what a client reads from each peer is the name's
	// newest committed version, which every store now holds.
	reads := 0
	for name, r := range stores[0].newest {
		if strings.HasPrefix(name, "barrier/") || r.Missing {
			continue
		}
		for _, id := range lg.ids {
			sum, err := lg.client.getCaughtUp(name, id)
			reads++
			if err != nil || sum != r.SHA256 {
				t.Errorf("%s: read %s from %s: sha256 %.12s, %v; the newest version (index %d) is %.12s", label, name, id, sum, err, r.Index, r.SHA256)
			}
		}
	}
	t.Logf("%s: puts %d committed / %d failed / %d indeterminate; %d violations; %d copies missing after the faults, repaired in %v; %d reads checked",
		label, n[outCommitted], n[outFailed], n[outIndeterminate], len(v), missing, healed.Round(time.Millisecond), reads)
}

// The lab end to end, short enough for CI: three peers and a client on
// their own hosts at 1 Gbit/s each; a put from the CLI, one from the
// client, a follower cut off in the middle of a put and healed; the
// checker and a read of every name from every peer at the end.
func TestLabSmoke(t *testing.T) {
	needLab(t)
	lg := startLabGroup(t, buildBinary(t), 3, netlab.Gbit)
	h := new(history)

	data := randomBytes(42, 3<<20+5)
	file := writeFile(t, t.TempDir(), "smoke.bin", data)
	put := lg.lab.Host("c1").Command(lg.bin, "put", file, "--config", lg.config, "--name", "lab/cli", "--quiet")
	out, err := put.Output()
	m := putLine.FindStringSubmatch(strings.TrimSpace(string(out)))
	if err != nil || m == nil {
		t.Fatalf("put from c1: %v\n%s", err, out)
	}
	index, _ := strconv.ParseUint(m[2], 10, 64)
	term, _ := strconv.ParseUint(m[3], 10, 64)
	h.add(&putRecord{Name: "lab/cli", Size: len(data), SHA256: sha256.Sum256(data), Primary: m[4], Outcome: outCommitted, Index: index, Term: term})
	if rec := lg.client.put(context.Background(), h, "lab/client", lg.leader, 7, 2<<20, nil); rec.Outcome != outCommitted {
		t.Fatalf("put with no fault: %v", rec)
	}
	follower := lg.others(lg.leader)[0]
	load := lg.startLoad(h, 1, lg.ids, 1)
	load.waitMidPut(t)
	if err := lg.lab.Host(follower).Cut(); err != nil {
		t.Fatal(err)
	}
	load.waitPuts(1, testTimeout)
	if err := lg.lab.Host(follower).Heal(); err != nil {
		t.Fatal(err)
	}
	load.end()
	lg.finish(h, "smoke")
	if sum, err := lg.client.get("lab/cli", lg.leader); err != nil || sum != fmt.Sprintf("%x", sha256.Sum256(data)) {
		t.Errorf("read lab/cli back: %s, %v", sum, err)
	}
}
