package transport_test

import (
	"io"
	"net"
	"runtime"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/internal/testkit"
	"github.com/pipestream/pipestream/transport"
)

// TestWriteAllocatesNothing: sending a pooled buffer costs no allocation
// once the pools are warm, also when each write finds the writer stopped
// and has to start it again, as every packet of a stream that waits for
// its reply does.
func TestWriteAllocatesNothing(t *testing.T) {
	if testkit.Race {
		t.Skip("the race detector allocates when a goroutine starts; .ci/run runs this test without it")
	}
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				accepted <- c
			}
			close(accepted)
		}()
		ch := dial(t, dialerFor(t, k), ln.Addr().String(), func(transport.Channel) {})
		peer := recv(t, accepted, "the accepted connection")
		if peer == nil {
			t.Fatal("accept failed")
		}
		defer peer.Close()

		const size = 4 << 10
		got := make([]byte, size)
		send := func() {
			b := buffer.Get(size)
			if err := ch.Write(b); err != nil {
				t.Fatal(err)
			}
			if err := ch.Flush(); err != nil {
				t.Fatal(err)
			}
			// Each write is read before the next is made, so that the
			// writer has stopped, or is about to, when the next comes.
			if _, err := io.ReadFull(peer, got); err != nil {
				t.Fatal(err)
			}
		}
		// testing.AllocsPerRun rounds down, which would pass a write that
		// allocates only sometimes; the mallocs of the whole process are
		// counted instead, over enough writes that a stray allocation
		// elsewhere stays far below the bound.
		const writes = 500
		send() // warm the pools
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range writes {
			send()
		}
		runtime.ReadMemStats(&after)
		if n := float64(after.Mallocs-before.Mallocs) / writes; n >= 0.1 {
			t.Errorf("%s: %.2f allocations per write, want 0", k, n)
		}
	})
}
