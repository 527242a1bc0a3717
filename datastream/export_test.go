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

// Reroot is reroot, for tests of the routing table a failover sends.
var Reroot = reroot

// CutPrimary closes the connection to o's primary, as a network failure
// would, and returns the primary's id.
func CutPrimary(o *Output) string {
	o.mu.Lock()
	cn := o.cn
	o.mu.Unlock()
	_ = cn.ch.Close()
	return cn.peer.ID
}

// Primary returns the id of o's primary now.
func Primary(o *Output) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.primary
}

// Retained returns the packets of o that keep their bytes for a replay,
// and those bytes.
func Retained(o *Output) (packets int, bytes int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	all := o.pending.Take()
	for _, p := range all {
		o.pending.Push(p)
		if p.frame != nil {
			packets++
			bytes += int64(p.frame.Len())
			if p.body != nil {
				bytes += int64(p.body.Len())
			}
		}
	}
	return packets, bytes
}
