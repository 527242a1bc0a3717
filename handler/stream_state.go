package handler

import "sync/atomic"

// streamState is where a stream is in its life on one peer. The state is
// guarded by the stream's mu; every change goes through setStateLocked,
// which allows only the transitions of this diagram (TestStreamStates
// drives a real server through each of them):
//
//	   ┌──────────────── resume ─────────────────┐
//	   ▼                                         │
//	 open ──── CLOSE routed ────▶ closing ───────┤ resume: the CLOSE
//	  │ │                          │  │          │ is replayed
//	  │ └── upstream peer lost ─┐  │  └── closed on every successor ──▶ parked
//	  │                         ▼  ▼                                      │
//	  │                       orphaned ─── resume ──▶ open                ├─ entry applied ──▶ linked
//	  │                         │                                         ├─ abort, link timeout ──▶ discarded
//	  ▼                         ▼                                         └─ shutdown ──▶ released
//	failed ◀── error, abort ── (open, closing); orphaned ── no resume in time ──▶ failed
//	  │
//	  └── last reply out ──▶ drained (out of the stream table)
//
// open and closing take packets from their upstream connection; orphaned
// has lost it (a predecessor died) and waits, for at most the reply
// timeout, for a new predecessor's RESUME (pipeline recovery,
// stream_recover.go); parked waits for the committed entry; linked,
// discarded, released and drained are final.
type streamState uint8

const (
	stateOpen streamState = iota
	stateClosing
	stateOrphaned
	stateParked
	stateFailed
	stateDrained
	stateLinked
	stateDiscarded
	stateReleased
	numStreamStates
)

var stateNames = [numStreamStates]string{"open", "closing", "orphaned", "parked", "failed", "drained", "linked", "discarded", "released"}

func (s streamState) String() string {
	if s < numStreamStates {
		return stateNames[s]
	}
	return "invalid"
}

// transitions lists, for each state, the states it may go to.
var transitions = [numStreamStates][]streamState{
	stateOpen:     {stateClosing, stateOrphaned, stateFailed},
	stateClosing:  {stateParked, stateOrphaned, stateFailed, stateOpen},
	stateOrphaned: {stateOpen, stateFailed},
	stateParked:   {stateLinked, stateDiscarded, stateReleased},
	stateFailed:   {stateDrained},
}

func allowed(from, to streamState) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// transitionHook, if set, sees every state change, allowed or not; tests
// set it to check the diagram.
var transitionHook atomic.Pointer[func(from, to streamState, ok bool)]

// setStateLocked moves the stream to state to if the diagram allows it,
// and reports whether it did. st.mu must be held.
func (st *Stream) setStateLocked(to streamState) bool {
	from := st.state
	ok := allowed(from, to)
	if h := transitionHook.Load(); h != nil {
		(*h)(from, to, ok)
	}
	if ok {
		st.state = to
	} else {
		st.s.cfg.Logger.Error("handler: stream state change not in the diagram; ignored", "stream", st.Key, "from", from, "to", to)
	}
	return ok
}

func (st *Stream) setState(to streamState) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.setStateLocked(to)
}
