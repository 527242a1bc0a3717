package bench_test

// The processes of BenchmarkLab besides pipestream serve: this test binary
// run again in a lab host, as a node of the log path's Raft group
// (lognode) or as a client of either path (client). Each is told what to
// be by its environment, takes commands on stdin, answers on stdout, and
// ends when stdin does.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
)

// Environment of a lab process.
const (
	labRoleEnv  = "PIPESTREAM_BENCH_LAB"       // "lognode" or "client"
	labIDEnv    = "PIPESTREAM_BENCH_LAB_ID"    // lognode: its id
	labPeersEnv = "PIPESTREAM_BENCH_LAB_PEERS" // lognode: id=raft,commit;... client: id=stream;...
	labDirEnv   = "PIPESTREAM_BENCH_LAB_DIR"   // lognode: its Raft log's directory
	labFrontEnv = "PIPESTREAM_BENCH_LAB_FRONT" // lognode: the address of its logFront
)

// labMain runs a lab process's role and returns its exit code.
func labMain(role string) int {
	var err error
	switch role {
	case "lognode":
		err = runLogNode()
	case "client":
		err = runLabClient()
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench lab "+role+":", err)
		return 1
	}
	return 0
}

// runLogNode is one node of the log path: a raft.Node with its log in
// raft-boltdb, a fileSink for the entries and a logFront for clients. It
// says "leader ID" once the group has one, and shuts down when stdin ends.
func runLogNode() error {
	var peers []group.Member
	for p := range strings.SplitSeq(os.Getenv(labPeersEnv), ";") {
		id, addrs, _ := strings.Cut(p, "=")
		r, c, _ := strings.Cut(addrs, ",")
		peers = append(peers, group.Member{ID: id, RaftAddr: r, CommitAddr: c})
	}
	id, dir := os.Getenv(labIDEnv), os.Getenv(labDirEnv)
	var self group.Member
	for _, p := range peers {
		if p.ID == id {
			self = p
		}
	}
	f, err := os.Create(filepath.Join(dir, "entries"))
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := raft.New(raft.Config{
		ID: id, RaftAddr: self.RaftAddr, CommitAddr: self.CommitAddr, Dir: filepath.Join(dir, "raft"),
		Logger: quietLog(), DataSink: &fileSink{f: f, rotate: 256 << 20},
		Tuning: benchRaftTuning,
	})
	if err != nil {
		return err
	}
	defer n.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), groupPatience)
	defer cancel()
	if err := n.Start(ctx, peers); err != nil {
		return err
	}
	leader, err := n.WaitLeader(ctx)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", os.Getenv(labFrontEnv))
	if err != nil {
		return err
	}
	front := &logFront{ln: ln, leader: n, inFlight: commitInFlight}
	front.wg.Add(1)
	go front.accept()
	fmt.Println("leader " + leader)
	_, _ = io.Copy(io.Discard, os.Stdin)
	ln.Close()
	front.wg.Wait()
	return nil
}

// runLabClient is a client of both paths. Each command is a line:
//
//	stream NAME chain|star BYTES ID...   stream BYTES through the peers, the first the primary
//	log ADDR BYTES                       send BYTES as 1 MiB entries to the logFront at ADDR
//
// and is answered "ok" or "error ...".
func runLabClient() error {
	var peers []group.Member
	for p := range strings.SplitSeq(os.Getenv(labPeersEnv), ";") {
		id, addr, _ := strings.Cut(p, "=")
		peers = append(peers, group.Member{ID: id, StreamAddr: addr})
	}
	c, err := datastream.NewClient(peers, datastream.WithLogger(quietLog()))
	if err != nil {
		return err
	}
	defer c.Close()
	logConns := map[string]*logClient{}
	defer func() {
		for _, l := range logConns {
			l.c.Close()
		}
	}()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		err := fmt.Errorf("bad command %q", sc.Text())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		switch {
		case len(f) >= 5 && f[0] == "stream":
			n, _ := strconv.ParseInt(f[3], 10, 64)
			route := f[4:]
			table := pb.Chain(route...)
			if f[2] == "star" {
				table = pb.Star(route[0], route[1:]...)
			}
			err = streamTransferTable(ctx, c, route[0], table, f[1], n)
		case len(f) == 3 && f[0] == "log":
			n, _ := strconv.ParseInt(f[2], 10, 64)
			l := logConns[f[1]]
			if l == nil {
				var conn net.Conn
				if conn, err = net.Dial("tcp", f[1]); err != nil {
					break
				}
				l = &logClient{c: conn, f: new(logFront)}
				logConns[f[1]] = l
			}
			err = l.transfer(n, commitPayload)
		}
		cancel()
		if err != nil {
			fmt.Println("error", err)
		} else {
			fmt.Println("ok")
		}
	}
	return nil
}

// labProc is a process of the lab, as BenchmarkLab sees it.
type labProc struct {
	name  string
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string // stdout, line by line; closed at its end
	mu    sync.Mutex
	err   strings.Builder // stderr
	// stop ends the process as the benchmark's end would, at once; it
	// does nothing the second time.
	stop func()
}

// startLabProc starts cmd with env added and stops it at the benchmark's
// end: its stdin is closed, with interrupt it gets SIGINT too, and it is
// killed if it has not exited soon.
func startLabProc(b *testing.B, name string, cmd *exec.Cmd, interrupt bool, env ...string) *labProc {
	b.Helper()
	p := &labProc{name: name, cmd: cmd, lines: make(chan string, 1024)}
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = writerFunc(func(q []byte) (int, error) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.err.Write(q)
	})
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if p.in, err = cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	p.stop = sync.OnceFunc(func() {
		p.in.Close()
		if interrupt {
			_ = cmd.Process.Signal(os.Interrupt)
		}
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	b.Cleanup(p.stop)
	return p
}

// waitLine returns the next line that contains s, skipping others.
func (p *labProc) waitLine(s string) (string, error) {
	timeout := time.After(patience)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				p.mu.Lock()
				defer p.mu.Unlock()
				return "", fmt.Errorf("%s exited before saying %q\n--- stderr\n%s", p.name, s, p.err.String())
			}
			if strings.Contains(line, s) {
				return line, nil
			}
		case <-timeout:
			return "", fmt.Errorf("%s said no %q within %v", p.name, s, patience)
		}
	}
}

// do sends a client command and waits for its answer, "ok".
func (p *labProc) do(cmd string) error {
	line, err := p.ask(cmd)
	if err == nil && line != "ok" {
		err = fmt.Errorf("%s: %s: %s", p.name, cmd, line)
	}
	return err
}

// ask sends a client command and returns the line that answers it.
func (p *labProc) ask(cmd string) (string, error) {
	if _, err := fmt.Fprintln(p.in, cmd); err != nil {
		return "", err
	}
	line, ok := <-p.lines
	if !ok {
		p.mu.Lock()
		defer p.mu.Unlock()
		return "", fmt.Errorf("%s exited\n--- stderr\n%s", p.name, p.err.String())
	}
	return line, nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
