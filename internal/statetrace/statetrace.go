// Package statetrace lets this module's tests watch the state changes of
// package handler's streams, so that a test can drive a real server
// through every transition of the state diagram (handler/stream_state.go)
// and check that it took no other. It costs an atomic load per change when
// nobody watches.
package statetrace

import "sync/atomic"

// Change is one state change of one stream.
type Change struct {
	From, To string
	// Allowed is whether the diagram has the transition; one it does not
	// have is refused, and reported here.
	Allowed bool
}

var (
	hook     atomic.Pointer[func(Change)]
	declared atomic.Pointer[[]Change]
)

// Watch calls f for every state change from now until the returned stop.
// f runs on the goroutine that makes the change and must not block.
func Watch(f func(Change)) (stop func()) {
	hook.Store(&f)
	return func() { hook.CompareAndSwap(&f, nil) }
}

// Emit reports a change to the watcher, if any.
func Emit(c Change) {
	if f := hook.Load(); f != nil {
		(*f)(c)
	}
}

// Declare records the transitions the diagram allows.
func Declare(all []Change) { declared.Store(&all) }

// Declared returns what Declare recorded.
func Declared() []Change {
	if p := declared.Load(); p != nil {
		return *p
	}
	return nil
}
