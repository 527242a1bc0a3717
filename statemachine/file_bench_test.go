package statemachine_test

import (
	"context"
	"testing"
)

func BenchmarkFileStoreWrite(b *testing.B) {
	benchmarkWrite(b, openStore(b, b.TempDir(), nil), 1<<20)
}

// BenchmarkFileStoreStream is a whole 4 MiB stream: open, write, close (with
// its fsync), link (with the log's and the directory's fsyncs).
func BenchmarkFileStoreStream(b *testing.B) {
	s := openStore(b, b.TempDir(), nil)
	p := make([]byte, 1<<20)
	const size = 4 << 20
	b.ReportAllocs()
	b.SetBytes(size)
	i := 0
	for b.Loop() {
		i++
		k := key(i)
		ch, err := s.OpenStream(context.Background(), k, request(k, "bench"))
		if err != nil {
			b.Fatal(err)
		}
		for range size / len(p) {
			if _, err := ch.Write(p); err != nil {
				b.Fatal(err)
			}
		}
		if err := ch.Close(); err != nil {
			b.Fatal(err)
		}
		if err := s.Link(context.Background(), entry(uint64(i), k, "bench", size), ch); err != nil {
			b.Fatal(err)
		}
	}
}
