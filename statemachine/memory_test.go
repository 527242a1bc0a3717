package statemachine_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"runtime"
	"testing"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

func key(i int) statemachine.StreamKey {
	return statemachine.StreamKey{ClientID: "\x01\x02client", StreamID: uint64(i)}
}

func request(k statemachine.StreamKey, name string) *pb.RaftClientRequest {
	return &pb.RaftClientRequest{
		ClientId: []byte(k.ClientID), CallId: k.StreamID,
		Type: pb.RaftClientRequest_STREAM, Message: []byte(name),
	}
}

func entry(index uint64, k statemachine.StreamKey, name string, length int) statemachine.Entry {
	return statemachine.Entry{Index: index, Term: 1, Key: k, Request: request(k, name), Length: uint64(length)}
}

// write opens a stream on sm and writes chunks to it, failing t on error.
func write(t testing.TB, sm statemachine.StateMachine, k statemachine.StreamKey, name string, chunks ...string) statemachine.DataChannel {
	t.Helper()
	ch, err := sm.OpenStream(context.Background(), k, request(k, name))
	if err != nil {
		t.Fatalf("OpenStream(%v): %v", k, err)
	}
	for _, c := range chunks {
		if n, err := ch.Write([]byte(c)); n != len(c) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", c, n, err)
		}
	}
	return ch
}

func mustLink(t testing.TB, sm statemachine.StateMachine, e statemachine.Entry, ch statemachine.DataChannel) {
	t.Helper()
	if err := sm.Link(context.Background(), e, ch); err != nil {
		t.Fatalf("Link(%d, %v): %v", e.Index, e.Key, err)
	}
}

func TestMemoryWriteSyncCloseLink(t *testing.T) {
	for _, tc := range []struct {
		name string
		new  func() *statemachine.Memory
	}{
		{"bytes", statemachine.NewMemory},
		{"hashing", statemachine.NewMemoryHashing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.new()
			k := key(1)
			ch := write(t, m, k, "", "hello, ", "world")
			if err := ch.Sync(); err != nil {
				t.Fatal(err)
			}
			if err := ch.Close(); err != nil {
				t.Fatal(err)
			}
			if got := m.Open(); got != 1 {
				t.Fatalf("Open() before Link = %d, want 1", got)
			}
			if _, ok := m.Sum(k); ok {
				t.Fatal("Sum reports a stream that is not linked")
			}
			e := entry(7, k, "", 12)
			mustLink(t, m, e, ch)

			if got := m.Committed(); len(got) != 1 || got[0].Index != 7 || got[0].Key != k || got[0].Length != 12 {
				t.Fatalf("Committed() = %+v", got)
			}
			if sum, ok := m.Sum(k); !ok || sum != sha256.Sum256([]byte("hello, world")) {
				t.Fatalf("Sum = %x, %v", sum, ok)
			}
			data, ok := m.Data(k)
			if tc.name == "hashing" {
				if ok {
					t.Fatalf("Data of a hashing Memory = %q, true", data)
				}
			} else if !ok || string(data) != "hello, world" {
				t.Fatalf("Data = %q, %v", data, ok)
			}
			if m.Open() != 0 || m.CleanedUp() != 0 || m.Syncs() != 1 || m.Missing() != 0 {
				t.Fatalf("Open %d CleanedUp %d Syncs %d Missing %d, want 0 0 1 0", m.Open(), m.CleanedUp(), m.Syncs(), m.Missing())
			}
			if err := ch.CleanUp(); err != nil || m.CleanedUp() != 0 {
				t.Fatalf("CleanUp after Link = %v, CleanedUp %d; want a no-op", err, m.CleanedUp())
			}
		})
	}
}

func TestMemoryEmptyStream(t *testing.T) {
	m := statemachine.NewMemory()
	ch := write(t, m, key(1), "")
	mustLink(t, m, entry(1, key(1), "", 0), ch)
	if data, ok := m.Data(key(1)); !ok || len(data) != 0 {
		t.Fatalf("Data = %q, %v; want empty, true", data, ok)
	}
}

