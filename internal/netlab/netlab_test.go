package netlab_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pipestream/pipestream/internal/leaktest"
	"github.com/pipestream/pipestream/internal/netlab"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" && mode != "fail" {
		os.Exit(helperMain(mode))
	}
	leaktest.VerifyTestMain(m)
}

// patience bounds every wait of these tests.
const patience = 10 * time.Second

// A lab of three hosts: each namespace exists with its address from
// 198.18.0.0/15, a host reaches another over the switch (the far end sees
// the dialer's lab address, not loopback), and Close removes every
// namespace.
func TestLabCreateAndTeardown(t *testing.T) {
	lab := netlab.New(t, netlab.Config{Hosts: []string{"a", "b", "c"}})
	seen := map[netip.Addr]bool{}
	for _, h := range lab.Hosts() {
		if !netlab.Network.Contains(h.Addr) || seen[h.Addr] {
			t.Errorf("%s: address %v outside %v or given twice", h.Name, h.Addr, netlab.Network)
		}
		seen[h.Addr] = true
		if !strings.HasPrefix(h.NS, lab.Name()+"-") {
			t.Errorf("%s: namespace %q is not under the lab's name %q", h.Name, h.NS, lab.Name())
		}
	}
	names, err := netlab.Namespaces(lab.Name() + "-")
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 4 { // three hosts and the switch
		t.Fatalf("namespaces %v, want 3 hosts and a switch", names)
	}

	a, b := lab.Host("a"), lab.Host("b")
	ln, err := b.Listen("tcp", "")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	from := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			from <- err.Error()
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
		from <- c.RemoteAddr().(*net.TCPAddr).IP.String()
	}()
	echo(t, a, ln.Addr().String(), "hello")
	if got := <-from; got != a.Addr.String() {
		t.Errorf("b saw the connection come from %s, want a's %s", got, a.Addr)
	}
	// The root namespace has no route into the lab.
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), 200*time.Millisecond); err == nil {
		t.Errorf("the test's own namespace reached %s", ln.Addr())
	}

	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	if names, _ := netlab.Namespaces(lab.Name() + "-"); len(names) != 0 {
		t.Errorf("after Close: %v", names)
	}
}

// echo dials addr from h, writes msg and reads it back.
func echo(t *testing.T, h *netlab.Host, addr, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(patience))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Fatalf("echo gave %q", got)
	}
}

