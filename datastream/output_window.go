package datastream

import (
	"context"
	"time"
)

// InFlight returns the bytes and packets sent and not yet answered, and the
// most bytes that were ever in flight at once. The window bounds them.
func (o *Output) InFlight() (bytes int64, packets int, peak int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.flight, o.pending.Len(), o.peak
}

// acquire waits for room for n bytes and one packet in the window. A
// packet larger than the whole window goes alone.
//
// Waiting writers share one token in o.space rather than a channel closed
// per release, which cost an allocation every time the window filled: a
// release puts the token there, the writer that takes it looks again, and
// passes it on if others still wait, so none is left asleep with room
// free.
func (o *Output) acquire(ctx context.Context, n int64) error {
	waited := false
	for {
		o.mu.Lock()
		if waited {
			o.waiting--
		}
		err := o.err
		ok := err == nil && (o.winPkts == 0 || o.winBytes+n <= o.c.opts.windowBytes && o.winPkts < o.c.opts.windowPackets)
		if ok {
			o.winBytes += n
			o.winPkts++
		}
		if err != nil || ok {
			if waited && o.waiting > 0 {
				o.wakeLocked()
			}
			o.mu.Unlock()
			return err
		}
		o.waiting++
		o.waits++
		waited = true
		o.mu.Unlock()
		select {
		case <-o.space:
		case <-ctx.Done():
			o.mu.Lock()
			o.waiting--
			if o.waiting > 0 {
				o.wakeLocked() // the token may have come to this writer
			}
			o.mu.Unlock()
			return ctx.Err()
		}
	}
}

// wakeLocked puts the token in o.space unless it is there.
func (o *Output) wakeLocked() {
	select {
	case o.space <- struct{}{}:
	default:
	}
}

func (o *Output) releaseWindow(n int64) {
	o.mu.Lock()
	o.releaseWindowLocked(n)
	o.mu.Unlock()
}

func (o *Output) releaseWindowLocked(n int64) {
	o.winBytes -= n
	o.winPkts--
	if o.waiting > 0 {
		o.wakeLocked()
	}
}

// waitingSince returns when the stream last made progress, if it has
// packets in flight: the later of its oldest packet's send and its last
// reply.
func (o *Output) waitingSince() (time.Time, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.pending.Len() == 0 {
		return time.Time{}, false
	}
	at := o.pending.Peek().sentAt
	if o.lastReply.After(at) {
		at = o.lastReply
	}
	return at, true
}
