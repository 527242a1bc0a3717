package transport_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/internal/testcert"
	"github.com/pipestream/pipestream/pipeline"
	"github.com/pipestream/pipestream/transport"
)

// BenchmarkEcho measures echo throughput over loopback: one client writes
// length-prefixed messages from its own goroutine, flushing each, with up
// to 4 MiB in flight; the server echoes them. One op is one message there
// and back; allocations count both sides. The netconn-tls variant is the
// net.Conn transport with mutual TLS (TLS 1.3, ECDSA P-256 certificates),
// so one run prices encryption against both plaintext transports.
func BenchmarkEcho(b *testing.B) {
	ca := testcert.NewCA(b, "bench-ca")
	variants := []struct {
		name         string
		kind         transport.Kind
		server, dial []transport.Option
	}{
		{name: "gnet", kind: transport.Gnet},
		{name: "netconn", kind: transport.NetConn},
		{
			name:   "netconn-tls",
			kind:   transport.NetConn,
			server: []transport.Option{transport.WithTLS(ca.ServerConfig(ca.Peer(b, "server")))},
			dial:   []transport.Option{transport.WithTLS(ca.ClientConfig(ca.Client(b, "client")))},
		},
	}
	for _, v := range variants {
		for _, size := range []int{1 << 10, 64 << 10, 1 << 20} {
			name := fmt.Sprintf("%s/%dKiB", v.name, size>>10)
			b.Run(name, func(b *testing.B) { benchEcho(b, v.kind, size, v.server, v.dial) })
		}
	}
}

func benchEcho(b *testing.B, k transport.Kind, size int, serverOpts, dialOpts []transport.Option) {
	s := listen(b, k, func(ch transport.Channel) {
		addFraming(b, ch.Pipeline())
		_ = ch.Pipeline().AddLast("echo", echo{})
	}, serverOpts...)
	window := make(chan struct{}, max(4, 4<<20/size))
	done := make(chan struct{})
	received := 0 // on the client's inbound goroutine only
	ch := dial(b, dialerFor(b, k, dialOpts...), s.Addr().String(), func(ch transport.Channel) {
		addFraming(b, ch.Pipeline())
		_ = ch.Pipeline().AddLast("sink", pipeline.Inbound(func(_ *pipeline.Context, m *buffer.Buf) {
			m.Release()
			<-window
			if received++; received == b.N {
				close(done)
			}
		}))
	})
	p := ch.Pipeline()

	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		window <- struct{}{}
		if err := p.Write(buffer.Get(size)); err != nil {
			b.Fatal(err)
		}
		if err := p.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	waitFor(b, done, "the last echo")
}

// BenchmarkDialConn measures setting up and tearing down one net.Conn
// connection, plain and with a mutual TLS 1.3 handshake (ECDSA P-256): the
// price paid once per connection, which clients and peers keep open.
func BenchmarkDialConn(b *testing.B) {
	ca := testcert.NewCA(b, "bench-ca")
	for _, v := range []struct {
		name         string
		server, dial []transport.Option
	}{
		{name: "plain"},
		{
			name:   "mtls",
			server: []transport.Option{transport.WithTLS(ca.ServerConfig(ca.Peer(b, "server")))},
			dial:   []transport.Option{transport.WithTLS(ca.ClientConfig(ca.Client(b, "client")))},
		},
	} {
		b.Run(v.name, func(b *testing.B) {
			s := listen(b, transport.NetConn, nil, v.server...)
			d := dialerFor(b, transport.NetConn, v.dial...)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				ch, err := d(ctx, s.Addr().String(), nil)
				if err != nil {
					b.Fatal(err)
				}
				_ = ch.Close()
				<-ch.Done()
			}
		})
	}
}
