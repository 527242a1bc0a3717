package datastream_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/testkit"
)

// TestWindow holds every reply back behind gated state machines: the
// writer fills the window and blocks instead of queueing more, and the
// bytes in flight never exceed the window.
func TestWindow(t *testing.T) {
	buffertest.Check(t)
	sm, gates := gated(func(int) bool { return true })
	g := startGroup(t, 3, groupOpts{sm: sm})
	t.Cleanup(func() { openAll(gates) })
	const window, packet, packets = 256 << 10, 48 << 10, 40
	c := g.client(t, datastream.WithWindow(window, 100))
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("windowed"))
	if err != nil {
		t.Fatal(err)
	}
	data := testkit.RandomBytes(4, packet*packets)
	done := make(chan error, 1)
	var sent atomic.Int32
	go func() {
		for i := 0; i < packets; i++ {
			out.WriteAsync(ctx, data[i*packet:(i+1)*packet])
			sent.Add(1)
		}
		_, err := out.Close(ctx).Wait(ctx)
		done <- err
	}()
	eventually(t, "the writer to block on the window", func() bool { return datastream.WindowWaits(out) > 0 })
	bytesIn, pkts, peak := out.InFlight()
	if bytesIn > window || peak > window || int(sent.Load()) > window/packet+1 {
		t.Fatalf("in flight: %d bytes in %d packets (peak %d, %d writes returned); window %d", bytesIn, pkts, peak, sent.Load(), window)
	}
	openAll(gates)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, _, peak := out.InFlight(); peak > window {
		t.Fatalf("peak in flight %d > window %d", peak, window)
	}
	g.checkCommitted(t, c, out, data)
}

// TestSend: packets sent without futures land like any other, a Close
// after them commits them all, and a failure reaches the next Send.
func TestSend(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, 3, groupOpts{})
	c := g.client(t, datastream.WithWindow(128<<10, 4))
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("sent"))
	if err != nil {
		t.Fatal(err)
	}
	const packet, packets = 40 << 10, 30
	data := testkit.RandomBytes(9, packet*packets)
	for i := range packets {
		if err := out.Send(ctx, buffer.Copy(data[i*packet:(i+1)*packet])); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	r, err := out.Close(ctx).Wait(ctx)
	if err != nil || r.BytesWritten() != packet*packets {
		t.Fatalf("close: %v, %v", r, err)
	}
	g.checkCommitted(t, c, out, data)
	if err := out.Send(ctx, buffer.Copy(data[:1])); !errors.Is(err, datastream.ErrClosed) {
		t.Fatalf("send after close: %v, want ErrClosed", err)
	}
}

// TestWindowWaiterCancelled: of two writers waiting for a full window, the
// one whose ctx ends returns its ctx's error and leaves nothing behind that
// keeps the other from being woken when the window frees.
func TestWindowWaiterCancelled(t *testing.T) {
	buffertest.Check(t)
	sm, gates := gated(func(int) bool { return true })
	g := startGroup(t, 3, groupOpts{sm: sm})
	t.Cleanup(func() { openAll(gates) })
	c := g.client(t, datastream.WithWindow(1<<20, 1))
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("waiters"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.HeaderFuture().Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// This packet holds the only window slot until the gates open.
	held := out.WriteAsync(ctx, []byte("held"))
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cancelled := make(chan error, 1)
	go func() {
		_, err := out.WriteAsync(cctx, []byte("never")).Wait(ctx)
		cancelled <- err
	}()
	eventually(t, "the first writer to wait", func() bool { return datastream.WindowWaits(out) >= 1 })
	waiting := make(chan error, 1)
	go func() {
		_, err := out.WriteAsync(ctx, []byte("later")).Wait(ctx)
		waiting <- err
	}()
	eventually(t, "the second writer to wait", func() bool { return datastream.WindowWaits(out) >= 2 })
	cancel()
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled writer: %v, want context.Canceled", err)
	}
	openAll(gates)
	if err := <-waiting; err != nil {
		t.Fatalf("waiting writer: %v", err)
	}
	if _, err := held.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := out.Close(ctx).Wait(ctx)
	if err != nil || r.BytesWritten() != uint64(len("held")+len("later")) {
		t.Fatalf("close: %v, %v", r, err)
	}
}

// TestClientWindow holds every reply back and has several streams write at
// once: the packets in flight over all of them stop at the client's bound.
func TestClientWindow(t *testing.T) {
	buffertest.Check(t)
	sm, sms := gated(func(int) bool { return true })
	g := startGroup(t, 3, groupOpts{sm: sm})
	t.Cleanup(func() { openAll(sms) })
	const limit, streams, each = 6, 4, 5
	c := g.client(t, datastream.WithMaxOutstanding(limit, 1<<20))
	ctx := testCtx(t)
	outs := make([]*datastream.Output, streams)
	for i := range outs {
		out, err := c.Stream(ctx, []byte("shared budget"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := out.HeaderFuture().Wait(ctx); err != nil {
			t.Fatal(err)
		}
		outs[i] = out
	}
	var wg sync.WaitGroup
	for _, out := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				out.WriteAsync(ctx, []byte("held"))
			}
		}()
	}
	inFlight := func() int {
		sum := 0
		for _, out := range outs {
			_, n, _ := out.InFlight()
			sum += n
		}
		return sum
	}
	eventually(t, "the client's budget to fill", func() bool {
		if n := inFlight(); n > limit {
			t.Fatalf("%d packets in flight, limit %d", n, limit)
		}
		return inFlight() == limit
	})
	openAll(sms)
	wg.Wait()
	for _, out := range outs {
		if r, err := out.Close(ctx).Wait(ctx); err != nil || r.BytesWritten() != each*4 {
			t.Fatalf("close: %v, %v", r, err)
		}
	}
}
