package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

const demoHelp = `
Usage: pipestream demo [flags]

Starts a group of three peers in this process on 127.0.0.1 (stream servers,
Raft nodes and file stores, every port picked by the system), waits for a
leader, generates a file of --size random bytes, streams it through the
chain p1 -> p2 -> p3 with a progress bar, commits it with one Raft entry,
checks its SHA-256 on every peer, prints the throughput and the log index,
and shuts the group down.

Everything is kept under a new temporary directory (in --dir), which is
removed at the end unless --keep is given. Exits 0 when every peer holds
the file intact, non-zero otherwise.
`

// demoTimeout bounds each wait of the demo that is not the transfer itself:
// the group's start, the followers' link, the shutdown.
const demoTimeout = 30 * time.Second

// demoRaft gives the demo's Raft nodes twice the default timeouts: the
// three peers and the transfer share one machine's CPUs, and a leader
// whose heartbeats are late while a large file streams through would be
// deposed, which costs an election (the stream still commits).
var demoRaft = peer.RaftTuning{
	HeartbeatTimeout:   time.Second,
	ElectionTimeout:    time.Second,
	LeaderLeaseTimeout: 500 * time.Millisecond,
}

// demoName is the name the demo stores its file under.
const demoName = "demo.bin"

// demoPeers are the ids of the demo's group, in chain order.
var demoPeers = []string{"p1", "p2", "p3"}

func runDemo(ctx context.Context, args []string, e *env) int {
	fs := newFlagSet(e, "demo", demoHelp)
	size := byteSize(256 << 20)
	fs.Var(&size, "size", "`bytes` to generate and stream: 4096, 64KiB, 8MiB, 1GiB")
	keep := fs.Bool("keep", false, "keep the temporary directory: the generated file, every peer's data and a group.toml to read them with ls and get")
	dir := fs.String("dir", "", "`directory` to create the temporary directory in (default: the system's)")
	quiet := fs.Bool("quiet", false, "draw no progress bar (none is drawn unless stderr is a terminal)")
	kind := fs.transportFlag("DataStream `transport`: gnet or netconn (default gnet)")
	// Warnings would show every election, and a fresh group holds one.
	logger := fs.logFlag(slog.LevelError)
	err := fs.parseNone(args)
	if err == nil && size <= 0 {
		err = usageError("--size must be positive")
	}
	if err != nil {
		return e.exit(ctx, "demo", err)
	}
	log, closing := logger()
	d := &demo{
		env:     e,
		log:     log,
		closing: closing,
		size:    int64(size),
		kind:    kind.kind,
		bar:     !*quiet && isTerminal(e.stderr),
	}
	return e.exit(ctx, "demo", d.run(ctx, *dir, *keep))
}

// demo is one run of the demo command.
type demo struct {
	*env
	log     *slog.Logger
	closing func() // tells the log the peers are shutting down
	size    int64
	kind    transport.Kind
	bar     bool

	peers []*peer.Peer
}

func (d *demo) printf(format string, args ...any) { fmt.Fprintf(d.stdout, format, args...) }

func (d *demo) run(ctx context.Context, parent string, keep bool) (err error) {
	dir, err := os.MkdirTemp(parent, "pipestream-demo-")
	if err != nil {
		return err
	}
	defer func() {
		if keep {
			d.printf("kept %s\n", dir)
			return
		}
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, rerr)
		} else {
			d.printf("removed %s\n", dir)
		}
	}()

	src := filepath.Join(dir, demoName)
	start := time.Now()
	sum, err := generate(ctx, src, d.size)
	if err != nil {
		return err
	}
	d.printf("generated %s: %s of random bytes in %s, sha256 %s\n",
		src, formatBytes(d.size), since(start), hex.EncodeToString(sum[:]))

	defer func() { err = errors.Join(err, d.shutdown()) }()
	if err := d.startGroup(ctx, dir); err != nil {
		return err
	}

	c, err := datastream.NewClient(d.members(),
		datastream.WithLogger(d.log), datastream.WithTransport(d.kind))
	if err != nil {
		return err
	}
	defer c.Close()
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	d.printf("streaming %s through p1 -> p2 -> p3\n", demoName)
	bar := newProgress(d.stderr, d.size, "streaming", d.bar)
	res, err := putFile(ctx, c, f, d.size, demoName, demoPeers[0], bar)
	bar.finish(err == nil)
	if err != nil {
		return fmt.Errorf("stream %s: %w", demoName, err)
	}
	d.printf("%s\n", res.summary(demoName))

	for _, p := range d.peers {
		if err := d.verify(ctx, p, res, sum); err != nil {
			return err
		}
	}
	d.printf("throughput: %s, %s written to disk on each of %d peers\n",
		res.rate(), formatBytes(res.bytes), len(d.peers))
	return nil
}

