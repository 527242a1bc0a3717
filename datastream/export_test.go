package datastream

// WindowWaits returns how many times a write on o waited for room in the
// stream's window, so that a test can tell that a writer blocked.
func WindowWaits(o *Output) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.waits
}

// ReadWindow returns the bytes a Reader's sequential reads have asked for
// and not yet returned, and how many of them it holds received.
func ReadWindow(r *Reader) (asked, buffered int64) {
	r.smu.Lock()
	defer r.smu.Unlock()
	asked = r.fetched - r.off
	if r.cur != nil {
		buffered += int64(r.cur.Len())
	}
	for _, c := range r.ahead {
		c.mu.Lock()
		for _, b := range c.chunks {
			buffered += int64(b.Len())
		}
		c.mu.Unlock()
	}
	return asked, buffered
}

// ReadPeer returns the peer a Reader reads from now, or "" between peers.
func ReadPeer(r *Reader) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rc == nil {
		return ""
	}
	return r.rc.peer.ID
}
