package bench_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/internal/netlab"
)

var (
	labBench      = flag.Bool("lab", false, "run BenchmarkLab: peers as processes in network namespaces (root; see docs/operations.md)")
	benchLabDir   = flag.String("lab.dir", "/dev/shm", "where BenchmarkLab's peers keep their data; the default tmpfs keeps the disk out of the comparison")
	benchLabMiB   = flag.Int64("lab.mib", 64, "MiB each client of BenchmarkLab sends per op")
	benchLabRates = flag.String("lab.rates", "1Gbit,10Gbit", "BenchmarkLab's egress limits per host, in Mbit or Gbit, comma-separated")
)

// labRates parses -lab.rates.
func labRates(b *testing.B) []netlab.Rate {
	var out []netlab.Rate
	for f := range strings.SplitSeq(*benchLabRates, ",") {
		unit := netlab.Mbit
		num, ok := strings.CutSuffix(f, "Mbit")
		if !ok {
			num, ok = strings.CutSuffix(f, "Gbit")
			unit = netlab.Gbit
		}
		n, err := strconv.ParseUint(num, 10, 64)
		if !ok || err != nil || n == 0 {
			b.Fatalf("-lab.rates: %q: want a number of Mbit or Gbit, as 200Mbit", f)
		}
		out = append(out, netlab.Rate(n)*unit)
	}
	return out
}

// Ports of BenchmarkLab's processes, the same on every host.
const (
	labStreamPort = 7001 // pipestream serve's three
	labRaftPort   = 7101
	labCommitPort = 7201
	logRaftPort   = 7401 // the log path's nodes
	logCommitPort = 7501
	logFrontPort  = 7601
)

// labClients is how many client hosts a lab has; clients=1 uses the first.
const labClients = 3

// BenchmarkLab is BenchmarkCommitPath on a network: every peer is a
// process in a network namespace of its own (internal/netlab), and so is
// every client, each host's egress limited by a token bucket, so that what
// the leader of a Raft log must send to every follower is limited as it is
// between real machines. One op is each client sending -lab.mib (64 MiB),
// committed; MB/s is all clients' payload together.
//
//		BenchmarkLab/rate=<1Gbit|10Gbit>/peers=<3|5>/clients=<1|3>/<log|chain|star>
//
//	  - log: each client sends 1 MiB entries over TCP to the leader's
//	    process, which appends them to a Raft log (raft-boltdb) with
//	    raft.Node.ApplyData, 64 in flight, as BenchmarkCommitPath's log path;
//	    every node also writes each entry to a file.
//	  - chain, star: each client streams through pipestream serve processes
//	    with that routing table and commits one entry; client i's primary is
//	    the i-th peer after the leader, so that several clients spread out.
//	    The peers keep their files in a FileStore.
//	  - stream/log: the ratio of the throughputs, log run moments before on
//	    the same lab.
//	  - busy-%: how busy the machine's cores were during the op (100: both
//	    saturated, by the lab or by anything else running); lab-cpu-%: the
//	    share of them the lab's processes used, user and system time;
//	    cpu-ms/MB: the CPU time the lab's processes spent per MB committed,
//	    what bounds a path once the cores are saturated.
//
// Data directories are under -lab.dir, a tmpfs by default, so that the
// shared disk of one machine does not stand in for every host's own.
// -lab.rates picks other rates (200Mbit shows the network's own ratios,
// below what the machine's two cores can move). It needs root and takes
// minutes, so it runs only with -lab:
//
//	go test -run '^$' -bench Lab -benchtime 3x ./bench -lab
func BenchmarkLab(b *testing.B) {
	if !*labBench {
		b.Skip("a network-lab benchmark: run with -lab, as root")
	}
	if err := netlab.Check(); err != nil {
		b.Skip(err)
	}
	bin := buildPipestream(b)
	size := *benchLabMiB << 20
	for _, rate := range labRates(b) {
		for _, peers := range []int{3, 5} {
			b.Run(fmt.Sprintf("rate=%v/peers=%d", rate, peers), func(b *testing.B) {
				lab := startBenchLab(b, bin, rate, peers)
				for _, clients := range []int{1, labClients} {
					b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
						var logRate float64
						for _, path := range []string{"log", "chain", "star"} {
							b.Run(path, func(b *testing.B) {
								before, procs := readCPU(), lab.cpu()
								start := time.Now()
								r := runTransfers(b, int64(clients)*size, func(context.Context) error {
									return lab.transfer(path, clients, size)
								})
								wall := time.Since(start).Seconds()
								after := readCPU()
								// Both cores' time: 100% is the machine saturated.
								b.ReportMetric(100*(after.busy-before.busy)/(after.total-before.total), "busy-%")
								used := lab.cpu() - procs
								b.ReportMetric(100*used/wall/float64(runtime.NumCPU()), "lab-cpu-%")
								b.ReportMetric(1000*used/(float64(b.N*clients)*float64(size)/1e6), "cpu-ms/MB")
								if path == "log" {
									logRate = r
								} else if logRate > 0 {
									b.ReportMetric(r/logRate, "stream/log")
								}
							})
						}
					})
				}
			})
		}
	}
}

