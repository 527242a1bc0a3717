package ratelimit_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pipestream/pipestream/internal/ratelimit"
)

func TestNoLimit(t *testing.T) {
	for _, l := range []*ratelimit.Limiter{nil, ratelimit.New(0), ratelimit.New(-1)} {
		if err := l.Wait(context.Background(), 1<<40); err != nil {
			t.Fatal(err)
		}
	}
}

// What goes past the burst is owed: the wait for it is at least the debt
// at the rate (timing only bounds it from below, which a slow machine
// cannot break).
func TestWaitPaysDebt(t *testing.T) {
	l := ratelimit.New(1 << 20) // 1 MiB/s, burst 1 MiB
	start := time.Now()
	if err := l.Wait(context.Background(), 1<<20); err != nil { // the burst
		t.Fatal(err)
	}
	if err := l.Wait(context.Background(), 256<<10); err != nil { // owed
		t.Fatal(err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("1.25 MiB at 1 MiB/s went in %v", d)
	}
}

func TestWaitCancelled(t *testing.T) {
	l := ratelimit.New(1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Wait(ctx, 1<<20); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait = %v, want Canceled", err)
	}
}
