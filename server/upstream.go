package server

import (
	"time"

	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/transport"
)

func (s *Server) initUpstream(ch transport.Channel) {
	if ev := s.cfg.Events; ev != nil {
		// Its ConnDown comes from the router's ChannelInactive.
		ev.Conn(handler.ConnEvent{Kind: handler.ConnUp})
	}
	err := handler.Install(ch.Pipeline(), s.streams, s.cfg.MaxFrame)
	if d, ok := ch.Pipeline().Get(handler.StageFrame).(*codec.FrameDecoder); ok {
		d.SetBudget(s.partials)
		s.fmu.Lock()
		s.frames[ch] = d
		s.fmu.Unlock()
	}
	if err == nil {
		err = ch.Pipeline().AddBefore(handler.StageRouter, StagePeerGate, &peerGate{s: s})
	}
	if err == nil && s.cfg.Pipeline != nil {
		err = s.cfg.Pipeline(ch.Pipeline())
	}
	if err != nil {
		s.log.Error("server: cannot set up connection", "err", err)
		_ = ch.Close()
	}
}

// peerGate meets a connection's first packet (StagePeerGate). The router
// decides on that packet whether the connection is a peer's, so the gate
// steps out of the pipeline after it.
type peerGate struct {
	s       *Server
	refused bool
}

// ChannelRead implements pipeline.ReadHandler.
func (g *peerGate) ChannelRead(ctx *pipeline.Context, msg any) {
	if g.refused {
		// Packets already read when the connection was refused.
		pipeline.Release(msg)
		return
	}
	p, ok := msg.(*handler.Packet)
	if !ok {
		ctx.FireChannelRead(msg)
		return
	}
	if p.Header.GetType() == pb.DataStreamPacketHeader_PING {
		if g.s.cfg.AuthorizePeer != nil && !g.authorized(ctx.Pipeline().Transport()) {
			g.refused = true
			p.Release()
			// Closed without a reply: any answer to a PING counts as a
			// pong to the dialing peer.
			_ = ctx.Close()
			return
		}
		g.s.greet()
	}
	_, _ = ctx.Pipeline().Remove(ctx.Name())
	ctx.FireChannelRead(p)
}

func (g *peerGate) authorized(t pipeline.Transport) bool {
	st, ok := transport.TLSConnectionState(t)
	if !ok || len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		g.s.log.Warn("server: refused a peer connection without a verified certificate", "remote", t.RemoteAddr())
		return false
	}
	cert := st.VerifiedChains[0][0]
	if !g.s.cfg.AuthorizePeer(cert) {
		g.s.log.Warn("server: refused a peer connection: AuthorizePeer said no", "remote", t.RemoteAddr(), "subject", cert.Subject.String())
		return false
	}
	return true
}

// sweepFrames gives back the budget that upstream connections hold beyond
// their incomplete frames' needs, and closes those whose frame stalled.
func (s *Server) sweepFrames(now time.Time) {
	var stalled []transport.Channel
	s.fmu.Lock()
	for ch, d := range s.frames {
		select {
		case <-ch.Done():
			delete(s.frames, ch)
			continue
		default:
		}
		if d.Sweep(now, s.cfg.ReadStallTimeout) {
			stalled = append(stalled, ch)
		}
	}
	s.fmu.Unlock()
	for _, ch := range stalled {
		s.log.Warn("server: closing a connection whose incomplete frame got no bytes", "remote", ch.RemoteAddr(), "for", s.cfg.ReadStallTimeout)
		_ = ch.Close()
	}
}
