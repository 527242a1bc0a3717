package handler

import (
	"context"
	"fmt"
	"time"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// run is the stream's executor: local state-machine work, in order.
func (st *Stream) run(t task) {
	switch t.kind {
	case taskWrite, taskResume:
		p := t.p
		if t.kind == taskResume {
			st.execGen = p.gen
		}
		switch {
		case p.gen != st.execGen:
			// Routed from an upstream that a resume has since replaced:
			// its bytes are replayed by the new one, after the resume
			// cut the stream back. Writing them would write them twice.
			st.setErr(p, errorf(pb.ErrorCode_FORBIDDEN, "stream %v was resumed by another peer", st.Key))
		case st.Err() == nil:
			st.write(p)
		}
		st.partDone(p)
	case taskCleanUp, taskRelease:
		if st.ch == nil {
			return
		}
		var err error
		if r, ok := st.ch.(statemachine.Releaser); ok && t.kind == taskRelease {
			err = r.Release()
		} else {
			err = st.ch.CleanUp()
		}
		if err != nil {
			st.s.cfg.Logger.Warn("handler: state machine clean-up failed", "stream", st.Key, "err", err)
		}
		st.ch = nil
	}
}

func (st *Stream) write(p *Packet) {
	ev := st.s.cfg.Events
	var start time.Time
	if ev != nil {
		start = time.Now()
	}
	if err := st.writeLocal(p); err != nil {
		e := codeOf(err, pb.ErrorCode_STATE_MACHINE)
		st.setErr(p, e)
		st.fail(e)
	} else if ev != nil && p.Header.GetType() == pb.DataStreamPacketHeader_STREAM_DATA {
		ev.Packet(PacketEvent{Kind: PacketWritten, Key: st.Key, Bytes: p.Header.GetDataLength(), Duration: time.Since(start)})
	}
}

func (st *Stream) writeLocal(p *Packet) error {
	h := p.Header
	if h.GetType() == pb.DataStreamPacketHeader_STREAM_HEADER {
		if p.Has(pb.DataStreamPacketHeader_RESUME) && st.ch != nil {
			return st.truncate(p)
		}
		ch, err := st.s.cfg.StateMachine.OpenStream(context.Background(), st.Key, st.Request)
		if err != nil {
			return fmt.Errorf("open stream: %w", err)
		}
		st.ch = ch
		return nil
	}
	if st.ch == nil {
		return errorf(pb.ErrorCode_INTERNAL, "stream has no data channel")
	}
	if end := h.GetStreamOffset() + h.GetDataLength(); st.closedHere && end <= st.replayedTo {
		// Replayed after a resume that found the copy closed: it holds
		// these bytes already.
		p.written = end
		return nil
	}
	if err := st.sum.check(p, st.verifies()); err != nil {
		return err
	}
	if b := p.Body.Bytes(); len(b) > 0 {
		n, err := st.ch.Write(b)
		st.written += uint64(n)
		if err != nil {
			return fmt.Errorf("write at offset %d: %w", h.GetStreamOffset(), err)
		}
		if n != len(b) {
			return fmt.Errorf("short write at offset %d: %d of %d bytes", h.GetStreamOffset(), n, len(b))
		}
	}
	p.written = st.written
	if p.Has(pb.DataStreamPacketHeader_SYNC) {
		if err := st.ch.Sync(); err != nil {
			return fmt.Errorf("sync: %w", err)
		}
	}
	if p.Has(pb.DataStreamPacketHeader_CLOSE) {
		if err := st.ch.Close(); err != nil {
			return fmt.Errorf("close: %w", err)
		}
		st.closedHere = true
	}
	return nil
}

// verifies reports whether this peer checks the data's checksums: at the
// leaves of the tree (which cover every peer above them, since a peer
// forwards the very bytes it stores), everywhere with VerifyEveryPeer, and
// on a peer whose pipeline was recovered, where the successor that would
// have checked may be gone.
func (st *Stream) verifies() bool { return st.s.cfg.VerifyEveryPeer || st.verify.Load() }

// truncate cuts the local copy back to where a resume replays from, and
// the running checksum with it.
func (st *Stream) truncate(p *Packet) error {
	at := p.Header.GetStreamOffset()
	if st.closedHere {
		// The copy was closed already (the failed peer's CLOSE got here
		// before the resume): it cannot be cut back, and need not be,
		// since the replay brings the same bytes: they are taken as
		// written.
		if at > st.written {
			return errorf(pb.ErrorCode_OFFSET_MISMATCH, "resume at offset %d of a copy closed at %d", at, st.written)
		}
		st.replayedTo = st.written
		return nil
	}
	if at != st.written {
		t, ok := st.ch.(statemachine.Truncater)
		if !ok {
			return errorf(pb.ErrorCode_STATE_MACHINE, "cannot resume at offset %d: the state machine holds %d bytes and cannot truncate", at, st.written)
		}
		if err := t.Truncate(at); err != nil {
			return fmt.Errorf("resume at offset %d: %w", at, err)
		}
		st.written = at
	}
	if p.Has(pb.DataStreamPacketHeader_CHECKSUM) {
		st.sum.mode, st.sum.crc = sumOn, p.Header.GetCrc32C()
	} else if at == 0 {
		st.sum = streamSum{}
	}
	return nil
}

func (st *Stream) setErr(p *Packet, e *pb.Error) {
	st.mu.Lock()
	if p.err == nil {
		p.err = e
	}
	st.mu.Unlock()
}
