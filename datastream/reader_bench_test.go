package datastream_test

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/testkit"
	"github.com/pipestream/pipestream/transport"
)

// benchReadSize is the file BenchmarkRead reads: large enough that opening
// it is a small part of each read.
const benchReadSize = 64 << 20

// BenchmarkRead reads one committed file from one peer, whole, and the same
// bytes as a raw file-to-socket send in the same process (io.Copy from an
// os.File to a TCP connection, which is sendfile(2) on Linux): the floor of
// what serving a file over TCP costs. The ratio of the two is the read
// path's efficiency (the goal is at least 0.8).
func BenchmarkRead(b *testing.B) {
	data := testkit.RandomBytes(42, benchReadSize)
	for _, kind := range []transport.Kind{transport.Gnet, transport.NetConn} {
		b.Run("pipestream/"+kind.String(), func(b *testing.B) {
			g, _ := fileGroup(b, 1, kind)
			c := g.client(b, datastream.WithTransport(kind))
			put(b, c, "bench", data)
			b.SetBytes(benchReadSize)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				r, err := c.Open(testCtx(b), "bench")
				if err != nil {
					b.Fatal(err)
				}
				if n, err := io.Copy(io.Discard, r); err != nil || n != benchReadSize {
					b.Fatalf("read %d bytes: %v", n, err)
				}
				r.Close()
			}
		})
	}
	b.Run("raw-sendfile", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "bench")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			b.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		done := make(chan error, 1)
		go func() {
			// One connection; each byte the client sends asks for the file.
			conn, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			defer conn.Close()
			var req [1]byte
			for {
				if _, err := conn.Read(req[:]); err != nil {
					done <- nil
					return
				}
				f, err := os.Open(path)
				if err != nil {
					done <- err
					return
				}
				_, err = io.Copy(conn, f)
				f.Close()
				if err != nil {
					done <- err
					return
				}
			}
		}()
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		b.SetBytes(benchReadSize)
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if _, err := conn.Write([]byte{1}); err != nil {
				b.Fatal(err)
			}
			for n := 0; n < benchReadSize; {
				m, err := conn.Read(buf)
				if err != nil {
					b.Fatal(err)
				}
				n += m
			}
		}
		b.StopTimer()
		conn.Close()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	})
}
