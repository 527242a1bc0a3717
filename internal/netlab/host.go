package netlab

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Shaping of a host's egress.
const (
	// burstTime is how much of the rate the token bucket holds: the
	// kernel's timer tick (4 ms at HZ=250) of traffic, so that a bucket
	// refilled once per tick keeps the link busy.
	burstTime = 4 // milliseconds
	// minBurst is the smallest bucket: one GSO segment of 64 KiB must fit
	// whole, or tbf cuts every segment down.
	minBurst = 64 << 10
	// queueLatency bounds how long a packet may wait in the host's queue
	// before tbf drops it.
	queueLatency = "20ms"
)

func (h *Host) String() string { return h.Name + " (" + h.Addr.String() + ")" }

// Command returns a command that runs name with args in the host's
// namespace, through "ip netns exec", which execs it: the process's id is
// the program's own, so signals reach it directly.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// CommandContext is Command with a context that kills the process.
func (h *Host) CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// SetRate limits the host's egress to r bits per second with a token
// bucket filter on its interface; 0 removes the limit. Only what the host
// sends is limited: a host at 200 Mbit/s still receives at its senders'
// rates.
func (h *Host) SetRate(r Rate) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r == 0 {
		if h.rate == 0 {
			return nil
		}
		if err := run("tc", "-n", h.NS, "qdisc", "del", "dev", "eth0", "root"); err != nil {
			return err
		}
		h.rate = 0
		return nil
	}
	burst := max(uint64(r)/8*burstTime/1000, minBurst)
	err := run("tc", "-n", h.NS, "qdisc", "replace", "dev", "eth0", "root", "tbf",
		"rate", strconv.FormatUint(uint64(r), 10)+"bit",
		"burst", strconv.FormatUint(burst, 10), "latency", queueLatency)
	if err != nil {
		return err
	}
	h.rate = r
	return nil
}

// Rate returns the host's egress limit, 0 for none.
func (h *Host) Rate() Rate {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rate
}

// Qdisc returns what tc reports of the host's interface's queueing, for a
// test or a log to show the shaping in force.
func (h *Host) Qdisc() (string, error) {
	out, err := exec.Command("tc", "-n", h.NS, "qdisc", "show", "dev", "eth0").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("netlab: tc qdisc show: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// Cut takes the host off the network, as a pulled cable does: the
// switch's end of its link goes down, so that nothing it sends arrives and
// nothing reaches it. Its processes see no error, only silence: their
// connections stall and their dials time out. Heal undoes it.
func (h *Host) Cut() error { return h.setLink(true) }

// Heal puts a cut host back on the network; its connections carry on
// where TCP's retransmissions find them.
func (h *Host) Heal() error { return h.setLink(false) }

func (h *Host) setLink(cut bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	state := "up"
	if cut {
		state = "down"
	}
	if err := ip("-n", h.lab.sw, "link", "set", h.port, state); err != nil {
		return err
	}
	h.cut = cut
	return nil
}

// IsCut reports whether the host is cut off.
func (h *Host) IsCut() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cut
}

// Do runs fn on an OS thread that has joined the host's namespace, so that
// the sockets fn creates belong to the host: a listener or connection made
// there stays in the host's namespace whatever goroutine uses it after.
// Goroutines fn starts do not run in the namespace.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it ends with this goroutine
		// instead of going back to the runtime in another namespace.
		runtime.LockOSThread()
		ns, err := os.Open("/run/netns/" + h.NS)
		if err != nil {
			errc <- fmt.Errorf("netlab: %w", err)
			return
		}
		err = unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET)
		ns.Close()
		if err != nil {
			errc <- fmt.Errorf("netlab: setns %s: %w", h.NS, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Listen announces on the host's network (see net.Listen); addr "" is
// the host's address and a port the kernel picks.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	if addr == "" {
		addr = net.JoinHostPort(h.Addr.String(), "0")
	}
	var ln net.Listener
	err := h.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// DialContext connects from the host to addr (see net.Dialer.DialContext).
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
