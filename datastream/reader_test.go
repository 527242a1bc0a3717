package datastream_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/testcert"
	"github.com/pipestream/pipestream/internal/testkit"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

// fileGroup starts n peers, each storing into a FileStore of its own.
func fileGroup(t testing.TB, n int, kind transport.Kind) (*cluster, []*statemachine.FileStore) {
	t.Helper()
	stores := make([]*statemachine.FileStore, n)
	for i := range stores {
		fs, err := statemachine.NewFileStore(t.TempDir(), statemachine.WithLogger(testkit.QuietLogger()), statemachine.WithSyncOnClose(false))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = fs.Close() })
		stores[i] = fs
	}
	g := startGroup(t, n, groupOpts{kind: kind, sm: func(i int) statemachine.StateMachine { return stores[i] }})
	return g, stores
}

// put stores data under name on every peer of the group.
func put(t testing.TB, c *datastream.Client, name string, data []byte) {
	t.Helper()
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte(name))
	if err != nil {
		t.Fatal(err)
	}
	w := out.Writer(ctx)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func open(t testing.TB, c *datastream.Client, name string, opts ...datastream.ReadOption) *datastream.Reader {
	t.Helper()
	r, err := c.Open(testCtx(t), name, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

var readSizes = []int{0, 1, 64<<10 - 1, 5<<20 + 3}

// TestRead reads files whole and by ranges, over both transports, with the
// default window and with one small enough that a file takes many
// requests, and checks every byte.
func TestRead(t *testing.T) {
	for _, kind := range []transport.Kind{transport.Gnet, transport.NetConn} {
		t.Run(kind.String(), func(t *testing.T) {
			buffertest.Check(t)
			g, stores := fileGroup(t, 1, kind)
			c := g.client(t, datastream.WithTransport(kind))
			files := make(map[string][]byte)
			for i, n := range readSizes {
				name := fmt.Sprintf("dir/f%d", n)
				files[name] = testkit.RandomBytes(uint64(100+i), n)
				put(t, c, name, files[name])
			}
			for _, window := range [][2]int{{datastream.DefaultReadRequest, datastream.DefaultReadWindow}, {64 << 10, 3}} {
				for name, want := range files {
					r := open(t, c, name, datastream.WithReadWindow(window[0], window[1]))
					sf, _ := stores[0].Lookup(name)
					if info := r.Info(); r.Size() != int64(len(want)) || info.Index != sf.Index || info.Peer != g.peers[0].ID ||
						!bytes.Equal(info.SHA256, sf.SHA256[:]) || info.Name != name || info.Missing {
						t.Fatalf("%s: info %+v, size %d; store has %+v", name, info, r.Size(), sf)
					}
					got, err := io.ReadAll(r)
					if err != nil || !bytes.Equal(got, want) {
						t.Fatalf("%s (window %v): read %d bytes, equal %v, err %v; want %d", name, window, len(got), bytes.Equal(got, want), err, len(want))
					}
					if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
						t.Fatalf("%s: Read after the end: %d, %v", name, n, err)
					}
					checkRanges(t, r, want)
					var buf bytes.Buffer
					w := open(t, c, name, datastream.WithReadWindow(window[0], window[1]))
					if n, err := io.Copy(&buf, w); n != int64(len(want)) || err != nil || !bytes.Equal(buf.Bytes(), want) {
						t.Fatalf("%s: WriteTo: %d bytes, %v", name, n, err)
					}
					w.Close()
					if err := r.Close(); err != nil {
						t.Fatal(err)
					}
					if _, err := r.Read(make([]byte, 1)); err == nil {
						t.Fatalf("%s: Read after Close succeeded", name)
					}
				}
			}
			list, err := c.List(testCtx(t), g.peers[0].ID)
			if err != nil || len(list) != len(files) {
				t.Fatalf("List: %v, %v", list, err)
			}
			for _, fi := range list {
				want, ok := files[fi.Name]
				if sum := sha256.Sum256(want); !ok || fi.Length != uint64(len(want)) || !bytes.Equal(fi.SHA256, sum[:]) || fi.Missing || fi.Index == 0 {
					t.Errorf("List entry %+v", fi)
				}
			}
		})
	}
}

// checkRanges reads random ranges of r with ReadAt, some of them past the
// end, and compares them with want.
func checkRanges(t testing.TB, r *datastream.Reader, want []byte) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(len(want)), 7))
	size := len(want)
	for i := range 12 {
		off := rng.IntN(size + 1)
		n := rng.IntN(size-off+1) + rng.IntN(3) // sometimes past the end
		if i == 0 {
			off, n = 0, size
		}
		p := make([]byte, n)
		got, err := r.ReadAt(p, int64(off))
		wantN := min(n, size-off)
		if got != wantN || !bytes.Equal(p[:got], want[off:off+wantN]) {
			t.Fatalf("ReadAt(%d bytes at %d) of %d: got %d bytes, equal %v, err %v", n, off, size, got, bytes.Equal(p[:got], want[off:off+wantN]), err)
		}
		if wantErr := wantN < n; (err == io.EOF) != wantErr || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(%d bytes at %d) of %d: err %v", n, off, size, err)
		}
	}
	if n, err := r.ReadAt(make([]byte, 1), int64(size)+5); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt past the end: %d, %v", n, err)
	}
}

