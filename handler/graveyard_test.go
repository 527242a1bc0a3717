package handler

import (
	"testing"
	"time"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// TestGraveyardBounds: a connection remembers at most maxGraves failures,
// the newest, each for graveTTL, and watches no more ended streams than
// the slack above its open ones.
func TestGraveyardBounds(t *testing.T) {
	s := NewStreams(Config{ID: "p"})
	key := func(i int) StreamKey { return StreamKey{ClientID: "c", StreamID: uint64(i)} }
	var g graveyard
	const n = 4 * maxGraves
	for i := 0; i < n; i++ {
		st := &Stream{Key: key(i)}
		if i%2 == 0 {
			st.failed = errorf(pb.ErrorCode_TIMEOUT, "failure %d", i)
		}
		// None of these streams is in the table: each has ended by the
		// time the next one opens.
		g.opened(st, s)
		if len(g.watch) > 64 {
			t.Fatalf("watching %d ended streams after %d opened", len(g.watch), i+1)
		}
	}
	// The last streams are recorded by this scan, at now; opened's own
	// scans ran earlier, at the time of day.
	now := time.Now()
	g.scan(s, now)
	if len(g.watch) != 0 || len(g.graves) > maxGraves || g.order.Len() > maxGraves {
		t.Fatalf("after the scan: watching %d, %d graves, %d in order; want 0 and at most %d", len(g.watch), len(g.graves), g.order.Len(), maxGraves)
	}
	if e := g.cause(key(n-2), s, now); e == nil || e.Code != pb.ErrorCode_TIMEOUT {
		t.Fatalf("newest failure: %v, want TIMEOUT", e)
	}
	if e := g.cause(key(n-1), s, now); e != nil {
		t.Fatalf("a stream that did not fail: %v, want none", e)
	}
	if e := g.cause(key(0), s, now); e != nil {
		t.Fatalf("oldest failure, evicted by the newer: %v, want none", e)
	}
	if e := g.cause(key(n-2), s, now.Add(graveTTL)); e == nil {
		t.Fatal("a failure forgotten before its time")
	}
	if e := g.cause(key(n-2), s, now.Add(graveTTL+time.Nanosecond)); e != nil {
		t.Fatalf("a failure older than %v: %v, want none", graveTTL, e)
	}
	if _, ok := g.graves[key(n-2)]; ok {
		t.Fatal("an expired grave is still held")
	}
	// Expired graves go as new ones come, whatever their number.
	g.bury(key(n), errorf(pb.ErrorCode_CANCELLED, "late"), now.Add(2*graveTTL))
	if len(g.graves) != 1 || g.order.Len() != 1 {
		t.Fatalf("%d graves, %d in order after every older one expired; want 1", len(g.graves), g.order.Len())
	}
}
