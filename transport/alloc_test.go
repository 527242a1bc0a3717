package transport_test

import (
	"io"
	"net"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/transport"
)

// TestWriteAllocatesNothing: sending a pooled buffer costs no allocation
// once the pools are warm, also when each write finds the writer stopped
// and has to start it again, as every packet of a stream that waits for
// its reply does.
func TestWriteAllocatesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("counts the allocations of the whole process")
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
		if n := testing.AllocsPerRun(200, send); n > 0 {
			t.Errorf("%s: %.2f allocations per write, want 0", k, n)
		}
	})
}
