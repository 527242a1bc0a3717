// Package netlab builds a small network of Linux network namespaces for
// tests and benchmarks that need hosts of their own: each host is a
// namespace with one interface, a veth pair to a bridge that lives in a
// namespace of its own (the switch), and an address from 198.18.0.0/15,
// the range set aside for benchmarking networks (RFC 2544). A host's
// egress can be limited with a tc token bucket filter (tbf) and its link
// cut and healed; programs run in a host through "ip netns exec".
//
//	lab := netlab.New(t, netlab.Config{Hosts: []string{"p1", "p2", "c1"}, Rate: netlab.Gbit})
//	cmd := lab.Host("p1").Command(bin, "serve", ...)
//	lab.Host("p2").Cut()  // p2 hears and says nothing
//	lab.Host("p2").Heal()
//
// It drives iproute2's ip and tc commands, the tools an operator would use
// to check what a test did (ip netns list, tc -n NS qdisc show). It needs
// CAP_NET_ADMIN (root): New skips the test with the reason when it cannot
// run. A lab is torn down by Close, by the test's cleanup (also when the
// test fails), and on SIGINT, SIGTERM or SIGHUP; what a killed process
// left behind is swept by the next New: every namespace is named Prefix,
// the creating process's id and a sequence number, and namespaces whose
// creator is gone are removed with the processes in them.
//
// Nothing leaves the lab: the switch is not connected to the machine's
// own network, and every address is in 198.18.0.0/15.
package netlab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Prefix begins the name of every namespace a lab creates.
const Prefix = "pslab-"

// Network is the range every host's address comes from.
var Network = netip.MustParsePrefix("198.18.0.0/15")

// Rate is a link rate in bits per second.
type Rate uint64

// Rates.
const (
	Mbit Rate = 1_000_000
	Gbit Rate = 1000 * Mbit
)

func (r Rate) String() string {
	switch {
	case r == 0:
		return "unlimited"
	case r%Gbit == 0:
		return fmt.Sprintf("%dGbit", r/Gbit)
	case r%Mbit == 0:
		return fmt.Sprintf("%dMbit", r/Mbit)
	}
	return fmt.Sprintf("%dbit", uint64(r))
}

// Config describes a lab.
type Config struct {
	// Hosts names the hosts, in the order their addresses are given out:
	// the first is 198.18.0.1. A name is lower-case letters and digits, at
	// most 12 of them, and unique.
	Hosts []string
	// Rate limits every host's egress; 0 leaves them unlimited. Host.SetRate
	// changes one host's.
	Rate Rate
}

// Lab is a running set of hosts on one switch.
type Lab struct {
	name   string // Prefix + pid + "-" + sequence
	sw     string // the switch's namespace
	hosts  []*Host
	byName map[string]*Host

	closeOnce sync.Once
	closeErr  error
}

// Host is one namespace of a lab.
type Host struct {
	// Name is the host's name in Config.Hosts.
	Name string
	// NS is its network namespace, as ip netns names it.
	NS string
	// Addr is its address on the lab's switch.
	Addr netip.Addr

	lab  *Lab
	port string // the switch's end of the host's veth pair

	mu   sync.Mutex
	rate Rate
	cut  bool
}

var (
	hostName = regexp.MustCompile(`^[a-z0-9]{1,12}$`)
	labSeq   atomic.Uint64
)

// Check reports why a lab cannot run here, or nil: it needs ip and tc
// (Debian's iproute2) and CAP_NET_ADMIN.
func Check() error {
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("netlab: needs iproute2's %s (apt-get install iproute2): %v", tool, err)
		}
	}
	if !hasNetAdmin() {
		return errors.New("netlab: needs CAP_NET_ADMIN to create network namespaces: run as root")
	}
	return nil
}

// hasNetAdmin reports whether the process has CAP_NET_ADMIN in its
// effective set.
func hasNetAdmin() bool {
	const capNetAdmin = 12
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return os.Geteuid() == 0
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<capNetAdmin) != 0
		}
	}
	return false
}

// New starts a lab for a test or benchmark and tears it down in its
// cleanup. It skips tb, with the reason, where Check fails, and fails it
// if the lab cannot be built.
func New(tb testing.TB, cfg Config) *Lab {
	tb.Helper()
	if err := Check(); err != nil {
		tb.Skip(err)
	}
	l, err := Start(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Error(err)
		}
	})
	return l
}

