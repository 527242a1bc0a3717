// Package ratelimit paces bulk background work (repairs, scrubs) to a
// number of bytes per second, so that healing a replica does not starve
// the streams the peer serves.
package ratelimit

import (
	"context"
	"sync"
	"time"
)

// Limiter is a token bucket of bytes. The zero value, and a nil *Limiter,
// do not limit. It is safe for concurrent use: goroutines that share it
// share its rate.
type Limiter struct {
	rate  float64 // bytes per second
	burst float64

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// New returns a Limiter of bytesPerSecond, which may send up to one
// second's worth at once. A rate of zero or less does not limit.
func New(bytesPerSecond int64) *Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	r := float64(bytesPerSecond)
	return &Limiter{rate: r, burst: r, tokens: r}
}

// Wait blocks until n bytes may go, or ctx is done. n may exceed the
// burst: the wait then runs the bucket into debt, which later calls pay.
func (l *Limiter) Wait(ctx context.Context, n int) error {
	if l == nil || l.rate == 0 {
		return ctx.Err()
	}
	l.mu.Lock()
	now := time.Now()
	if !l.last.IsZero() {
		l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	}
	l.last = now
	l.tokens -= float64(n)
	wait := time.Duration(0)
	if l.tokens < 0 {
		wait = time.Duration(-l.tokens / l.rate * float64(time.Second))
	}
	l.mu.Unlock()
	if wait == 0 {
		return ctx.Err()
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
