package main

// The harness of the process tests that kill and restart peers: a group of
// three serve processes, puts through it, barriers that make every peer
// apply the log.

import (
	"context"
	"encoding/binary"
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

	serveFlags []string // added to every serve command
	// ups, if not nil, records when each peer was down: from its kill
	// until the others and it have reconnected after its restart (see
	// availability_test.go).
	ups *upLog
}

var putLine = regexp.MustCompile(`^committed (\S+): .*, log index (\d+), term (\d+), primary (\S+)$`)

func startGroup(t *testing.T) *group { return startGroupArgs(t, "", nil) }

// startGroupWith is startGroup with raftSettings (TOML lines) added to the
// group file's [raft] table.
func startGroupWith(t *testing.T, raftSettings string) *group {
	t.Helper()
	return startGroupArgs(t, raftSettings, nil)
}

// startGroupArgs is startGroupWith with serveFlags added to every serve
// command, restarts included.
func startGroupArgs(t *testing.T, raftSettings string, serveFlags []string) *group {
	t.Helper()
	g := &group{t: t, bin: buildBinary(t), dir: t.TempDir(), ids: []string{"p1", "p2", "p3"}, procs: map[string]*process{}, serveFlags: serveFlags}
	g.config = filepath.Join(g.dir, "group.toml")
	var peers []*process
	onFreePorts(t, 9, func(addrs []string) error {
		file := strings.Replace(crashGroupFile(addrs), "[raft]\n", "[raft]\n"+raftSettings, 1)
		if err := os.WriteFile(g.config, []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
		var err error
		peers, err = startPeers(t, g.bin, g.config, serveFlags...)
		return err
	})
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
	g.ups.markDown(id, time.Now())
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
		since := g.ups.restarting(g, id)
		p := g.startPeer(id, env...)
		_, err := p.stdout.waitFor(id+" serving: ", testTimeout)
		if err == nil {
			go since.watch(p)
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
		return startPeerArgs(g.t, g.bin, g.config, id, g.serveFlags, env...)
	}
	return startProcess(g.t, id, g.lab.Host(id).Command(g.bin, serveArgs(g.config, id, g.serveFlags)...), env...)
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
	c, err := datastream.NewClient(cfg.Peers, datastream.WithReplyTimeout(5*time.Second), datastream.WithDialTimeout(2*time.Second))
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

// testSeed returns seed, the value of the flag named flagName, or without
// it (0) a seed from the clock, and logs it with how to run the test with
// it again.
func testSeed(t *testing.T, seed uint64, flagName string) uint64 {
	t.Helper()
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (-%s %d reproduces the run)", seed, flagName, seed)
	return seed
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
