package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/peer"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// status against three serve processes: healthy after a put, with every
// peer at the put's index; unhealthy, naming the peer, once one stops.
func TestStatusProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs three processes")
	}
	g := startGroup(t)
	file := writeFile(t, g.dir, "payload.bin", randomBytes(1, 100<<10))
	out := runBinary(t, g.bin, "put", file, "--config", g.config, "--name", "status.bin", "--primary", "p2")
	m := putLine.FindStringSubmatch(strings.TrimSpace(out))
	if m == nil {
		t.Fatalf("put printed %q", out)
	}
	index := m[2]
	for _, id := range g.ids {
		waitStored(t, g.bin, g.config, id, "status.bin")
	}

	code, stdout, stderr := runStatusBinary(t, g.bin, "--config", g.config)
	if code != exitOK {
		t.Fatalf("status exited %d on a healthy group\n--- stdout\n%s--- stderr\n%s", code, stdout, stderr)
	}
	lm := regexp.MustCompile(`(?m)^leader (p[123]), term [1-9]\d*, commit index (\d+)$`).FindStringSubmatch(stdout)
	if lm == nil {
		t.Fatalf("status names no leader:\n%s", stdout)
	}
	leader := lm[1]
	for _, id := range g.ids {
		role := "Follower"
		if id == leader {
			role = "Leader"
		}
		want := `(?m)^` + id + `  ` + role + ` +applied \d+ \(state machine ` + index + `\), commit ` + lm[2] +
			`; streams: 0 open, 0 awaiting commit; missing copies 0, repairs 0 running, 0 waiting; data dir \d+(\.\d)? [KM]iB$`
		if !regexp.MustCompile(want).MatchString(stdout) {
			t.Errorf("status lacks a line matching %q:\n%s", want, stdout)
		}
	}
	if !strings.HasSuffix(stdout, "\ngroup healthy\n") {
		t.Errorf("status does not end with its verdict:\n%s", stdout)
	}

	victim := "p1"
	if leader == victim {
		victim = "p3"
	}
	g.proc(victim).interrupt(t)
	g.proc(victim).wait(t)
	code, stdout, stderr = runStatusBinary(t, g.bin, "--config", g.config)
	if code != exitFailed {
		t.Fatalf("status exited %d with %s stopped, want %d\n--- stdout\n%s--- stderr\n%s", code, victim, exitFailed, stdout, stderr)
	}
	if !regexp.MustCompile(`(?m)^`+victim+`  unreachable: raft: status 127\.0\.0\.1:\d+: .*connection refused$`).MatchString(stdout) ||
		!strings.HasSuffix(stdout, "\ngroup unhealthy: "+victim+" unreachable\n") ||
		!strings.Contains(stdout, "leader "+leader+", ") {
		t.Errorf("status with %s stopped printed:\n%s", victim, stdout)
	}
	if want := "pipestream status: group unhealthy: " + victim + " unreachable\n"; stderr != want {
		t.Errorf("stderr %q, want %q", stderr, want)
	}
}

// runStatusBinary runs "pipestream status" with args and returns its exit
// code and output.
func runStatusBinary(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, append([]string{"status"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), stdout.String(), stderr.String()
	}
	t.Fatalf("pipestream status: %v", err)
	return 0, "", ""
}

// status's bad flags are usage errors, and a group nobody serves is
// unhealthy, every peer named.
func TestStatusErrors(t *testing.T) {
	config := filepath.Join(t.TempDir(), "group.toml")
	if err := os.WriteFile(config, []byte(testGroupFile(freeAddrs(t, 9))), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"without config", nil, exitUsage, "--config FILE is required"},
		{"argument", []string{"--config", config, "extra"}, exitUsage, `unexpected argument "extra"`},
		{"zero timeout", []string{"--config", config, "--timeout", "0s"}, exitUsage, "--timeout must be positive"},
		{"missing config", []string{"--config", config + ".missing"}, exitFailed, "peer: invalid configuration"},
		{"nobody serves", []string{"--config", config, "--settle", "0s"}, exitFailed,
			"group unhealthy: no leader; p1 unreachable; p2 unreachable; p3 unreachable\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCmd(t, append([]string{"status"}, tt.args...)...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("want exit %d and %q on stderr, got:\n%v", tt.code, tt.stderr, r)
			}
		})
	}
}