// Start builds a lab; the caller must Close it. It first sweeps what dead
// processes left behind (see Sweep).
func Start(cfg Config) (*Lab, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	if len(cfg.Hosts) == 0 || len(cfg.Hosts) > 250 {
		return nil, fmt.Errorf("netlab: %d hosts; 1 to 250 fit", len(cfg.Hosts))
	}
	if _, err := Sweep(); err != nil {
		return nil, err
	}
	l := &Lab{name: fmt.Sprintf("%s%d-%d", Prefix, os.Getpid(), labSeq.Add(1)), byName: map[string]*Host{}}
	l.sw = l.name + "-sw"
	addr := Network.Addr()
	for i, name := range cfg.Hosts {
		if !hostName.MatchString(name) {
			return nil, fmt.Errorf("netlab: host name %q: want 1 to 12 lower-case letters and digits", name)
		}
		if l.byName[name] != nil {
			return nil, fmt.Errorf("netlab: host %q named twice", name)
		}
		addr = addr.Next()
		h := &Host{Name: name, NS: l.name + "-" + name, Addr: addr, lab: l, port: fmt.Sprintf("v%d", i+1)}
		l.hosts = append(l.hosts, h)
		l.byName[name] = h
	}
	// Registered before anything exists, so that a signal from now on
	// removes whatever has been made.
	register(l)
	if err := l.build(cfg.Rate); err != nil {
		return nil, errors.Join(err, l.Close())
	}
	return l, nil
}

// build makes the switch and the hosts.
func (l *Lab) build(rate Rate) error {
	if err := ip("netns", "add", l.sw); err != nil {
		return err
	}
	steps := [][]string{
		{"-n", l.sw, "link", "add", "br0", "type", "bridge"},
		{"-n", l.sw, "link", "set", "br0", "up"},
	}
	for _, h := range l.hosts {
		if err := ip("netns", "add", h.NS); err != nil {
			return err
		}
		prefix := netip.PrefixFrom(h.Addr, Network.Bits()).String()
		steps = append(steps,
			[]string{"link", "add", "eth0", "netns", h.NS, "type", "veth", "peer", "name", h.port, "netns", l.sw},
			[]string{"-n", l.sw, "link", "set", h.port, "master", "br0"},
			[]string{"-n", l.sw, "link", "set", h.port, "up"},
			[]string{"-n", h.NS, "link", "set", "lo", "up"},
			[]string{"-n", h.NS, "addr", "add", prefix, "dev", "eth0"},
			[]string{"-n", h.NS, "link", "set", "eth0", "up"},
		)
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	if rate > 0 {
		for _, h := range l.hosts {
			if err := h.SetRate(rate); err != nil {
				return err
			}
		}
	}
	return nil
}

// Host returns the host of that name, or nil.
func (l *Lab) Host(name string) *Host { return l.byName[name] }

// Hosts returns every host, in Config.Hosts' order.
func (l *Lab) Hosts() []*Host { return append([]*Host(nil), l.hosts...) }

// Name is the lab's name, the prefix of its namespaces' names.
func (l *Lab) Name() string { return l.name }

// Close kills every process left in the lab's namespaces and removes them;
// the veth pairs and the bridge go with them. It is safe to call more than
// once and from several goroutines.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() {
		defer unregister(l)
		var errs []error
		for _, h := range l.hosts {
			errs = append(errs, removeNS(h.NS))
		}
		errs = append(errs, removeNS(l.sw))
		l.closeErr = errors.Join(errs...)
	})
	return l.closeErr
}

// removeNS kills the processes in namespace ns and deletes it; a namespace
// that does not exist is no error.
func removeNS(ns string) error {
	if !nsExists(ns) {
		return nil
	}
	killAll(ns)
	if err := ip("netns", "del", ns); err != nil && nsExists(ns) {
		return err
	}
	return nil
}

// killAll SIGKILLs every process in namespace ns and waits, briefly, until
// none is left: a namespace outlives its deletion while a process holds it.
func killAll(ns string) {
	for range 50 {
		pids := nsPids(ns)
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			if pid != os.Getpid() {
				if p, err := os.FindProcess(pid); err == nil {
					_ = p.Signal(os.Kill)
				}
			}
		}
		waitBriefly()
	}
}

// nsPids lists the processes in namespace ns.
func nsPids(ns string) []int {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// nsExists reports whether namespace ns is listed under /run/netns.
func nsExists(ns string) bool {
	_, err := os.Stat("/run/netns/" + ns)
	return err == nil
}

// Namespaces lists the namespaces whose names begin with prefix.
func Namespaces(prefix string) ([]string, error) {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netlab: %w", err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Sweep removes the namespaces of labs whose process has exited, as a test
// binary killed by its timeout or by SIGKILL leaves them, together with
// the processes still running in them. Labs of live processes, this one's
// and other test binaries', are left alone. It returns how many namespaces
// it removed.
func Sweep() (int, error) {
	names, err := Namespaces(Prefix)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, ns := range names {
		pidText, _, _ := strings.Cut(strings.TrimPrefix(ns, Prefix), "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || processAlive(pid) {
			continue
		}
		if err := removeNS(ns); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// ip runs the ip command with args.
func ip(args ...string) error { return run("ip", args...) }

// run runs a command and returns its output as the error when it fails.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netlab: %s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
