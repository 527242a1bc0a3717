package handler

import "github.com/pipestream/pipestream/internal/statetrace"

// streamState is where a stream is in its life on one peer. The state is
// guarded by the stream's mu; every change goes through setStateLocked,
// which allows only these transitions (TestStreamStates in package server
// drives real servers through each of them and checks no other happens):
//
//	open ───── CLOSE routed ─────▶ closing ── closed on every successor ──▶ parked
//	 │  ▲                           │  │                                     │ ▲
//	 │  └────────── resume ─────────┘  │ (the CLOSE will be replayed)        │ │
//	 │  ▲                              │                                     │ │
//	 │  └─ resume ── orphaned ◀── upstream peer connection lost ── (open,    │ │
//	 │               │   │                                      closing)    │ │
//	 │               │   └──── its CLOSE completes ─────────────────────────┼─┘
//	 │               └── no resume within the reply timeout ──┐              │
//	 ▼                                                        ▼              ├── entry applied ───▶ linked
//	failed ◀──── error, abort (open, closing) ───────────────┘              ├── abort, link timeout ─▶ discarded
//	 │                                                                       └── shutdown ─────────▶ released
//	 └── last reply out ──▶ drained (out of the stream table)
//
// open and closing take packets from their upstream connection; orphaned
// has lost it (a predecessor died) and waits for a RESUME from a new one
// (pipeline recovery, stream_recover.go); parked waits for the committed
// entry; linked, discarded, released and drained are final.
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
	stateOrphaned: {stateOpen, stateFailed, stateParked},
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

func init() {
	var all []statetrace.Change
	for from, tos := range transitions {
		for _, to := range tos {
			all = append(all, statetrace.Change{From: streamState(from).String(), To: to.String(), Allowed: true})
		}
	}
	statetrace.Declare(all)
}

// setStateLocked moves the stream to state to if the diagram allows it,
// and reports whether it did. st.mu must be held.
func (st *Stream) setStateLocked(to streamState) bool {
	from := st.state
	ok := allowed(from, to)
	statetrace.Emit(statetrace.Change{From: from.String(), To: to.String(), Allowed: ok})
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
