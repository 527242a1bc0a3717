package handler

import (
	"sync"
	"testing"
	"time"
)

// idleStream is a stream opened at opened, as newStream leaves its idle
// tracking.
func idleStream(opened time.Time) *Stream {
	st := &Stream{opened: opened}
	st.lastActive.Store(opened.UnixNano())
	return st
}

// Without packets a stream is idle from its open; a packet's mark is
// stamped by the next sweep with the clock, never with a sweep's own now,
// so that a now read before the packet, or set ahead of the clock, cannot
// make the stream look idle for longer than it was.
func TestIdleFor(t *testing.T) {
	opened := time.Now().Add(-time.Hour)
	st := idleStream(opened)
	if got := st.idleFor(opened.Add(time.Minute)); got != time.Minute {
		t.Fatalf("idle a minute after the open: %v", got)
	}

	st.touch()
	packet := time.Now()
	// A sweep whose now was read before the packet.
	if got := st.idleFor(packet.Add(-time.Second)); got > -time.Second {
		t.Fatalf("sweep from a second before the packet: idle %v, want the stamp at or after the packet", got)
	}
	// The stamp stays: a later sweep counts from it.
	if got := st.idleFor(packet.Add(time.Hour)); got > time.Hour || got < time.Hour-time.Minute {
		t.Fatalf("sweep an hour after the packet: idle %v, want just under an hour", got)
	}

	// A sweep with a now far ahead of the clock stamps the clock's time.
	st.touch()
	ahead := time.Now().Add(24 * time.Hour)
	st.idleFor(ahead)
	if got := st.idleFor(time.Now()); got > time.Minute {
		t.Fatalf("after a sweep set a day ahead, a sweep now finds the stream idle %v", got)
	}
}

// Sweeps that race each other and the packets agree: a busy stream never
// looks idle, whichever sweep stamps its mark.
func TestIdleForConcurrentSweeps(t *testing.T) {
	st := idleStream(time.Now().Add(-time.Hour))
	st.touch() // the first packet, before any sweep
	const rounds = 20000
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // the packets
		for {
			select {
			case <-stop:
				return
			default:
				st.touch()
			}
		}
	})
	errs := make(chan time.Duration, 2)
	var sweeps sync.WaitGroup
	for range 2 {
		sweeps.Go(func() {
			for range rounds {
				if idle := st.idleFor(time.Now()); idle > time.Minute {
					errs <- idle
					return
				}
			}
		})
	}
	sweeps.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for idle := range errs {
		t.Errorf("a stream marked all along looked idle for %v", idle)
	}
}
