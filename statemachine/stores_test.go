package statemachine_test

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"github.com/pipestream/pipestream/statemachine"
)

// streamConcurrently writes streams streams into sm at once, each in
// chunks writes of 100 bytes, then closes stream i and links it as entry
// i+1 under name(i). query runs after every write and link, so that the
// store's queries race with its writers. It returns what stream i holds.
func streamConcurrently(t *testing.T, sm statemachine.StateMachine, streams, chunks int, name func(int) string, query func()) (content func(int) []byte) {
	t.Helper()
	content = func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 100*chunks) }
	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() {
			k := key(i)
			ch, err := sm.OpenStream(context.Background(), k, request(k, name(i)))
			if err != nil {
				t.Error(err)
				return
			}
			data := content(i)
			for c := range chunks {
				if _, err := ch.Write(data[c*100 : (c+1)*100]); err != nil {
					t.Error(err)
				}
				query()
			}
			if err := ch.Close(); err != nil {
				t.Error(err)
			}
			if err := sm.Link(context.Background(), entry(uint64(i+1), k, name(i), len(data)), ch); err != nil {
				t.Error(err)
			}
			query()
		})
	}
	wg.Wait()
	return content
}

// benchmarkWrite measures writes of size bytes into one stream of sm.
func benchmarkWrite(b *testing.B, sm statemachine.StateMachine, size int) {
	ch, err := sm.OpenStream(context.Background(), key(1), request(key(1), "bench"))
	if err != nil {
		b.Fatal(err)
	}
	p := make([]byte, size)
	b.ReportAllocs()
	b.SetBytes(int64(size))
	for b.Loop() {
		if _, err := ch.Write(p); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	ch.CleanUp()
}
