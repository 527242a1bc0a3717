package buffer

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
)

var (
	live     atomic.Int64
	tracking atomic.Bool

	mu       sync.Mutex
	records  = map[*record]struct{}{}
	misuses  []string
	trackers int
)

// Live returns the number of buffers taken with Get and not yet released.
func Live() int64 { return live.Load() }

// record remembers where a tracked buffer was taken.
type record struct{ stack string }

func newRecord() *record {
	r := &record{stack: callers(3)}
	mu.Lock()
	records[r] = struct{}{}
	mu.Unlock()
	return r
}

func (r *record) free() {
	mu.Lock()
	delete(records, r)
	mu.Unlock()
}

func callers(skip int) string {
	pc := make([]uintptr, 16)
	n := runtime.Callers(skip, pc)
	frames := runtime.CallersFrames(pc[:n])
	var sb strings.Builder
	for {
		f, more := frames.Next()
		fmt.Fprintf(&sb, "\t%s\n\t\t%s:%d\n", f.Function, f.File, f.Line)
		if !more {
			break
		}
	}
	return sb.String()
}

// MisuseError is the panic value for a reference-count bug.
type MisuseError struct {
	Op    string // what was done wrong
	Stack string // where it was done
	Taken string // where the buffer was taken, when tracking
}

func (e *MisuseError) Error() string {
	s := "buffer: " + e.Op + "\n" + e.Stack
	if e.Taken != "" {
		s += "taken at:\n" + e.Taken
	}
	return s
}

func reportMisuse(b *Buf, op string) {
	e := &MisuseError{Op: op, Stack: callers(3)}
	if b.track != nil {
		e.Taken = b.track.stack
	}
	mu.Lock()
	if trackers > 0 {
		misuses = append(misuses, e.Error())
	}
	mu.Unlock()
	panic(e)
}

// Tracker is a leak-accounting session: between StartTracking and Stop,
// buffers remember where they were taken and are not recycled, so leaks and
// double releases can be attributed. Tests use it through buffertest.
type Tracker struct{ start int64 }

// StartTracking begins a leak-accounting session. Sessions may nest; buffers
// are tracked while any session is open.
func StartTracking() *Tracker {
	mu.Lock()
	trackers++
	tracking.Store(true)
	mu.Unlock()
	return &Tracker{start: live.Load()}
}

// Report describes what a tracking session found.
type Report struct {
	Leaked  int64    // buffers taken and not released since StartTracking
	Stacks  []string // where the still-live tracked buffers were taken
	Misuses []string // double releases and retains after release
}

// Check reports what is unreleased and misused right now, without ending the
// session.
func (t *Tracker) Check() Report {
	mu.Lock()
	defer mu.Unlock()
	r := Report{Leaked: live.Load() - t.start, Misuses: append([]string(nil), misuses...)}
	for rec := range records {
		r.Stacks = append(r.Stacks, rec.stack)
	}
	return r
}

// Stop ends the session and returns its final report.
func (t *Tracker) Stop() Report {
	r := t.Check()
	mu.Lock()
	trackers--
	if trackers == 0 {
		tracking.Store(false)
		misuses = nil
		clear(records)
	}
	mu.Unlock()
	return r
}