// startGroup starts the demo's peers in dir with every port 0, hands each
// the addresses all of them bound, and waits until each is ready. It also
// writes dir/group.toml, so that a kept directory can be read with ls
// and get.
func (d *demo) startGroup(ctx context.Context, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()
	ids := make([]peer.Member, len(demoPeers))
	for i, id := range demoPeers {
		ids[i] = peer.Member{ID: id}
	}
	var members []peer.Member
	for _, m := range ids {
		p, err := peer.New(ctx, peer.Config{
			ID:        m.ID,
			Peers:     ids,
			DataDir:   filepath.Join(dir, "data", m.ID),
			Transport: d.kind,
			Logger:    d.log,
			Raft:      demoRaft,
		})
		if err != nil {
			return err
		}
		d.peers = append(d.peers, p)
		members = append(members, p.Addrs())
	}
	for _, p := range d.peers {
		if err := p.Start(ctx, members); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "group.toml"), []byte(groupFile(members, "data")), 0o644); err != nil {
		return err
	}
	start := time.Now()
	for _, p := range d.peers {
		if err := p.WaitReady(ctx); err != nil {
			return fmt.Errorf("waiting for the group: %w", err)
		}
	}
	for _, m := range members {
		d.printf("%s: stream %s, raft %s, commit %s, data %s\n",
			m.ID, m.StreamAddr, m.RaftAddr, m.CommitAddr, filepath.Join(dir, "data", m.ID))
	}
	leader, _ := d.peers[0].Leader()
	d.printf("leader: %s, elected in %s\n", leader.ID, since(start))
	return nil
}

func (d *demo) members() []peer.Member {
	out := make([]peer.Member, len(d.peers))
	for i, p := range d.peers {
		out[i] = p.Addrs()
	}
	return out
}

// verify waits until p has linked the stream's entry, then reads the file
// back from p's store and compares its SHA-256 with want.
func (d *demo) verify(ctx context.Context, p *peer.Peer, res committed, want [32]byte) error {
	fs, ok := p.StateMachine().(*statemachine.FileStore)
	if !ok {
		return fmt.Errorf("%s stores in a %T, not a FileStore", p.ID(), p.StateMachine())
	}
	// The commit's reply means the primary applied the entry; the others
	// apply it once they learn that it committed, a moment later.
	sf, err := waitLinked(ctx, fs, demoName, res.index)
	if err != nil {
		return fmt.Errorf("%s: %w", p.ID(), err)
	}
	f, err := fs.Open(demoName)
	if err != nil {
		return fmt.Errorf("%s: %w", p.ID(), err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("%s: read %s: %w", p.ID(), demoName, err)
	}
	got := h.Sum(nil)
	switch {
	case n != d.size:
		return fmt.Errorf("%s holds %d bytes of %s, %d were streamed", p.ID(), n, demoName, d.size)
	case !bytes.Equal(got, want[:]):
		return fmt.Errorf("%s: %s has sha256 %x, %x was streamed", p.ID(), demoName, got, want)
	case sf.SHA256 != want:
		return fmt.Errorf("%s: the store recorded sha256 %x for %s, %x was streamed", p.ID(), sf.SHA256, demoName, want)
	}
	d.printf("%s: %s holds %d bytes, sha256 matches, log index %d\n", p.ID(), demoName, n, sf.Index)
	return nil
}

// waitLinked polls fs until it holds name at index, for up to demoTimeout.
func waitLinked(ctx context.Context, fs *statemachine.FileStore, name string, index uint64) (statemachine.StoredFile, error) {
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		sf, ok := fs.Lookup(name)
		if ok && sf.Index == index {
			return sf, nil
		}
		select {
		case <-ctx.Done():
			return sf, fmt.Errorf("%s not linked at log index %d: %w", name, index, ctx.Err())
		case <-t.C:
		}
	}
}

// shutdown stops every peer started.
func (d *demo) shutdown() error {
	if len(d.peers) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), demoTimeout)
	defer cancel()
	start := time.Now()
	d.closing()
	// All at once: one by one, the last ones would spend the wait
	// electing leaders among themselves.
	errs := make([]error, len(d.peers))
	var wg sync.WaitGroup
	for i, p := range d.peers {
		wg.Go(func() { errs[i] = p.Shutdown(ctx) })
	}
	wg.Wait()
	d.peers = nil
	if err := errors.Join(errs...); err != nil {
		return err
	}
	d.printf("shut down %d peers in %s\n", len(demoPeers), since(start))
	return nil
}

// generate writes size pseudo-random bytes to a new file at path and
// returns their SHA-256. The seed is fixed: the same size gives the same
// file, and the same hash, on every run.
func generate(ctx context.Context, path string, size int64) (sum [32]byte, err error) {
	f, err := os.Create(path)
	if err != nil {
		return sum, err
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	h := sha256.New()
	src := rand.NewChaCha8(sha256.Sum256([]byte("pipestream demo")))
	buf := make([]byte, 1<<20)
	for left := size; left > 0; left -= int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return sum, err
		}
		buf = buf[:min(int64(len(buf)), left)]
		_, _ = src.Read(buf) // never fails
		h.Write(buf)
		if _, err := f.Write(buf); err != nil {
			return sum, fmt.Errorf("generate %s: %w", path, err)
		}
	}
	h.Sum(sum[:0])
	return sum, nil
}

// groupFile returns a group file naming members, for a demo directory
// kept with --keep.
func groupFile(members []peer.Member, dataDir string) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# The demo's group, as it was bound. Its peers are gone; read their\n"+
		"# stores with: pipestream ls --config group.toml --id p2\ndata_dir = %q\n", dataDir)
	for _, m := range members {
		fmt.Fprintf(&b, "\n[[peers]]\nid = %q\nstream_addr = %q\nraft_addr = %q\ncommit_addr = %q\n",
			m.ID, m.StreamAddr, m.RaftAddr, m.CommitAddr)
	}
	return b.String()
}

// since returns the time since start, rounded for people.
func since(start time.Time) string {
	d := time.Since(start)
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}