// A program runs in its host: "ip addr" there shows the host's address and
// only that one.
func TestHostCommand(t *testing.T) {
	lab := netlab.New(t, netlab.Config{Hosts: []string{"x", "y"}})
	out, err := lab.Host("y").Command("ip", "-4", "-o", "addr", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !strings.Contains(string(out), lab.Host("y").Addr.String()+"/15") || strings.Contains(string(out), lab.Host("x").Addr.String()+"/") {
		t.Errorf("ip addr in y:\n%s", out)
	}
}

// SetRate puts a token bucket filter of that rate on the host's interface,
// and 0 takes it away. (That it really limits is measured by
// BenchmarkRate, not asserted here.)
func TestSetRate(t *testing.T) {
	lab := netlab.New(t, netlab.Config{Hosts: []string{"a", "b"}, Rate: netlab.Gbit})
	a := lab.Host("a")
	for _, c := range []struct {
		rate netlab.Rate
		want string
	}{{0, "noqueue"}, {200 * netlab.Mbit, "tbf"}, {10 * netlab.Gbit, "tbf"}, {0, "noqueue"}} {
		if c.rate != 0 || a.Rate() != 0 {
			if err := a.SetRate(c.rate); err != nil {
				t.Fatal(err)
			}
		}
		q, err := a.Qdisc()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(q, c.want) || (c.rate != 0 && !strings.Contains(q, "rate "+c.rate.String())) {
			t.Errorf("rate %v: qdisc %q", c.rate, q)
		}
	}
	if q, _ := lab.Host("b").Qdisc(); !strings.Contains(q, "tbf") || !strings.Contains(q, "rate 1Gbit") {
		t.Errorf("Config.Rate 1Gbit: b's qdisc is %q", q)
	}
}

// A cut host neither accepts new connections nor carries an established
// one; healed, the established connection carries on and new ones connect.
func TestCutHeal(t *testing.T) {
	lab := netlab.New(t, netlab.Config{Hosts: []string{"a", "b"}})
	a, b := lab.Host("a"), lab.Host("b")
	ln, err := b.Listen("tcp", "")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
			go func() { _, _ = io.Copy(c, c) }()
		}
	}()
	defer func() {
		ln.Close()
		for c := range accepted {
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	conn, err := a.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	roundTrip := func(msg string, timeout time.Duration) error {
		_ = conn.SetDeadline(time.Now().Add(timeout))
		if _, err := io.WriteString(conn, msg); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(r, got); err != nil {
			return err
		}
		if string(got) != msg {
			return fmt.Errorf("read %q, wrote %q", got, msg)
		}
		return nil
	}
	if err := roundTrip("before", patience); err != nil {
		t.Fatal(err)
	}

	if err := b.Cut(); err != nil {
		t.Fatal(err)
	}
	if !b.IsCut() {
		t.Error("IsCut false after Cut")
	}
	// Silence, not an error: the deadline is what ends the read.
	if err := roundTrip("during", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("round trip to a cut host: %v, want a deadline exceeded", err)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	if c, err := a.DialContext(dctx, "tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Error("dialed a cut host")
	}
	dcancel()

	if err := b.Heal(); err != nil {
		t.Fatal(err)
	}
	// What was written during the cut arrives with TCP's retransmission.
	_ = conn.SetDeadline(time.Now().Add(patience))
	got := make([]byte, len("during"))
	if _, err := io.ReadFull(r, got); err != nil || string(got) != "during" {
		t.Fatalf("after Heal: read %q, %v", got, err)
	}
	if err := roundTrip("after", patience); err != nil {
		t.Fatal(err)
	}
	echo(t, a, ln.Addr().String(), "new connection")
}

// Hosts are checked before anything is made.
func TestBadConfig(t *testing.T) {
	if err := netlab.Check(); err != nil {
		t.Skip(err)
	}
	for _, hosts := range [][]string{nil, {"UPPER"}, {"a", "a"}, {"thirteenchars"}, {"a-b"}} {
		if l, err := netlab.Start(netlab.Config{Hosts: hosts}); err == nil {
			l.Close()
			t.Errorf("hosts %q: no error", hosts)
		}
	}
}

// A lab whose process died (here: a helper killed with SIGKILL, which
// leaves a process running in one host) is swept by the next Start; a
// live process's lab is not touched.
func TestSweepLeftovers(t *testing.T) {
	if err := netlab.Check(); err != nil {
		t.Skip(err)
	}
	mine := netlab.New(t, netlab.Config{Hosts: []string{"live"}})
	h := startHelper(t, "leave")
	dead := h.lab
	_ = h.cmd.Process.Kill()
	_ = h.cmd.Wait()
	if names, _ := netlab.Namespaces(dead + "-"); len(names) != 2 {
		t.Fatalf("the killed helper's lab %s has namespaces %v, want a host and a switch", dead, names)
	}
	if _, err := netlab.Sweep(); err != nil {
		t.Fatal(err)
	}
	if names, _ := netlab.Namespaces(dead + "-"); len(names) != 0 {
		t.Errorf("after Sweep, the dead helper's lab still has %v", names)
	}
	if names, _ := netlab.Namespaces(mine.Name() + "-"); len(names) != 2 {
		t.Errorf("Sweep touched this process's lab: %v", names)
	}
}

// A test that fails, and a process stopped by SIGINT or SIGTERM, leave no
// namespace behind.
func TestTeardownOnFailureAndSignal(t *testing.T) {
	if err := netlab.Check(); err != nil {
		t.Skip(err)
	}
	for _, c := range []struct {
		mode string
		sig  syscall.Signal
	}{{"fail", 0}, {"wait", syscall.SIGINT}, {"wait", syscall.SIGTERM}} {
		h := startHelper(t, c.mode)
		if c.sig != 0 {
			_ = h.cmd.Process.Signal(c.sig)
		}
		err := h.cmd.Wait()
		if err == nil {
			t.Errorf("%s %v: the helper exited 0", c.mode, c.sig)
		}
		if names, _ := netlab.Namespaces(h.lab + "-"); len(names) != 0 {
			t.Errorf("%s %v: left %v (%v)", c.mode, c.sig, names, err)
		}
	}
}

// helperEnv makes the test binary a helper process; its value is the
// helper's mode.
const helperEnv = "NETLAB_TEST_HELPER"

type helper struct {
	cmd *exec.Cmd
	lab string // its lab's name, once it said it
}

// startHelper runs this test binary as a helper in mode and waits until it
// has built its lab.
func startHelper(t *testing.T, mode string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperFails$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	name, ok := strings.CutPrefix(strings.TrimSpace(line), "lab ")
	if err != nil || !ok {
		t.Fatalf("helper %s said %q: %v", mode, line, err)
	}
	return &helper{cmd: cmd, lab: name}
}

// TestHelperFails is the helper in mode "fail": a real failing test with
// a lab open, so that the cleanup path is the testing package's own.
func TestHelperFails(t *testing.T) {
	if os.Getenv(helperEnv) != "fail" {
		t.Skip("a helper of TestTeardownOnFailureAndSignal")
	}
	lab := netlab.New(t, netlab.Config{Hosts: []string{"h"}})
	fmt.Println("lab " + lab.Name())
	t.Fatal("failing on purpose, with a lab open")
}

// helperMain is the helper process in the other modes: it builds a lab
// with one host running a sleep, says the lab's name, and waits for a
// signal ("wait") or for SIGKILL ("leave").
func helperMain(mode string) int {
	lab, err := netlab.Start(netlab.Config{Hosts: []string{"h"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := lab.Host("h").Command("sleep", "600").Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("lab " + lab.Name())
	time.Sleep(time.Minute) // a signal ends the process before this does
	lab.Close()
	return 0
}