// Concurrent ReadAt calls on one Reader share its connection.
func TestReadAtConcurrent(t *testing.T) {
	buffertest.Check(t)
	g, _ := fileGroup(t, 1, transport.Gnet)
	c := g.client(t)
	want := testkit.RandomBytes(9, 3<<20+11)
	put(t, c, "c", want)
	r := open(t, c, "c", datastream.WithReadWindow(100<<10, 2))
	errs := make(chan error, 8)
	for w := range 8 {
		go func() {
			off := w * len(want) / 8
			p := make([]byte, len(want)/8)
			n, err := r.ReadAt(p, int64(off))
			if err == nil && !bytes.Equal(p[:n], want[off:off+n]) {
				err = fmt.Errorf("bytes at %d differ", off)
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// A name nobody stored is ErrNotFound from every peer; one whose newest
// entry has no copy is ErrMissing, and the older version it replaced is not
// served.
func TestReadNotFoundAndMissing(t *testing.T) {
	buffertest.Check(t)
	g, stores := fileGroup(t, 1, transport.Gnet)
	c := g.client(t)
	ctx := testCtx(t)
	if _, err := c.Open(ctx, "nope"); !errors.Is(err, datastream.ErrNotFound) {
		t.Fatalf("Open of an unknown name: %v, want ErrNotFound", err)
	}
	old := []byte("the old version")
	put(t, c, "m", old)
	sf, _ := stores[0].Lookup("m")
	// The group commits a newer version of "m" while this peer holds no
	// copy of it.
	newer := statemachine.Entry{
		Index: sf.Index + 10, Term: 1, Key: statemachine.StreamKey{ClientID: "other", StreamID: 1},
		Request: &pb.RaftClientRequest{Type: pb.RaftClientRequest_STREAM, Message: []byte("m")}, Length: 99,
	}
	if err := stores[0].Link(ctx, newer, nil); err != nil {
		t.Fatal(err)
	}
	r, err := c.Open(ctx, "m")
	if !errors.Is(err, datastream.ErrMissing) || r != nil {
		t.Fatalf("Open of a missing copy: %v, %v; want ErrMissing", r, err)
	}
	list, err := c.List(ctx, g.peers[0].ID)
	if err != nil || len(list) != 1 || !list[0].Missing || list[0].Index != newer.Index || len(list[0].SHA256) != 0 {
		t.Fatalf("List: %+v, %v", list, err)
	}
}

func TestReadOptions(t *testing.T) {
	g, _ := fileGroup(t, 1, transport.Gnet)
	c := g.client(t)
	ctx := testCtx(t)
	for _, opts := range [][]datastream.ReadOption{
		{datastream.WithReadPeer("zz")},
		{datastream.WithReadPeer()},
		{datastream.WithReadWindow(0, 1)},
		{datastream.WithReadWindow(1, 0)},
		{datastream.WithReadTimeout(0)},
		{datastream.WithReadAttempts(0)},
	} {
		if r, err := c.Open(ctx, "x", opts...); err == nil {
			r.Close()
			t.Errorf("Open with bad options succeeded")
		}
	}
	if _, err := c.List(ctx, "zz"); err == nil {
		t.Error("List of an unknown peer succeeded")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Open(cctx, "x"); !errors.Is(err, context.Canceled) {
		t.Errorf("Open with a cancelled context: %v", err)
	}
}

// Over TLS the server cannot sendfile: it reads each reply's bytes into a
// buffer off the event loop instead. The bytes are the same.
func TestReadTLS(t *testing.T) {
	buffertest.Check(t)
	ca := testcert.NewCA(t, "read-ca")
	fs, err := statemachine.NewFileStore(t.TempDir(), statemachine.WithLogger(testkit.QuietLogger()), statemachine.WithSyncOnClose(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fs.Close() })
	g := startGroup(t, 1, groupOpts{sm: func(int) statemachine.StateMachine { return fs }, tweak: func(cfg *server.Config) {
		cert := ca.Peer(t, cfg.ID)
		cfg.Transport = transport.NetConn
		cfg.TLS, cfg.PeerTLS = ca.ServerConfig(cert), ca.ClientConfig(cert)
	}})
	c := g.client(t, datastream.WithTLS(ca.ClientConfig(ca.Client(t, "reader"))))
	want := testkit.RandomBytes(31, 5<<20+3)
	put(t, c, "tls", want)
	r := open(t, c, "tls", datastream.WithReadWindow(300<<10, 3))
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read over TLS: %d bytes, equal %v, %v", len(got), bytes.Equal(got, want), err)
	}
	checkRanges(t, r, want)
	if n := g.servers[0].Streams().ReadBytesInFlight(); n != 0 {
		t.Fatalf("%d read bytes accounted after the reads", n)
	}
}
