package netlab_test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pipestream/pipestream/internal/netlab"
)

// BenchmarkRate is the sanity bound on shaping: one TCP connection from a
// host with an egress limit to another, through the switch. One op is
// 1 MiB; of-rate is the payload rate as a fraction of the limit (TCP/IP
// headers take about 3% of it), unlimited is the same link with no limit,
// the machine's own bound on one connection.
//
//	go test -run '^$' -bench Rate ./internal/netlab
func BenchmarkRate(b *testing.B) {
	for _, rate := range []netlab.Rate{200 * netlab.Mbit, netlab.Gbit, 10 * netlab.Gbit, 0} {
		b.Run(rate.String(), func(b *testing.B) {
			lab := netlab.New(b, netlab.Config{Hosts: []string{"tx", "rx"}, Rate: rate})
			ln, err := lab.Host("rx").Listen("tcp", "")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			done := make(chan int64, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					done <- 0
					return
				}
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				_, _ = c.Write([]byte{1}) // all of it arrived
				done <- n
			}()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			conn, err := lab.Host("tx").DialContext(ctx, "tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			buf := make([]byte, 1<<20)
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				if _, err := conn.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			_ = conn.(*net.TCPConn).CloseWrite()
			if _, err := io.ReadFull(conn, buf[:1]); err != nil {
				b.Fatal(err)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			if n := <-done; n != int64(b.N)*int64(len(buf)) {
				b.Fatalf("received %d bytes, sent %d", n, b.N*len(buf))
			}
			if rate > 0 {
				bits := float64(b.N) * float64(len(buf)) * 8
				b.ReportMetric(bits/elapsed.Seconds()/float64(rate), "of-rate")
			}
		})
	}
}
