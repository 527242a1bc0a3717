package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// memberEntry is a group file's [[peers]] entry of id on three addresses.
func memberEntry(id string, addrs []string) string {
	return fmt.Sprintf("\n[[peers]]\nid = %q\nstream_addr = %q\nraft_addr = %q\ncommit_addr = %q\n", id, addrs[0], addrs[1], addrs[2])
}

// addEntry appends id's entry to the group file.
func (g *group) addEntry(id string) {
	g.t.Helper()
	f, err := os.OpenFile(g.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		g.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(memberEntry(id, freeAddrs(g.t, 3))); err != nil {
		g.t.Fatal(err)
	}
}

// dropEntry removes id's entry from the group file.
func (g *group) dropEntry(id string) {
	g.t.Helper()
	b, err := os.ReadFile(g.config)
	if err != nil {
		g.t.Fatal(err)
	}
	re := regexp.MustCompile(`\n\[\[peers\]\]\nid = "` + regexp.QuoteMeta(id) + `"\n(?:[a-z_]+ = [^\n]*\n)*`)
	out := re.ReplaceAll(b, nil)
	if bytes.Equal(out, b) {
		g.t.Fatalf("no entry of %s in %s", id, g.config)
	}
	if err := os.WriteFile(g.config, out, 0o644); err != nil {
		g.t.Fatal(err)
	}
}

// launchJoiner starts serve --join for id, whose entry the group file has,
// and waits until it says it waits to join.
func (g *group) launchJoiner(id string) *process {
	g.t.Helper()
	p := startPeerArgs(g.t, g.bin, g.config, id, []string{"--join"})
	if _, err := p.stdout.waitFor(id+" waiting to join", testTimeout); err != nil {
		g.t.Fatalf("%s: %v\n--- stderr\n%s", id, err, p.stderr.String())
	}
	g.mu.Lock()
	g.procs[id] = p
	g.mu.Unlock()
	return p
}

// cli runs the binary and returns its stdout, stderr and exit code.
func (g *group) cli(args ...string) (stdout, stderr string, code int) {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var o, e bytes.Buffer
	cmd := exec.CommandContext(ctx, g.bin, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if err != nil && cmd.ProcessState == nil {
		g.t.Fatalf("pipestream %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// mustCLI is cli that fails the test unless the command exits 0.
func (g *group) mustCLI(args ...string) string {
	g.t.Helper()
	return g.mustExit0(args, g.cli)
}

// mustCLICaughtUp is cliCaughtUp that fails the test unless the command
// exits 0.
func (g *group) mustCLICaughtUp(args ...string) string {
	g.t.Helper()
	return g.mustExit0(args, g.cliCaughtUp)
}

func (g *group) mustExit0(args []string, run func(...string) (string, string, int)) string {
	g.t.Helper()
	out, errOut, code := run(args...)
	if code != 0 {
		g.t.Fatalf("pipestream %s: exit %d\n--- stdout\n%s--- stderr\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// cliCaughtUp is cli for a read (ls, get) from one peer, run again while
// the peer refuses it as not caught up with its group (whileNotCaughtUp).
func (g *group) cliCaughtUp(args ...string) (stdout, stderr string, code int) {
	g.t.Helper()
	if !whileNotCaughtUp(func() string {
		stdout, stderr, code = g.cli(args...)
		if code == exitOK {
			return ""
		}
		return stderr
	}) {
		g.t.Fatalf("pipestream %s: still not caught up after %v\n--- stderr\n%s", strings.Join(args, " "), testTimeout, stderr)
	}
	return stdout, stderr, code
}

// whileNotCaughtUp calls read again, within testTimeout, while what it
// returns (its error, "" for none) says the peer refused the read as not
// caught up with its group, which a peer does after it has lost touch with
// its leader or seen a new one elected, until it has asked the leader
// (docs/protocol.md). It reports false if the refusal outlasted the
// deadline.
func whileNotCaughtUp(read func() (failure string)) bool {
	deadline := time.Now().Add(testTimeout)
	for strings.Contains(read(), "NOT_CAUGHT_UP") {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// putAll puts each name's data through primary with a client of the
// group file's members, into h, and fails the test unless each commits.
func (g *group) putAll(h *history, primary string, files map[string][]byte) {
	g.t.Helper()
	c := g.newClient()
	for _, name := range slices.Sorted(mapKeys(files)) {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		rec := streamPut(ctx, h, c, name, primary, files[name], nil)
		cancel()
		if rec.Outcome != outCommitted {
			g.t.Fatalf("%v", rec)
		}
	}
}

func mapKeys(m map[string][]byte) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// healed waits, within healTimeout, until no peer reports a copy missing,
// and runs the checker on names.
func (g *group) healed(h *history, names []string) {
	g.t.Helper()
	deadline := time.Now().Add(healTimeout)
	for {
		left := missingCopies(g.stores())
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("copies still missing after %v: %s", healTimeout, strings.Join(left, ", "))
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.checkOrFail(h, names)
}

// holdsBytes checks with get that peer id serves name with exactly data.
func (g *group) holdsBytes(id, name string, data []byte) {
	g.t.Helper()
	// Listed with status ok: linked or repaired, not missing.
	ok := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` +\d+ +\d+ +\d+ +ok `)
	deadline := time.Now().Add(healTimeout)
	for !ok.MatchString(g.mustCLICaughtUp("ls", "--config", g.config, "--id", id)) {
		if time.Now().After(deadline) {
			g.t.Fatalf("%s does not hold %s within %v", id, name, healTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := filepath.Join(g.t.TempDir(), "out")
	g.mustCLICaughtUp("get", name, "--config", g.config, "--id", id, "-o", out)
	got, err := os.ReadFile(out)
	if err != nil {
		g.t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		g.t.Errorf("%s: %s holds %d bytes that differ from the %d put", id, name, len(got), len(data))
	}
}

// The membership commands on real serve processes: a fourth peer joins and
// catches up; leadership moves to it; a follower lost with its disk is
// replaced by a new peer with an empty disk, which ends up holding
// everything (the checker agrees); a live peer leaves and its process
// stops; and after every process restarts, one of them on the group file
// it was first started with, every peer knows the group as it is now.
func TestMembershipProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("runs and kills serve processes")
	}
	g := startGroup(t)
	first := filepath.Join(g.dir, "first.toml") // the file as the group started
	if b, err := os.ReadFile(g.config); err != nil || os.WriteFile(first, b, 0o644) != nil {
		t.Fatal("copy the group file", err)
	}
	h := new(history)
	files := map[string][]byte{"m/a": randomBytes(1, 3<<20+5), "m/b": randomBytes(2, 700<<10)}
	g.putAll(h, g.leader, files)

	// Join: p4 waits, join adds it, it catches up byte for byte.
	g.addEntry("p4")
	p4 := g.launchJoiner("p4")
	out := g.mustCLI("join", "--config", g.config, "--id", "p4")
	if !strings.HasPrefix(out, "p4 joined the group\n") || !regexp.MustCompile(`(?m)^  p4 +voter +stream `).MatchString(out) {
		t.Errorf("join printed:\n%s", out)
	}
	if err := p4.waitReady(); err != nil {
		t.Fatal(err)
	}
	g.ids = append(g.ids, "p4")
	for name, data := range files {
		g.holdsBytes("p4", name, data)
	}
	if _, errOut, code := g.cli("join", "--config", g.config, "--id", "p4", "--stream", "127.0.0.1:1"); code != 1 || !strings.Contains(errOut, "member exists") {
		t.Errorf("join of p4 with another address: exit %d, %s", code, errOut)
	}

	// Transfer: to p4, named; then to any other voter.
	if out := g.mustCLI("transfer-leader", "--config", g.config, "--to", "p4"); !strings.HasPrefix(out, "leader p4\n") {
		t.Errorf("transfer-leader --to p4 printed:\n%s", out)
	}
	if out := g.mustCLI("status", "--config", g.config); !strings.HasPrefix(out, "leader p4, ") ||
		!strings.Contains(out, "members p1(voter) p2(voter) p3(voter) p4(voter)") {
		t.Errorf("status after the transfer:\n%s", out)
	}
	out = g.mustCLI("transfer-leader", "--config", g.config)
	if m := regexp.MustCompile(`^leader (p\d)\n`).FindStringSubmatch(out); m == nil || m[1] == "p4" {
		t.Errorf("transfer-leader to any printed:\n%s", out)
	} else {
		g.leader = m[1]
	}

	// Replace: a follower is lost with its disk; it leaves, p5 joins with
	// an empty disk and ends up holding everything.
	lost := g.others(g.leader)[0]
	if lost == "p4" {
		lost = g.others(g.leader)[1]
	}
	g.kill(lost)
	if err := os.RemoveAll(filepath.Join(g.dir, "data", lost)); err != nil {
		t.Fatal(err)
	}
	if out := g.mustCLI("leave", "--config", g.config, "--id", lost); !strings.HasPrefix(out, lost+" left the group\n") {
		t.Errorf("leave printed:\n%s", out)
	}
	g.dropEntry(lost)
	g.ids = slices.DeleteFunc(g.ids, func(id string) bool { return id == lost })
	more := map[string][]byte{"m/c": randomBytes(3, 2<<20+1)} // while the group has three members
	g.putAll(h, g.leader, more)
	g.addEntry("p5")
	p5 := g.launchJoiner("p5")
	g.mustCLI("join", "--config", g.config, "--id", "p5")
	if err := p5.waitReady(); err != nil {
		t.Fatal(err)
	}
	g.ids = append(g.ids, "p5")
	g.barrier(context.Background(), h, g.newClient())
	names := []string{"m/a", "m/b", "m/c"}
	g.healed(h, names)
	if _, errOut, code := g.cli("join", "--config", g.config, "--id", lost, "--stream", "127.0.0.1:2", "--raft", "127.0.0.1:3", "--commit", "127.0.0.1:4"); code != 1 || !strings.Contains(errOut, "id removed") {
		t.Errorf("join reusing %s: exit %d, %s", lost, code, errOut)
	}

	// Leave of a live follower: its serve process says so and exits 0.
	leaver := slices.DeleteFunc(g.others(g.leader), func(id string) bool { return id == "p5" })[0]
	lp := g.proc(leaver)
	g.mustCLI("leave", "--config", g.config, "--id", leaver)
	if _, err := lp.stdout.waitFor(leaver+" removed from the group", testTimeout); err != nil {
		t.Fatal(err)
	}
	lp.wait(t)
	g.dropEntry(leaver)
	g.ids = slices.DeleteFunc(g.ids, func(id string) bool { return id == leaver })
	if _, errOut, code := g.cli("leave", "--config", g.config, "--id", leaver); code != 1 || !strings.Contains(errOut, "unknown member") {
		t.Errorf("second leave of %s: exit %d, %s", leaver, code, errOut)
	}

	// Restart everyone; an original member reads the group file it was
	// first started with, which names neither p4 nor p5.
	for _, id := range g.ids {
		g.proc(id).interrupt(t)
	}
	for _, id := range g.ids {
		g.proc(id).wait(t)
	}
	for _, id := range g.ids {
		config := g.config
		if id != "p4" && id != "p5" {
			config = first
		}
		p := startPeer(t, g.bin, config, id)
		g.mu.Lock()
		g.procs[id] = p
		g.mu.Unlock()
	}
	for _, id := range g.ids {
		if err := g.proc(id).waitReady(); err != nil {
			t.Fatal(err)
		}
	}
	want := "members " + strings.Join(slices.Collect(func(yield func(string) bool) {
		for _, id := range slices.Sorted(slices.Values(g.ids)) {
			yield(id + "(voter)")
		}
	}), " ")
	out = g.mustCLI("status", "--config", first)
	if !strings.Contains(out, want) || !strings.Contains(out, "group healthy") {
		t.Errorf("status from the first group file, want %q:\n%s", want, out)
	}
	last := map[string][]byte{"m/d": randomBytes(4, 1<<20)}
	g.putAll(h, "p5", last)
	g.barrier(context.Background(), h, g.newClient())
	g.healed(h, append(names, "m/d"))
	for name, data := range last {
		for _, id := range g.ids {
			g.holdsBytes(id, name, data)
		}
	}
}
