package transport_test

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/pipestream/pipestream/transport"
)

// TestIdleConnectionsHoldNoWriter: the writer goroutine runs only while a
// connection has bytes to send. Once every connection has echoed a
// message and gone quiet, no writer goroutine is left; on gnet, whose
// reads run on its event loops, an idle connection then holds no goroutine
// at all, on either end.
func TestIdleConnectionsHoldNoWriter(t *testing.T) {
	const conns = 40
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		s := listen(t, k, echoServer(8))
		d := dialerFor(t, k)
		// The dialer's and the server's own goroutines (event loops,
		// accept loops) come with their first connection.
		got := make(chan string, 1)
		dial(t, d, s.Addr().String(), collect(8, got))
		before := settle(t, 0)
		for i := range conns {
			ch := dial(t, d, s.Addr().String(), collect(8, got))
			msg := fmt.Sprintf("conn-%03d", i)
			if err := ch.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			if err := ch.Flush(); err != nil {
				t.Fatal(err)
			}
			if m := recv(t, got, "echo"); m != msg {
				t.Fatalf("echo = %q, want %q", m, msg)
			}
		}
		after := settle(t, 0)
		t.Logf("%s: %d goroutines with 1 idle connection, %d with %d more", k, before, after, conns)
		if k.String() == "gnet" && after-before >= conns {
			t.Errorf("%d idle gnet connections added %d goroutines, want none per connection", conns, after-before)
		}
	})
}

// settle waits, bounded, until at most want writer goroutines run, and
// returns the number of goroutines then.
func settle(t *testing.T, want int) int {
	t.Helper()
	deadline := time.Now().Add(patience)
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		writers := bytes.Count(buf[:n], []byte("transport.(*writer).loop("))
		if writers <= want {
			return runtime.NumGoroutine()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writer goroutines still run on idle connections, want %d", writers, want)
		}
		time.Sleep(time.Millisecond)
	}
}
