package serial_test

import (
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/pipestream/pipestream/internal/serial"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestOrderAndExclusion(t *testing.T) {
	var wg sync.WaitGroup
	var got []int
	var inside int
	q := serial.New(func(v int) {
		inside++ // -race flags two tasks running at once
		got = append(got, v)
		inside--
	}, &wg)
	const n = 10000
	for i := 0; i < n; i++ {
		q.Submit(i)
	}
	q.Close()
	wg.Wait()
	if len(got) != n {
		t.Fatalf("ran %d tasks, want %d", len(got), n)
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("task %d ran at position %d", v, i)
		}
	}
}

func TestConcurrentSubmitters(t *testing.T) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	last := map[int]int{}
	q := serial.New(func(v [2]int) {
		mu.Lock()
		defer mu.Unlock()
		if prev, ok := last[v[0]]; ok && prev >= v[1] {
			t.Errorf("submitter %d: %d ran after %d", v[0], v[1], prev)
		}
		last[v[0]] = v[1]
	}, &wg)
	var subs sync.WaitGroup
	for s := 0; s < 4; s++ {
		subs.Add(1)
		go func() {
			defer subs.Done()
			for i := 0; i < 2000; i++ {
				q.Submit([2]int{s, i})
			}
		}()
	}
	subs.Wait()
	q.Close()
	wg.Wait()
	for s := 0; s < 4; s++ {
		if last[s] != 1999 {
			t.Fatalf("submitter %d: last task %d", s, last[s])
		}
	}
}

func BenchmarkSubmit(b *testing.B) {
	var wg sync.WaitGroup
	q := serial.New(func(int) {}, &wg)
	b.ReportAllocs()
	for b.Loop() {
		q.Submit(1)
	}
	q.Close()
	wg.Wait()
}

// TestParkAndClose: the goroutine waits for work between bursts, ends on
// Close after running what was queued, and a Submit after Close still runs.
func TestParkAndClose(t *testing.T) {
	var wg sync.WaitGroup
	ran := make(chan int, 10)
	q := serial.New(func(v int) { ran <- v }, &wg)
	q.Submit(1)
	if v := <-ran; v != 1 {
		t.Fatalf("ran %d", v)
	}
	q.Submit(2) // wakes the parked goroutine
	if v := <-ran; v != 2 {
		t.Fatalf("ran %d", v)
	}
	q.Close()
	wg.Wait() // ends: nothing is left to run
	q.Submit(3)
	wg.Wait()
	if v := <-ran; v != 3 {
		t.Fatalf("after Close ran %d", v)
	}
}
