package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stopTimeout bounds how long a peer may take to exit after SIGINT.
const stopTimeout = 30 * time.Second

// The README's three-process flow, with the real binary: three serve
// processes from one group file, a put, and a get from each peer over the
// network (--id) that gives back the same bytes; SIGINT stops each
// cleanly.
func TestThreeProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs three processes")
	}
	bin, dir, config, peers := startServeGroup(t)

	data := randomBytes(7, 3<<20+12345)
	file := writeFile(t, dir, "payload.bin", data)
	put := runBinary(t, bin, "put", file, "--config", config, "--name", "in/payload.bin", "--primary", "p2")
	if !regexp.MustCompile(`(?m)^committed in/payload\.bin: 3 MiB in .*, log index \d+, term \d+, primary p2$`).MatchString(put) {
		t.Errorf("put printed:\n%s", put)
	}
	for _, id := range []string{"p1", "p2", "p3"} {
		// The primary answered once it had applied the entry; the others
		// apply it a moment later.
		waitStored(t, bin, config, id, "in/payload.bin")
		out := filepath.Join(t.TempDir(), "out")
		runBinary(t, bin, "get", "in/payload.bin", "--config", config, "--id", id, "-o", out)
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("%s: get gave %d bytes that differ from the %d put", id, len(got), len(data))
		}
		if ls := runBinary(t, bin, "ls", "--config", config, "--id", id); !strings.Contains(ls, fmt.Sprintf("in/payload.bin  %d ", len(data))) {
			t.Errorf("%s: ls printed:\n%s", id, ls)
		}
	}

	for _, p := range peers {
		p.interrupt(t)
	}
	for _, p := range peers {
		p.wait(t)
	}
}

// buildBinary builds the command into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil && os.Getenv("GOROOT") != "" {
		goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "pipestream")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// testGroupFile returns a group file of three peers on the given nine
// addresses, with data next to it.
func testGroupFile(addrs []string) string {
	var b strings.Builder
	b.WriteString("data_dir = \"data\"\n[raft]\nheartbeat_timeout = \"1s\"\nelection_timeout = \"1s\"\nleader_lease_timeout = \"500ms\"\n")
	for i := range 3 {
		fmt.Fprintf(&b, "\n[[peers]]\nid = \"p%d\"\nstream_addr = %q\nraft_addr = %q\ncommit_addr = %q\n",
			i+1, addrs[3*i], addrs[3*i+1], addrs[3*i+2])
	}
	return b.String()
}

// runBinary runs the binary to completion and returns its stdout, failing
// the test unless it exits 0.
func runBinary(t *testing.T, bin string, args ...string) string {
	t.Helper()
	r := runBinaryResult(t, bin, args...)
	if r.code != 0 {
		t.Fatalf("pipestream %s: %v", strings.Join(args, " "), r)
	}
	return r.stdout
}

// binResult is what one run of the binary did.
type binResult struct {
	code           int
	stdout, stderr string
}

func (r binResult) String() string {
	return fmt.Sprintf("exit %d\n--- stdout\n%s--- stderr\n%s", r.code, r.stdout, r.stderr)
}

// runBinaryResult runs the binary to completion, whatever its exit code.
func runBinaryResult(t *testing.T, bin string, args ...string) binResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := binResult{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		r.code = exit.ExitCode()
	default:
		t.Fatalf("pipestream %s: %v\n%v", strings.Join(args, " "), err, r)
	}
	return r
}

