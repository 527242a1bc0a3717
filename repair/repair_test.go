package repair_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/leaktest"
	"github.com/pipestream/pipestream/repair"
	"github.com/pipestream/pipestream/statemachine"
)

func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }

// fakeStore lists missing entries; Repair is never reached by these tests
// (their source fails), which the store checks.
type fakeStore struct {
	t       *testing.T
	mu      sync.Mutex
	missing []statemachine.StoredFile
}

func (s *fakeStore) MissingEntries() []statemachine.StoredFile {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]statemachine.StoredFile(nil), s.missing...)
}

func (s *fakeStore) Repair(context.Context, statemachine.StoredFile, io.Reader, [32]byte, statemachine.Pacer) error {
	s.t.Error("Repair called with a source that cannot open")
	return nil
}

// failingSource fails every Open, counting the calls in flight at once.
type failingSource struct {
	calls, inFlight, peak atomic.Int32
	hold                  time.Duration
}

var errDown = errors.New("peer down")

func (s *failingSource) Open(ctx context.Context, _ string, _ ...datastream.ReadOption) (*datastream.Reader, error) {
	s.calls.Add(1)
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for {
		p := s.peak.Load()
		if n <= p || s.peak.CompareAndSwap(p, n) {
			break
		}
	}
	select {
	case <-time.After(s.hold):
	case <-ctx.Done():
	}
	return nil, errDown
}

// Failed repairs are retried with a backoff, never more than Concurrency
// at once, and forgotten once their entry is no longer missing.
func TestRepairerBackoffAndBound(t *testing.T) {
	var missing []statemachine.StoredFile
	for i := range 5 {
		missing = append(missing, statemachine.StoredFile{Name: string(rune('a' + i)), Index: uint64(i + 1),
			Key: statemachine.StreamKey{ClientID: "c", StreamID: uint64(i)}, Missing: true})
	}
	store := &fakeStore{t: t, missing: missing}
	src := &failingSource{hold: 20 * time.Millisecond}
	r := repair.New(repair.Config{Concurrency: 2, Interval: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond},
		store, src, func() []string { return []string{"p2"} }, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	deadline := time.Now().Add(10 * time.Second)
	for r.Stats().Failed < 15 {
		if time.Now().After(deadline) {
			t.Fatalf("only %+v within the deadline", r.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if p := src.peak.Load(); p > 2 {
		t.Errorf("%d repairs ran at once, the bound is 2", p)
	}
	if st := r.Stats(); st.Repaired != 0 || st.Waiting == 0 {
		t.Errorf("stats %+v", st)
	}
	store.mu.Lock()
	store.missing = nil
	store.mu.Unlock()
	r.Kick()
	for r.Stats().Waiting != 0 || r.Stats().InProgress != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("still %+v after the entries stopped missing", r.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRepairerNoPeers(t *testing.T) {
	store := &fakeStore{t: t, missing: []statemachine.StoredFile{{Name: "a", Index: 1, Missing: true}}}
	r := repair.New(repair.Config{Interval: 5 * time.Millisecond}, store, &failingSource{}, func() []string { return nil }, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for r.Stats().Failed == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if st := r.Stats(); st.Failed == 0 || st.Repaired != 0 {
		t.Fatalf("stats %+v, want failures and no repair", st)
	}
}
