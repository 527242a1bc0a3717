package fifo_test

import (
	"slices"
	"testing"

	"github.com/pipestream/pipestream/internal/fifo"
)

// The queue hands elements back in order across many rounds of pushes and
// pops, and a steady push-pop rhythm stops allocating once it has room.
func TestQueue(t *testing.T) {
	var q fifo.Queue[int]
	next, want := 0, 0
	for round := range 200 {
		for range round%7 + 1 {
			q.Push(next)
			next++
		}
		for range round % 5 {
			if q.Len() == 0 {
				break
			}
			if v := q.Peek(); v != want {
				t.Fatalf("Peek = %d, want %d", v, want)
			}
			if v := q.Pop(); v != want {
				t.Fatalf("Pop = %d, want %d", v, want)
			}
			want++
		}
	}
	if q.Len() != next-want {
		t.Fatalf("Len = %d, want %d", q.Len(), next-want)
	}
	rest := q.Take()
	for i, v := range rest {
		if v != want+i {
			t.Fatalf("Take()[%d] = %d, want %d", i, v, want+i)
		}
	}
	if q.Len() != 0 {
		t.Fatalf("Len after Take = %d", q.Len())
	}

	for range 8 {
		q.Push(0)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		q.Push(1)
		q.Pop()
	})
	if allocs != 0 {
		t.Fatalf("a push and a pop on a queue of 8 allocate %v times", allocs)
	}
}

// All yields what is queued, oldest first, and leaves it queued.
func TestQueueAll(t *testing.T) {
	var q fifo.Queue[int]
	for i := range 6 {
		q.Push(i)
	}
	q.Pop()
	q.Pop()
	var got []int
	for v := range q.All() {
		got = append(got, v)
	}
	if want := []int{2, 3, 4, 5}; !slices.Equal(got, want) {
		t.Fatalf("All yields %v, want %v", got, want)
	}
	if q.Len() != 4 || q.Peek() != 2 {
		t.Fatalf("after All: Len %d, Peek %d; want 4, 2", q.Len(), q.Peek())
	}
	for v := range q.All() {
		if v == 3 {
			break // an early stop must not panic
		}
	}
}