// report's verdict on answers a group could give: each problem is named,
// and a peer behind by no more than --max-lag is not one.
func TestStatusReport(t *testing.T) {
	members := []peer.Member{{ID: "p1"}, {ID: "p2"}, {ID: "p3"}}
	ps := func(id, state string, term, applied uint64, missing *uint64) peerAnswer {
		return peerAnswer{st: &pb.PeerStatus{ServerId: id, State: state, Term: term, LeaderId: "p1",
			CommitIndex: applied, AppliedIndex: applied, MissingCopies: missing}}
	}
	none, two := proto.Uint64(0), proto.Uint64(2)
	tests := []struct {
		name    string
		answers []peerAnswer
		maxLag  uint64
		want    string // the verdict line
	}{
		{"healthy", []peerAnswer{ps("p1", "Leader", 3, 9, none), ps("p2", "Follower", 3, 9, none), ps("p3", "Follower", 3, 9, nil)}, 0,
			"group healthy"},
		{"missing copies", []peerAnswer{ps("p1", "Leader", 3, 9, none), ps("p2", "Follower", 3, 9, two), ps("p3", "Follower", 3, 9, none)}, 0,
			"group unhealthy: p2 misses 2 copies"},
		{"lagging", []peerAnswer{ps("p1", "Leader", 3, 9, none), ps("p2", "Follower", 3, 9, none), ps("p3", "Follower", 3, 5, none)}, 3,
			"group unhealthy: p3 applied 5 of 9"},
		{"within max lag", []peerAnswer{ps("p1", "Leader", 3, 9, none), ps("p2", "Follower", 3, 9, none), ps("p3", "Follower", 3, 6, none)}, 3,
			"group healthy"},
		{"deposed leader", []peerAnswer{ps("p1", "Leader", 2, 7, none), ps("p2", "Leader", 3, 9, none), ps("p3", "Follower", 3, 9, none)}, 0,
			"group unhealthy: p1 applied 7 of 9"},
		{"no leader", []peerAnswer{ps("p1", "Candidate", 4, 9, none), {err: errors.New("refused")}, ps("p3", "Follower", 3, 9, none)}, 0,
			"group unhealthy: no leader; p2 unreachable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &status{members: members, maxLag: tt.maxLag}
			var out bytes.Buffer
			err := s.report(&out, tt.answers, s.leader(tt.answers))
			if (err == nil) != (tt.want == "group healthy") || err != nil && !errors.Is(err, errUnhealthy) ||
				!strings.HasSuffix(out.String(), "\n"+tt.want+"\n") {
				t.Errorf("report: %v, printed:\n%s\nwant the verdict %q", err, out.String(), tt.want)
			}
		})
	}
}

// fakePeer answers peer status requests at a commit address of its own
// with the applied index next returns, and the commit index 9.
func fakePeer(t *testing.T, id string, state string, next func() uint64) peer.Member {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var hdr [5]byte // the length, then the request's kind
			if _, err := io.ReadFull(c, hdr[:]); err == nil {
				body, _ := proto.Marshal(&pb.RaftClientReply{ServerId: id, Success: true, PeerStatus: &pb.PeerStatus{
					ServerId: id, State: state, Term: 1, LeaderId: "p1", CommitIndex: 9, AppliedIndex: next(),
					MissingCopies: proto.Uint64(0)}})
				_, _ = c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...))
			}
			c.Close()
		}
	})
	return peer.Member{ID: id, CommitAddr: ln.Addr().String()}
}

// A lagging peer is asked again while status settles: one that catches up
// within --settle is healthy, one that does not is named.
func TestStatusSettle(t *testing.T) {
	var asked atomic.Int64
	catchesUp := func() uint64 {
		if asked.Add(1) < 3 {
			return 4
		}
		return 9
	}
	stuck := func() uint64 { return 4 }
	nine := func() uint64 { return 9 }
	for _, tt := range []struct {
		name string
		p2   func() uint64
		want string
	}{
		{"catches up", catchesUp, "group healthy"},
		{"stuck", stuck, "group unhealthy: p2 applied 4 of 9"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := &status{timeout: testTimeout, settle: 500 * time.Millisecond,
				members: []peer.Member{fakePeer(t, "p1", "Leader", nine), fakePeer(t, "p2", "Follower", tt.p2)}}
			var out bytes.Buffer
			start := time.Now()
			err := s.run(t.Context(), &out)
			if !strings.HasSuffix(out.String(), "\n"+tt.want+"\n") || (err == nil) != (tt.want == "group healthy") {
				t.Errorf("run: %v, printed:\n%s\nwant the verdict %q", err, out.String(), tt.want)
			}
			if took := time.Since(start); err != nil && took < s.settle-statusPoll {
				t.Errorf("gave up on the lagging peer after %v, before --settle %v", took, s.settle)
			}
		})
	}
	if n := asked.Load(); n < 3 {
		t.Errorf("the peer that caught up was asked %d times, want at least 3", n)
	}
}