func TestMemoryCleanUp(t *testing.T) {
	m := statemachine.NewMemory()
	ch := write(t, m, key(1), "", "doomed")
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := ch.CleanUp(); err != nil {
			t.Fatal(err)
		}
	}
	if m.Open() != 0 || m.CleanedUp() != 1 {
		t.Fatalf("Open %d CleanedUp %d, want 0 1", m.Open(), m.CleanedUp())
	}
	if _, err := ch.Write([]byte("x")); !errors.Is(err, statemachine.ErrChannelClosed) {
		t.Fatalf("Write after CleanUp = %v, want ErrChannelClosed", err)
	}
	// The data is gone: a late link records the entry with nothing behind it.
	mustLink(t, m, entry(1, key(1), "", 6), ch)
	if _, ok := m.Sum(key(1)); ok || m.Missing() != 1 || len(m.Committed()) != 1 {
		t.Fatalf("after linking a cleaned-up channel: Sum ok %v Missing %d Committed %d", ok, m.Missing(), len(m.Committed()))
	}
}

func TestMemoryLinkReplay(t *testing.T) {
	m := statemachine.NewMemory()
	ch := write(t, m, key(1), "", "data")
	mustLink(t, m, entry(1, key(1), "", 4), ch)
	mustLink(t, m, entry(1, key(1), "", 4), nil) // replay of a linked entry
	mustLink(t, m, entry(2, key(2), "", 9), nil) // this peer held no data
	mustLink(t, m, entry(2, key(2), "", 9), nil) // and its replay

	got := m.Committed()
	if len(got) != 2 || got[0].Key != key(1) || got[1].Key != key(2) {
		t.Fatalf("Committed() = %+v, want streams 1 and 2", got)
	}
	if m.Missing() != 1 {
		t.Fatalf("Missing() = %d, want 1", m.Missing())
	}
	if _, ok := m.Data(key(2)); ok {
		t.Fatal("Data reports a stream linked with no data")
	}
	if data, _ := m.Data(key(1)); string(data) != "data" {
		t.Fatalf("replay changed stream 1: %q", data)
	}

	// A second channel for a linked key is discarded: the first link wins.
	dup := write(t, m, key(1), "", "other")
	mustLink(t, m, entry(3, key(1), "", 5), dup)
	if data, _ := m.Data(key(1)); string(data) != "data" || m.CleanedUp() != 1 || m.Open() != 0 {
		t.Fatalf("after a duplicate link: Data %q CleanedUp %d Open %d", data, m.CleanedUp(), m.Open())
	}
}

func TestMemoryErrors(t *testing.T) {
	ctx := context.Background()
	other := statemachine.NewMemory()
	for _, tc := range []struct {
		name string
		run  func(m *statemachine.Memory) error
		want error // nil: any error
	}{
		{"length mismatch", func(m *statemachine.Memory) error {
			return m.Link(ctx, entry(1, key(1), "", 99), write(t, m, key(1), "", "short"))
		}, statemachine.ErrLengthMismatch},
		{"entry for another stream", func(m *statemachine.Memory) error {
			return m.Link(ctx, entry(1, key(2), "", 5), write(t, m, key(1), "", "hello"))
		}, nil},
		{"channel of another Memory", func(m *statemachine.Memory) error {
			return m.Link(ctx, entry(1, key(1), "", 5), write(t, other, key(1), "", "hello"))
		}, nil},
		{"duplicate open", func(m *statemachine.Memory) error {
			write(t, m, key(1), "")
			_, err := m.OpenStream(ctx, key(1), request(key(1), ""))
			return err
		}, statemachine.ErrDuplicateStream},
		{"write after close", func(m *statemachine.Memory) error {
			ch := write(t, m, key(1), "")
			ch.Close()
			_, err := ch.Write([]byte("x"))
			return err
		}, statemachine.ErrChannelClosed},
		{"sync after close", func(m *statemachine.Memory) error {
			ch := write(t, m, key(1), "")
			ch.Close()
			return ch.Sync()
		}, statemachine.ErrChannelClosed},
		{"close after clean-up", func(m *statemachine.Memory) error {
			ch := write(t, m, key(1), "")
			ch.CleanUp()
			return ch.Close()
		}, statemachine.ErrChannelClosed},
		{"cancelled context", func(m *statemachine.Memory) error {
			ctx, cancel := context.WithCancel(ctx)
			cancel()
			_, err := m.OpenStream(ctx, key(1), request(key(1), ""))
			return err
		}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := statemachine.NewMemory()
			err := tc.run(m)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if len(m.Committed()) != 0 {
				t.Fatalf("a failed call committed %+v", m.Committed())
			}
		})
	}
}