// waitStored polls ls until peer id's store lists name, for up to
// testTimeout.
func waitStored(t *testing.T, bin, config, id, name string) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !strings.Contains(runBinary(t, bin, "ls", "--config", config, "--id", id), "\n"+name+" ") {
		if time.Now().After(deadline) {
			t.Fatalf("%s has not stored %s within %v", id, name, testTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// process is a running "pipestream serve".
type process struct {
	id     string
	cmd    *exec.Cmd
	stdout *lineWriter
	stderr *lineWriter
	exited chan struct{} // closed when Wait returned
	err    error         // Wait's, once exited is closed
}

// onFreePorts calls start with n addresses whose ports were free a moment
// ago, and again with others, up to three times in all, while it fails
// because one has been taken since: a peer that cannot bind exits. Any
// other failure ends the test.
func onFreePorts(t *testing.T, n int, start func(addrs []string) error) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		err := start(freeAddrs(t, n))
		if err == nil {
			return
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("attempt %d: %v; retrying on other ports", attempt, err)
	}
}

// startPeers starts a serve process for each of p1, p2 and p3, with extra
// serve flags, and waits
// until each says it is ready. If one fails, it stops them all and
// returns the failure.
func startPeers(t *testing.T, bin, config string, extra ...string) ([]*process, error) {
	t.Helper()
	var peers []*process
	for _, id := range []string{"p1", "p2", "p3"} {
		peers = append(peers, startPeerArgs(t, bin, config, id, extra))
	}
	for _, p := range peers {
		if err := p.waitReady(); err != nil {
			for _, q := range peers {
				_ = q.cmd.Process.Kill()
				<-q.exited
			}
			return nil, err
		}
	}
	return peers, nil
}

// startPeer starts "pipestream serve" for peer id, without waiting for
// it, with env added to its environment; the test's end kills it if it
// still runs.
func startPeer(t *testing.T, bin, config, id string, env ...string) *process {
	t.Helper()
	return startPeerArgs(t, bin, config, id, nil, env...)
}

// startPeerArgs is startPeer with extra serve flags.
func startPeerArgs(t *testing.T, bin, config, id string, args []string, env ...string) *process {
	t.Helper()
	return startProcess(t, id, exec.Command(bin, serveArgs(config, id, args)...), env...)
}

// serveArgs are the arguments of "pipestream serve" for peer id, with
// extra flags.
func serveArgs(config, id string, extra []string) []string {
	return append([]string{"serve", "--config", config, "--id", id, "--log-level", "warn"}, extra...)
}

// startProcess starts cmd, a serve of peer id, with env added to its
// environment; the test's end kills it if it still runs.
func startProcess(t *testing.T, id string, cmd *exec.Cmd, env ...string) *process {
	t.Helper()
	p := &process{
		id:     id,
		cmd:    cmd,
		stdout: newLineWriter(),
		stderr: newLineWriter(),
		exited: make(chan struct{}),
	}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		p.stdout.close()
		close(p.exited)
	}()
	// A process killed by the test's end is reaped by its goroutine.
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// waitReady waits for the "ready" line; it gives up if the process exits.
func (p *process) waitReady() error {
	if _, err := p.stdout.waitFor(p.id+" ready: ", testTimeout); err != nil {
		return fmt.Errorf("%s: %w\n--- stderr\n%s", p.id, err, p.stderr.String())
	}
	return nil
}

func (p *process) interrupt(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Errorf("%s: %v", p.id, err)
	}
}

// wait checks that the process exits with 0, within stopTimeout of the
// signal, and says it stopped.
func (p *process) wait(t *testing.T) {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		t.Errorf("%s still running %v after SIGINT\n--- stderr\n%s", p.id, stopTimeout, p.stderr.String())
		return
	}
	if p.err != nil {
		t.Errorf("%s: %v after SIGINT\n--- stdout\n%s--- stderr\n%s", p.id, p.err, p.stdout.String(), p.stderr.String())
	}
	if _, err := p.stdout.waitFor(p.id+" stopped", 0); err != nil {
		t.Error(err)
	}
}

// lineWriter collects what a command prints and lets a test wait for a
// line.
type lineWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
	closed  bool          // no more writes will come
}

func newLineWriter() *lineWriter { return &lineWriter{changed: make(chan struct{})} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		close(w.changed)
		w.changed = make(chan struct{})
	}
	return w.buf.Write(p)
}

// close tells waitFor that the writer has written its last.
func (w *lineWriter) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.closed = true
		close(w.changed)
	}
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitFor waits up to timeout for a line containing s and returns it. It
// gives up early once the writer is closed.
func (w *lineWriter) waitFor(s string, timeout time.Duration) (string, error) {
	return w.waitLine(0, fmt.Sprintf("a line with %q", s), func(line string) bool { return strings.Contains(line, s) }, timeout)
}

// size returns how many bytes have been written.
func (w *lineWriter) size() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Len()
}

// waitLine waits up to timeout for a line, among those written from byte
// offset on, that match accepts, and returns it; what names the line for
// the error. It gives up early once the writer is closed.
func (w *lineWriter) waitLine(offset int, what string, match func(string) bool, timeout time.Duration) (string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		text, changed, closed := w.buf.String()[offset:], w.changed, w.closed
		w.mu.Unlock()
		for line := range strings.Lines(text) {
			if match(line) {
				return strings.TrimSuffix(line, "\n"), nil
			}
		}
		if closed {
			return "", fmt.Errorf("no %s before the end of:\n%s", what, text)
		}
		select {
		case <-changed:
		case <-deadline.C:
			return "", fmt.Errorf("no %s within %v in:\n%s", what, timeout, text)
		}
	}
}
