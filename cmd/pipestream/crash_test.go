package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/netlab"
)

// Issue 13, "acknowledged means durable": once a client holds a successful
// reply to CLOSE, every peer that acknowledged the stream either links its
// bytes or records its copy missing, and no peer serves an older version
// under the name. These tests SIGKILL real serve processes around a put and
// check the peers' data directories once the group is whole again (see
// crashcheck_test.go for the checker).

var (
	crashRounds   = flag.Int("crash.rounds", 0, "rounds of TestCrashSchedule (0: a short run, or as many as -crash.duration allows)")
	crashDuration = flag.Duration("crash.duration", 0, "run TestCrashSchedule for this long instead of a number of rounds")
	crashSeed     = flag.Uint64("crash.seed", 0, "seed of TestCrashSchedule (0: from the clock; the test logs it)")
)

// defaultCrashRounds is the schedule's length in an ordinary go test run.
const defaultCrashRounds = 10

// crashGroupFile is testGroupFile with stream timeouts short enough that
// a put through a killed peer fails in seconds, not the defaults' minutes.
func crashGroupFile(addrs []string) string {
	return testGroupFile(addrs) + "\n[stream]\nreply_timeout = \"3s\"\ncommit_timeout = \"8s\"\nlink_timeout = \"2m\"\nredial_interval = \"200ms\"\n"
}

// group is three serve processes that a test kills and restarts.
type group struct {
	t      *testing.T
	bin    string
	dir    string
	config string
	ids    []string
	leader string      // as the first ready lines named it
	lab    *netlab.Lab // the hosts the peers run on; nil: this machine's loopback

	mu    sync.Mutex
	procs map[string]*process
}

var putLine = regexp.MustCompile(`^committed (\S+): .*, log index (\d+), term (\d+), primary (\S+)$`)

func startGroup(t *testing.T) *group { return startGroupWith(t, "") }