func TestMemoryConcurrentStreams(t *testing.T) {
	const streams = 50
	m := statemachine.NewMemory()
	content := streamConcurrently(t, m, streams, 20, func(int) string { return "" },
		func() { _, _ = m.Open(), m.Committed() })

	if got := len(m.Committed()); got != streams {
		t.Fatalf("Committed %d streams, want %d", got, streams)
	}
	for i := range streams {
		if data, ok := m.Data(key(i)); !ok || !bytes.Equal(data, content(i)) {
			t.Errorf("stream %d: got %d bytes, ok %v", i, len(data), ok)
		}
	}
	if m.Open() != 0 {
		t.Fatalf("Open() = %d after every stream linked", m.Open())
	}
}

func BenchmarkMemoryHashingWrite(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			benchmarkWrite(b, statemachine.NewMemoryHashing(), size)
		})
	}
}

// A large stream grows by chunks: what Memory allocates to write and link
// it stays close to its size, where growing one slice allocates twice that
// and copies it over and over.
func TestMemoryLargeStreamAllocations(t *testing.T) {
	const size = 64 << 20
	m := statemachine.NewMemory()
	ch := write(t, m, key(1), "big")
	p := make([]byte, 100<<10+7) // not a divisor of the chunk size
	for i := range p {
		p[i] = byte(i)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	written := 0
	for written < size {
		n, err := ch.Write(p[:min(len(p), size-written)])
		if err != nil {
			t.Fatal(err)
		}
		written += n
	}
	mustLink(t, m, entry(1, key(1), "big", size), ch)
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > size+size/10 {
		t.Errorf("writing and linking %d bytes allocated %d", size, got)
	}
	data, ok := m.Data(key(1))
	if !ok || len(data) != size {
		t.Fatalf("Data: %d bytes, %v", len(data), ok)
	}
	for i := 0; i < size; i += len(p) {
		if !bytes.Equal(data[i:min(i+len(p), size)], p[:min(len(p), size-i)]) {
			t.Fatalf("data differs in the write at %d", i)
		}
	}
	if sum, _ := m.Sum(key(1)); sum != sha256.Sum256(data) {
		t.Fatal("Sum is not the data's")
	}
}

// BenchmarkMemoryLargeStream writes and links a 256 MiB stream; its B/op
// is what Memory allocates to keep one, which chunked growth holds near
// 256 MiB.
func BenchmarkMemoryLargeStream(b *testing.B) {
	const size = 256 << 20
	p := make([]byte, 1<<20+7) // not a divisor of the chunk size
	b.ReportAllocs()
	b.SetBytes(size)
	i := 0
	for b.Loop() {
		i++
		m := statemachine.NewMemory()
		ch := write(b, m, key(i), "big")
		for written := 0; written < size; {
			n, err := ch.Write(p[:min(len(p), size-written)])
			if err != nil {
				b.Fatal(err)
			}
			written += n
		}
		mustLink(b, m, entry(uint64(i), key(i), "big", size), ch)
	}
}
