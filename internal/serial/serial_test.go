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

// TestTryRun: four producers each offer tasks with TryRun and submit the
// ones it declines. Every task runs once, each producer's in order, never
// two at once (-race), and the goroutine still ends on Close.
func TestTryRun(t *testing.T) {
	var wg sync.WaitGroup
	var (
		inside int
		last   = map[int]int{}
		ran    int
		inline int
	)
	q := serial.New(func(v [2]int) {
		inside++ // -race flags two tasks running at once
		if inside != 1 {
			t.Errorf("%d tasks at once", inside)
		}
		if prev, ok := last[v[0]]; ok && prev >= v[1] {
			t.Errorf("producer %d: %d ran after %d", v[0], v[1], prev)
		}
		last[v[0]] = v[1]
		ran++
		inside--
	}, &wg)
	var (
		producers sync.WaitGroup
		mu        sync.Mutex // each producer's TryRun-or-Submit is one step
	)
	for p := range 4 {
		producers.Go(func() {
			for i := range 2000 {
				mu.Lock()
				if q.TryRun([2]int{p, i}) {
					inline++
				} else {
					q.Submit([2]int{p, i})
				}
				mu.Unlock()
			}
		})
	}
	producers.Wait()
	q.Close()
	wg.Wait()
	if ran != 8000 {
		t.Fatalf("ran %d tasks, want 8000", ran)
	}
	if inline == 0 {
		t.Fatal("TryRun never ran a task, though the queue was idle at the start")
	}
}

// TestTryRunDefers: a task submitted while another runs inline waits for
// it, and then runs on the goroutine; Close meanwhile does not wake it
// early.
func TestTryRunDefers(t *testing.T) {
	var wg sync.WaitGroup
	release := make(chan struct{})
	entered := make(chan struct{})
	var order []int
	q := serial.New(func(v int) {
		if v == 1 {
			close(entered)
			<-release
		}
		order = append(order, v)
	}, &wg)
	done := make(chan bool)
	go func() { done <- q.TryRun(1) }()
	<-entered
	if q.TryRun(2) {
		t.Fatal("TryRun ran a task while another ran inline")
	}
	q.Submit(2)
	q.Close()
	close(release)
	if !<-done {
		t.Fatal("TryRun on an idle queue did not run its task")
	}
	wg.Wait()
	if len(order) != 2 || order[0] != 1 || order[1] != 2 {
		t.Fatalf("ran %v, want [1 2]", order)
	}
}