// startGroupWith is startGroup with raftSettings (TOML lines) added to the
// group file's [raft] table.
func startGroupWith(t *testing.T, raftSettings string) *group {
	t.Helper()
	g := &group{t: t, bin: buildBinary(t), dir: t.TempDir(), ids: []string{"p1", "p2", "p3"}, procs: map[string]*process{}}
	g.config = filepath.Join(g.dir, "group.toml")
	var peers []*process
	for attempt := 1; ; attempt++ {
		addrs := freeAddrs(t, 9)
		file := strings.Replace(crashGroupFile(addrs), "[raft]\n", "[raft]\n"+raftSettings, 1)
		if err := os.WriteFile(g.config, []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
		var err error
		if peers, err = startPeers(t, g.bin, g.config); err == nil {
			break
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("attempt %d: %v; retrying on other ports", attempt, err)
	}
	for _, p := range peers {
		g.procs[p.id] = p
	}
	line, _ := peers[0].stdout.waitFor("ready: leader ", 0)
	g.leader = strings.TrimSuffix(strings.Fields(line[strings.Index(line, "leader ")+len("leader "):])[0], ",")
	if !slices.Contains(g.ids, g.leader) {
		t.Fatalf("no leader in %q", line)
	}
	return g
}

// files is peer id's FileStore directory.
func (g *group) files(id string) string { return filepath.Join(g.dir, "data", id, "files") }

func (g *group) proc(id string) *process {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.procs[id]
}

// kill SIGKILLs peer id and waits until it is gone.
func (g *group) kill(id string) {
	p := g.proc(id)
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
	case <-time.After(testTimeout):
		g.t.Fatalf("%s still running %v after SIGKILL", id, testTimeout)
	}
}

// down reports whether peer id's process has exited.
func (g *group) down(id string) bool {
	select {
	case <-g.proc(id).exited:
		return true
	default:
		return false
	}
}

// restart starts peer id again, with env added to its environment, and
// waits until it is serving. Its ports were its own a moment ago; a bind
// that fails anyway is retried.
func (g *group) restart(id string, env ...string) error {
	for attempt := 1; ; attempt++ {
		p := g.startPeer(id, env...)
		_, err := p.stdout.waitFor(id+" serving: ", testTimeout)
		if err == nil {
			g.mu.Lock()
			g.procs[id] = p
			g.mu.Unlock()
			return nil
		}
		_ = p.cmd.Process.Kill()
		<-p.exited
		if attempt == 5 || !strings.Contains(p.stderr.String(), "address already in use") {
			return fmt.Errorf("restart %s: %w\n--- stderr\n%s", id, err, p.stderr.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startPeer starts peer id's serve process, in its host when the group
// runs in a lab.
func (g *group) startPeer(id string, env ...string) *process {
	g.t.Helper()
	if g.lab == nil {
		return startPeer(g.t, g.bin, g.config, id, env...)
	}
	return startProcess(g.t, id, g.lab.Host(id).Command(g.bin, serveArgs(g.config, id, nil)...), env...)
}

// waitReady waits until peer id, restarted, sees a leader and every other
// peer.
func (g *group) waitReady(id string) error {
	return g.proc(id).waitReady()
}

// stores reads every peer's FileStore directory.
func (g *group) stores() []*peerStore {
	g.t.Helper()
	var out []*peerStore
	for _, id := range g.ids {
		s, err := readPeerStore(id, g.files(id))
		if err != nil {
			g.t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// hasRecord reports whether peer id's committed.log holds a record at
// index.
func (g *group) hasRecord(id string, index uint64) bool {
	s, err := readPeerStore(id, g.files(id))
	if err != nil {
		g.t.Fatal(err)
	}
	_, ok := s.record(index)
	return ok
}

// startPut runs "pipestream put" as a process and returns it running;
// its stdout shows the committed line the moment put prints it.
func (g *group) startPut(file, name, primary string) *process {
	g.t.Helper()
	p := &process{
		id:     "put " + name,
		cmd:    exec.Command(g.bin, "put", file, "--config", g.config, "--name", name, "--primary", primary, "--quiet"),
		stdout: newLineWriter(),
		stderr: newLineWriter(),
		exited: make(chan struct{}),
	}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		p.stdout.close()
		close(p.exited)
	}()
	g.t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// awaitCommitted waits for put's committed line and returns the index and
// term it names.
func awaitCommitted(t *testing.T, put *process) (index, term uint64) {
	t.Helper()
	line, err := put.stdout.waitFor("committed ", testTimeout)
	if err != nil {
		_ = put.cmd.Process.Kill()
		<-put.exited
		t.Fatalf("%s: %v\n--- stderr\n%s", put.id, err, put.stderr.String())
	}
	m := putLine.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("%s printed %q", put.id, line)
	}
	index, _ = strconv.ParseUint(m[2], 10, 64)
	term, _ = strconv.ParseUint(m[3], 10, 64)
	return index, term
}

// waitPut waits, within testTimeout, until put exits, and fails the test
// unless it exited 0.
func waitPut(t *testing.T, put *process) {
	t.Helper()
	select {
	case <-put.exited:
	case <-time.After(testTimeout):
		t.Fatalf("%s still running after %v", put.id, testTimeout)
	}
	if put.err != nil {
		t.Fatalf("%s: %v after printing committed\n%s", put.id, put.err, put.stderr.String())
	}
}

// barrier commits a small put through every peer of the chain and waits
// until every peer has recorded it. Each peer applies the log in order,
// so every entry before the barrier is then applied on every peer. Puts
// that fail (the group is still electing, a peer still reconnecting) are
// retried, within testTimeout; each attempt goes into h, if not nil.
func (g *group) barrier(ctx context.Context, h *history, c *datastream.Client) uint64 {
	g.t.Helper()
	return g.barrierWith(ctx, h, func(ctx context.Context, h *history, name, primary string) *putRecord {
		return streamPut(ctx, h, c, name, primary, []byte("barrier\n"), nil)
	})
}

// barrierWith is barrier with the puts made by put, which records each in
// h.
func (g *group) barrierWith(ctx context.Context, h *history, put func(ctx context.Context, h *history, name, primary string) *putRecord) uint64 {
	g.t.Helper()
	deadline := time.Now().Add(testTimeout)
	for n := 1; ; n++ {
		pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		hh := h
		if hh == nil {
			hh = new(history)
		}
		rec := put(pctx, hh, fmt.Sprintf("barrier/%d-%d", time.Now().UnixNano(), n), g.ids[n%len(g.ids)])
		cancel()
		if rec.Outcome == outCommitted {
			for _, id := range g.ids {
				for !g.hasRecord(id, rec.Index) {
					if time.Now().After(deadline) {
						g.t.Fatalf("%s has not recorded the barrier at index %d within %v", id, rec.Index, testTimeout)
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
			return rec.Index
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("no barrier put committed within %v; last: %v", testTimeout, rec)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// newClient returns a client of the group, closed at the test's end.
func (g *group) newClient() *datastream.Client {
	g.t.Helper()
	cfg, err := loadGroup(g.config)
	if err != nil {
		g.t.Fatal(err)
	}
	c, err := datastream.NewClient(streamPeers(cfg.Peers), datastream.WithReplyTimeout(5*time.Second), datastream.WithDialTimeout(2*time.Second))
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { c.Close() })
	return c
}

// randomBytes returns n bytes from seed.
func randomBytes(seed uint64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

// writeFile writes data to a new file in dir and returns its path.
func writeFile(t *testing.T, dir, base string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, base)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// others returns the ids other than id.
func (g *group) others(id string) []string {
	return slices.DeleteFunc(slices.Clone(g.ids), func(x string) bool { return x == id })
}

// checkOrFail runs the checker on the names and fails the test with each
// violation and what the stores hold.
func (g *group) checkOrFail(h *history, names []string) {
	g.t.Helper()
	stores := g.stores()
	if v := h.check(stores, names); len(v) > 0 {
		g.t.Errorf("%d violations:\n  %s\nputs:\n  %s\nstores:\n%s", len(v), strings.Join(v, "\n  "), strings.Join(h.lines(), "\n  "), describe(stores))
	}
}

// lines describes every put.
func (h *history) lines() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, p := range h.puts {
		out = append(out, p.String())
	}
	return out
}

// killAfterCommit puts data as name through the leader and SIGKILLs the
// victims the moment put prints committed. It returns the put's record and
// whether some victim had not yet recorded the entry when it died, that is
// whether the kill hit the window between commit and apply.
func (g *group) killAfterCommit(dir, name string, data []byte, victims []string) (*putRecord, bool) {
	t := g.t
	t.Helper()
	put := g.startPut(writeFile(t, dir, filepath.Base(name), data), name, g.leader)
	index, term := awaitCommitted(t, put)
	for _, id := range victims {
		_ = g.proc(id).cmd.Process.Kill()
	}
	for _, id := range victims {
		g.kill(id) // waits until it is gone
	}
	waitPut(t, put)
	rec := &putRecord{Name: name, Size: len(data), SHA256: sha256.Sum256(data), Primary: g.leader, Outcome: outCommitted, Index: index, Term: term}
	hit := false
	for _, id := range victims {
		if !g.hasRecord(id, index) {
			hit = true
		}
	}
	return rec, hit
}

// restartAll restarts the given peers and waits until each is ready.
func (g *group) restartAll(ids ...string) {
	g.t.Helper()
	for _, id := range ids {
		if err := g.restart(id); err != nil {
			g.t.Fatal(err)
		}
	}
	for _, id := range ids {
		if err := g.waitReady(id); err != nil {
			g.t.Fatal(err)
		}
	}
}

// The primary is the leader and has applied the entry when put prints
// committed; both followers, which acknowledged CLOSE, are SIGKILLed at
// that moment, before they apply it. Restarted, they must link the copy
// they acknowledged: the file is byte-equal on all three peers.
func TestLossFollowersKilledAfterCommit(t *testing.T) {
	if testing.Short() {
		t.Skip("runs and kills three processes")
	}
	g := startGroup(t)
	followers := g.others(g.leader)
	h := new(history)
	c := g.newClient()
	var rec *putRecord
	for attempt := 1; ; attempt++ {
		name := fmt.Sprintf("loss/after-commit-%d.bin", attempt)
		r, hit := g.killAfterCommit(t.TempDir(), name, randomBytes(uint64(attempt), 3<<20+777), followers)
		h.add(r)
		g.restartAll(followers...)
		if hit {
			rec = r
			break
		}
		// Both had applied the entry already: this round proves nothing.
		t.Logf("attempt %d: the followers had applied index %d before the kill", attempt, r.Index)
		if attempt == 5 {
			t.Fatal("in 5 attempts the followers always applied the entry before SIGKILL reached them")
		}
	}
	g.barrier(context.Background(), nil, c)
	want := hex.EncodeToString(rec.SHA256[:])
	for _, s := range g.stores() {
		r, ok := s.newest[rec.Name]
		switch {
		case !ok:
			t.Errorf("%s: acknowledged %s (index %d) and holds no record of it: its copy was dropped on restart", s.id, rec.Name, rec.Index)
		case r.Index != rec.Index || r.Missing || r.SHA256 != want || s.dataSum[rec.Name] != want:
			t.Errorf("%s: acknowledged %s (index %d, sha256 %.12s) and holds index %d missing=%v sha256 %.12s data %.12s",
				s.id, rec.Name, rec.Index, want, r.Index, r.Missing, r.SHA256, s.dataSum[rec.Name])
		}
	}
	g.checkOrFail(h, []string{rec.Name})
}

// A name is put twice. A follower is SIGKILLed after v2 commits and before
// it applies v2, and its copy of v2 is destroyed while it is down. After
// the restart it must not serve v1 under the name: its newest record is
// v2's, missing (or holding v2's bytes), and get does not give v1's bytes.
func TestLossStaleVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("runs and kills three processes")
	}
	g := startGroup(t)
	victim := g.others(g.leader)[0]
	h := new(history)
	c := g.newClient()
	dir := t.TempDir()
	var v1, v2 *putRecord
	var data1 []byte
	for attempt := 1; ; attempt++ {
		name := fmt.Sprintf("loss/versioned-%d.bin", attempt)
		data1 = randomBytes(uint64(100+attempt), 1<<20+3)
		put := g.startPut(writeFile(t, dir, "v1", data1), name, g.leader)
		index, term := awaitCommitted(t, put)
		waitPut(t, put)
		v1 = &putRecord{Name: name, Size: len(data1), SHA256: sha256.Sum256(data1), Primary: g.leader, Outcome: outCommitted, Index: index, Term: term}
		h.add(v1)
		// v1 is linked everywhere before v2 starts.
		g.barrier(context.Background(), nil, c)

		r, hit := g.killAfterCommit(dir, name, randomBytes(uint64(200+attempt), 2<<20+5), []string{victim})
		v2 = r
		h.add(v2)
		if hit {
			break
		}
		t.Logf("attempt %d: %s had applied index %d before the kill", attempt, victim, r.Index)
		g.restartAll(victim)
		if attempt == 5 {
			t.Fatalf("in 5 attempts %s always applied v2 before SIGKILL reached it", victim)
		}
	}
	// The victim's copy of v2 is lost while it is down.
	tmp := filepath.Join(g.files(victim), "tmp")
	ents, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(tmp, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("removed %d files from %s's tmp", len(ents), victim)
	g.restartAll(victim)
	g.barrier(context.Background(), nil, c)

	s, err := readPeerStore(victim, g.files(victim))
	if err != nil {
		t.Fatal(err)
	}
	want2 := hex.EncodeToString(v2.SHA256[:])
	switch r, ok := s.newest[v2.Name]; {
	case !ok:
		t.Errorf("%s: no record of %s at all", victim, v2.Name)
	case r.Index == v1.Index:
		t.Errorf("%s: serves v1 (index %d) under %s, committed as v2 at index %d", victim, v1.Index, v2.Name, v2.Index)
	case r.Index != v2.Index:
		t.Errorf("%s: newest record of %s is index %d, v2 is %d", victim, v2.Name, r.Index, v2.Index)
	case !r.Missing && (r.SHA256 != want2 || s.dataSum[v2.Name] != want2):
		t.Errorf("%s: %s at index %d is not missing and holds sha256 %.12s (data %.12s), not v2's %.12s", victim, v2.Name, r.Index, r.SHA256, s.dataSum[v2.Name], want2)
	}
	// What a reader gets, over the network from the victim or from its
	// directory: an error, or v2's bytes; never v1's.
	for _, how := range [][]string{{"--id", victim}, {"--id", victim, "--local"}} {
		var stdout, stderr bytes.Buffer
		get := exec.Command(g.bin, append([]string{"get", v2.Name, "--config", g.config}, how...)...)
		get.Stdout, get.Stderr = &stdout, &stderr
		if err := get.Run(); err == nil && bytes.Equal(stdout.Bytes(), data1) {
			t.Errorf("%s: get %s %v gives v1's bytes (index %d); v2 committed at index %d", victim, v2.Name, how, v1.Index, v2.Index)
		}
	}
	g.checkOrFail(h, []string{v2.Name})
}

// The primary, a follower, is SIGKILLed a few milliseconds after the
// client sends CLOSE: before, during or just after the commit it forwards
// to the leader. The put is indeterminate; whatever became of the entry,
// the group agrees on it once the primary is back, and a peer that
// acknowledged it links it or records it missing.
func TestLossPrimaryKilledAtClose(t *testing.T) {
	if testing.Short() {
		t.Skip("runs and kills three processes")
	}
	g := startGroup(t)
	primary := g.others(g.leader)[0]
	h := new(history)
	c := g.newClient()
	var names []string
	for i := range 6 {
		name := fmt.Sprintf("loss/at-close-%d.bin", i)
		names = append(names, name)
		ev := newPutEvents(0)
		ev.drain = true
		done := make(chan *putRecord, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		go func() { done <- streamPut(ctx, h, c, name, primary, randomBytes(uint64(300+i), 2<<20), ev) }()
		select {
		case <-ev.closeSent:
			// The schedule's delay: 0, 3, 6 ... ms into the commit.
			time.Sleep(time.Duration(3*i) * time.Millisecond)
		case r := <-done:
			done <- r
		}
		g.kill(primary)
		rec := <-done
		cancel()
		t.Logf("%v", rec)
		g.restartAll(primary)
	}
	g.barrier(context.Background(), h, c)
	g.checkOrFail(h, names)
}

// fault is one kill of a schedule.
type fault struct {
	round   int
	victims []string
	point   string // when: before, during, at-close, after-reply (of put #put)
	put     int
	delay   time.Duration // between the kill and the restart
	// wipe: the victim's store (files/) is deleted before its restart, as
	// a replaced disk; its copies come back by repair.
	wipe bool
}

// A schedule of rounds: each starts one or two puts (random sizes up to 8
// MiB, random primaries, names from a small pool so that versions matter)
// and SIGKILLs one, sometimes two, random peers at a random point of a put:
// before it, during it, as CLOSE is sent, or once its reply came; they are
// restarted after a short random delay. At the end the group is healed and
// the checker runs over every name. -crash.rounds, -crash.duration and
// -crash.seed make longer or reproducible runs; the seed is logged.
func TestCrashSchedule(t *testing.T) {
	if testing.Short() {
		t.Skip("runs and kills three processes")
	}
	seed := *crashSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	rounds, until := *crashRounds, time.Time{}
	if *crashDuration > 0 {
		until = time.Now().Add(*crashDuration)
	} else if rounds == 0 {
		rounds = defaultCrashRounds
	}
	t.Logf("seed %d (-crash.seed %d reproduces the schedule)", seed, seed)

	g := startGroup(t)
	h := new(history)
	c := g.newClient()
	names := []string{"crash/a", "crash/b", "crash/c"}
	var faults []fault
	kills := 0
	round := 0
	for ; (rounds == 0 || round < rounds) && (until.IsZero() || time.Now().Before(until)); round++ {
		rng := rand.New(rand.NewPCG(seed, uint64(round)))
		nputs := 1 + rng.IntN(2)
		type job struct {
			name, primary string
			data          []byte
			ev            *putEvents
		}
		jobs := make([]job, nputs)
		for i := range jobs {
			size := rng.IntN(8<<20 + 1)
			if rng.IntN(8) == 0 {
				size = 0
			}
			jobs[i] = job{
				name:    names[rng.IntN(len(names))],
				primary: g.ids[rng.IntN(len(g.ids))],
				data:    randomBytes(seed^uint64(round*16+i+1), size),
			}
			jobs[i].ev = newPutEvents(rng.IntN(size + 1))
		}
		var f *fault
		if rng.IntN(8) != 0 {
			f = &fault{round: round, put: rng.IntN(nputs), delay: time.Duration(rng.IntN(1500)) * time.Millisecond}
			// The points around the commit, where acknowledged copies are
			// at stake, weigh most.
			f.point = []string{"before", "during", "during", "at-close", "at-close", "at-close",
				"after-reply", "after-reply", "after-reply"}[rng.IntN(9)]
			candidates := g.ids
			if rng.IntN(2) == 0 {
				// Spare the primary: its followers are the peers that
				// acknowledged and apply later.
				candidates = g.others(jobs[f.put].primary)
			}
			nv := 1
			if rng.IntN(4) == 0 {
				nv = 2
			}
			for _, i := range rng.Perm(len(candidates))[:nv] {
				f.victims = append(f.victims, candidates[i])
			}
			f.wipe = nv == 1 && rng.IntN(5) == 0
		}

		if f != nil && f.point == "before" {
			for _, id := range f.victims {
				g.kill(id)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var wg sync.WaitGroup
		putDone := make([]chan struct{}, nputs)
		recs := make([]*putRecord, nputs)
		for i, j := range jobs {
			putDone[i] = make(chan struct{})
			wg.Go(func() {
				defer close(putDone[i])
				recs[i] = streamPut(ctx, h, c, j.name, j.primary, j.data, j.ev)
			})
		}
		if f != nil {
			if f.point != "before" {
				var at <-chan struct{}
				switch ev := jobs[f.put].ev; f.point {
				case "during":
					at = ev.atOffset
				case "at-close":
					at = ev.closeSent
				case "after-reply":
					at = ev.closeReply
				}
				select {
				case <-at:
				case <-putDone[f.put]: // it ended first: kill now
				}
				for _, id := range f.victims {
					g.kill(id)
				}
			}
			kills += len(f.victims)
			faults = append(faults, *f)
			// The delay is the schedule's: how long the peers stay down.
			time.Sleep(f.delay)
			for _, id := range f.victims {
				if f.wipe {
					if err := os.RemoveAll(g.files(id)); err != nil {
						t.Fatal(err)
					}
				}
				if err := g.restart(id); err != nil {
					cancel()
					wg.Wait()
					t.Fatal(err)
				}
			}
		}
		wg.Wait()
		cancel()
		if f != nil {
			for _, id := range f.victims {
				if err := g.waitReady(id); err != nil {
					t.Fatal(err)
				}
			}
			// The next round starts on a whole group: every peer
			// reconnected and caught up.
			g.barrier(context.Background(), h, c)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "round %d:", round)
		if f != nil {
			fmt.Fprintf(&b, " kill %v %s put %d, %srestart after %v;", f.victims, f.point, f.put, map[bool]string{true: "wipe its store, "}[f.wipe], f.delay)
		}
		for i, r := range recs {
			fmt.Fprintf(&b, "\n\t#%d %v", i, r)
		}
		t.Log(b.String())
	}
	// Heal: every peer is up (each round restarted its victims); a
	// barrier makes every peer apply the whole log.
	for _, id := range g.ids {
		if g.down(id) {
			t.Fatalf("%s is down at the end", id)
		}
	}
	g.barrier(context.Background(), h, c)
	stores, v, missingAtEnd, healed := g.checkHealed(h, fmt.Sprintf("seed %d", seed))
	n := h.counts()
	t.Logf("crash schedule: seed %d, %d rounds, puts %d committed / %d failed / %d indeterminate, %d kills, %d violations; %d copies missing at the end, healed in %v",
		seed, round, n[outCommitted], n[outFailed], n[outIndeterminate], kills, len(v), missingAtEnd, healed.Round(time.Millisecond))
	if len(v) > 0 {
		var fl []string
		for _, f := range faults {
			fl = append(fl, fmt.Sprintf("round %d: kill %v %s put %d, wipe %v, restart after %v", f.round, f.victims, f.point, f.put, f.wipe, f.delay))
		}
		t.Errorf("seed %d: %d violations:\n  %s\nputs:\n  %s\nfaults:\n  %s\nstores:\n%s", seed, len(v),
			strings.Join(v, "\n  "), strings.Join(h.lines(), "\n  "), strings.Join(fl, "\n  "), describe(stores))
	}
}

// checkHealed runs the checker over every name once a barrier has made
// every peer apply the whole log, then waits, up to healTimeout, until the
// group has repaired every copy a peer reported missing, failing the test
// (its messages begun with label) if some are left. It returns the stores
// as last read, the violations (of the first check, or else of the check
// after the repairs), how many copies were missing at first and how long
// the repairs took.
func (g *group) checkHealed(h *history, label string) (stores []*peerStore, v []string, missingAtEnd int, healed time.Duration) {
	g.t.Helper()
	stores = g.stores()
	v = h.check(stores, nil)
	healStart := time.Now()
	left := missingCopies(stores)
	missingAtEnd = len(left)
	for len(left) > 0 && time.Since(healStart) < healTimeout {
		time.Sleep(100 * time.Millisecond)
		stores = g.stores()
		left = missingCopies(stores)
	}
	healed = time.Since(healStart)
	if len(left) > 0 {
		g.t.Errorf("%s: copies still missing %v after the faults ended: %s", label, healTimeout, strings.Join(left, ", "))
	}
	if len(v) == 0 {
		v = h.check(stores, nil)
	}
	return stores, v, missingAtEnd, healed
}