// benchLab is a lab with both paths' processes running.
type benchLab struct {
	ids          []string
	streamLeader string
	logFront     string // the log leader's logFront
	clients      []*labProc
	procs        []*labProc // every process, for cpu
}

// startBenchLab starts the hosts p1..pN and c1..c3 at rate, a serve
// process and a log node on each peer host, and a client on each client
// host.
func startBenchLab(b *testing.B, bin string, rate netlab.Rate, peers int) *benchLab {
	b.Helper()
	bl := &benchLab{}
	hosts := []string{}
	for i := range peers {
		bl.ids = append(bl.ids, fmt.Sprintf("p%d", i+1))
	}
	hosts = append(hosts, bl.ids...)
	for i := range labClients {
		hosts = append(hosts, fmt.Sprintf("c%d", i+1))
	}
	lab := netlab.New(b, netlab.Config{Hosts: hosts, Rate: rate})
	dir, err := os.MkdirTemp(*benchLabDir, "pipestream-lab-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) }) // after the processes have stopped

	var members []group.Member
	var logPeers, streamPeers []string
	for _, id := range bl.ids {
		a := lab.Host(id).Addr
		members = append(members, group.Member{ID: id,
			StreamAddr: fmt.Sprintf("%s:%d", a, labStreamPort),
			RaftAddr:   fmt.Sprintf("%s:%d", a, labRaftPort),
			CommitAddr: fmt.Sprintf("%s:%d", a, labCommitPort)})
		logPeers = append(logPeers, fmt.Sprintf("%s=%s:%d,%s:%d", id, a, logRaftPort, a, logCommitPort))
		streamPeers = append(streamPeers, fmt.Sprintf("%s=%s:%d", id, a, labStreamPort))
	}
	config := writeGroupFile(b, dir, filepath.Join(dir, "stream"), members)

	var serves, nodes []*labProc
	for _, id := range bl.ids {
		h := lab.Host(id)
		serves = append(serves, startLabProc(b, "serve "+id, h.Command(bin, "serve", "--config", config, "--id", id, "--log-level", "warn"), true))
		nodeDir := filepath.Join(dir, "log", id)
		if err := os.MkdirAll(nodeDir, 0o755); err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, startLabProc(b, "log node "+id, h.Command(os.Args[0], "-test.run=^$"), false,
			labRoleEnv+"=lognode", labIDEnv+"="+id, labPeersEnv+"="+strings.Join(logPeers, ";"),
			labDirEnv+"="+nodeDir, fmt.Sprintf("%s=%s:%d", labFrontEnv, h.Addr, logFrontPort)))
	}
	for i, p := range serves {
		line, err := p.waitLine(bl.ids[i] + " ready: leader ")
		if err != nil {
			b.Fatal(err)
		}
		bl.streamLeader = strings.TrimSuffix(strings.Fields(strings.SplitN(line, "leader ", 2)[1])[0], ",")
	}
	for _, p := range nodes {
		line, err := p.waitLine("leader ")
		if err != nil {
			b.Fatal(err)
		}
		leader := strings.TrimPrefix(line, "leader ")
		bl.logFront = fmt.Sprintf("%s:%d", lab.Host(leader).Addr, logFrontPort)
	}
	for i := range labClients {
		name := fmt.Sprintf("c%d", i+1)
		bl.clients = append(bl.clients, startLabProc(b, "client "+name, lab.Host(name).Command(os.Args[0], "-test.run=^$"), false,
			labRoleEnv+"=client", labPeersEnv+"="+strings.Join(streamPeers, ";")))
	}
	bl.procs = slices.Concat(serves, nodes, bl.clients)
	b.Logf("%d peers at %v: stream leader %s, log front %s; data in %s", peers, rate, bl.streamLeader, bl.logFront, dir)
	return bl
}

