package transport_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"testing"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/transport"
)

func TestGnetRefusesTLS(t *testing.T) {
	cfg := transport.WithTLS(&tls.Config{})
	if _, err := transport.Listen(context.Background(), "127.0.0.1:0", nil, cfg); err == nil {
		t.Error("Listen with TLS succeeded")
	}
	if _, err := transport.NewDialer(cfg); err == nil {
		t.Error("NewDialer with TLS succeeded")
	}
}

// A connector's Close ends every channel it dialed before it returns, of
// every kind; a gnet Dialer's channels share its loops.
func TestConnectorClose(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		buffertest.Check(t)
		s := listen(t, k, echoServer(8))
		d, err := k.NewConnector(quiet, transport.WithEventLoops(2))
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 10)
		var cs []transport.Channel
		for i := range 10 {
			ch, err := d.Dial(context.Background(), s.Addr().String(), collect(8, got))
			if err != nil {
				t.Fatal(err)
			}
			_ = ch.Write(fmt.Appendf(nil, "client%02d", i))
			_ = ch.Flush()
			cs = append(cs, ch)
		}
		for range 10 {
			recv(t, got, "echo")
		}
		// One channel ends before Close: Close must not wait for it
		// again nor miss the others.
		_ = cs[0].Close()
		waitFor(t, cs[0].Done(), "first channel to end")
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		for i, ch := range cs {
			select {
			case <-ch.Done():
			default:
				t.Errorf("channel %d not done when Close returned", i)
			}
		}
		if _, err := d.Dial(context.Background(), s.Addr().String(), nil); !errors.Is(err, transport.ErrClosed) {
			t.Errorf("Dial after Close = %v, want ErrClosed", err)
		}
		if err := d.Close(); err != nil {
			t.Errorf("second Close = %v", err)
		}
	})
}

// A connector closed before it dialed anything refuses to dial.
func TestConnectorDialAfterCloseFails(t *testing.T) {
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		d, err := k.NewConnector(quiet)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		s := listen(t, k, nil)
		if _, err := d.Dial(context.Background(), s.Addr().String(), nil); !errors.Is(err, transport.ErrClosed) {
			t.Errorf("Dial after Close = %v, want ErrClosed", err)
		}
	})
}