// transfer has the first clients each send n bytes by path, at once, and
// returns when every one is committed.
func (bl *benchLab) transfer(path string, clients int, n int64) error {
	lead := slices.Index(bl.ids, bl.streamLeader)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for i := range clients {
		cmd := fmt.Sprintf("log %s %d", bl.logFront, n)
		if path != "log" {
			route := append(slices.Clone(bl.ids[(lead+i)%len(bl.ids):]), bl.ids[:(lead+i)%len(bl.ids)]...)
			cmd = fmt.Sprintf("stream lab/c%d %s %d %s", i+1, path, n, strings.Join(route, " "))
		}
		wg.Go(func() { errs[i] = bl.clients[i].do(cmd) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// cpuTimes is the machine's CPU time, in seconds of all cores.
type cpuTimes struct{ busy, total float64 }

// readCPU reads /proc/stat's first line: user nice system idle iowait irq
// softirq steal, in clock ticks.
func readCPU() cpuTimes {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	line, _, _ := strings.Cut(string(data), "\n")
	var t cpuTimes
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseFloat(f, 64)
		if i >= 8 { // guest time is counted in user already
			break
		}
		t.total += v / clockTicks
		if i != 3 && i != 4 { // idle, iowait
			t.busy += v / clockTicks
		}
	}
	return t
}

// clockTicks is USER_HZ, the unit of /proc's CPU times on Linux.
const clockTicks = 100

// cpu returns the CPU seconds, user and system, the lab's processes have
// used so far.
func (bl *benchLab) cpu() float64 {
	var sum float64
	for _, p := range bl.procs {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
		if err != nil {
			continue
		}
		// The fields after the command's name, which is in parentheses.
		rest := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
		for _, f := range rest[11:13] { // utime, stime
			v, _ := strconv.ParseFloat(f, 64)
			sum += v / clockTicks
		}
	}
	return sum
}

// buildPipestream builds the command into a temporary directory.
func buildPipestream(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "pipestream")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/pipestream/pipestream/cmd/pipestream").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// writeGroupFile writes a group file of members into dir, with the
// benchmarks' Raft timeouts and, unless dataDir is empty, that data_dir,
// and returns its path.
func writeGroupFile(b *testing.B, dir, dataDir string, members []group.Member) string {
	b.Helper()
	var g strings.Builder
	if dataDir != "" {
		fmt.Fprintf(&g, "data_dir = %q\n", dataDir)
	}
	fmt.Fprintf(&g, "[raft]\nheartbeat_timeout = %q\nelection_timeout = %q\nleader_lease_timeout = %q\n",
		benchHeartbeat, benchHeartbeat, benchLeaderLease)
	for _, m := range members {
		fmt.Fprintf(&g, "\n[[peers]]\nid = %q\nstream_addr = %q\nraft_addr = %q\ncommit_addr = %q\n",
			m.ID, m.StreamAddr, m.RaftAddr, m.CommitAddr)
	}
	path := filepath.Join(dir, "group.toml")
	if err := os.WriteFile(path, []byte(g.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	return path
}
