package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/transport"
)

// startConnect starts the loop that keeps a connection to peer id up.
// Call with mu held.
func (s *Server) startConnect(id string) {
	if id == s.cfg.ID || s.loops[id] != nil || s.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	s.loops[id] = cancel
	s.wg.Add(1)
	go s.connect(ctx, id)
}

// SetPeers replaces the group's members, for a group whose membership
// changed: the server connects to the new ones, closes its connection to
// those no longer listed (failing the streams forwarded over it) and
// checks the routing of new streams against the new list. This server's
// own entry may be missing (it was removed): it then refuses every new
// stream, since no routing table can name it.
func (s *Server) SetPeers(peers []group.Member) {
	ids := make([]string, 0, len(peers))
	next := make(map[string]string, len(peers))
	for _, p := range peers {
		ids = append(ids, p.ID)
		next[p.ID] = p.StreamAddr
	}
	s.mu.Lock()
	var drop []transport.Channel
	for id := range s.addrs {
		if _, ok := next[id]; ok || id == s.cfg.ID {
			continue
		}
		if stop := s.loops[id]; stop != nil {
			stop()
			delete(s.loops, id)
		}
		if c := s.conns[id]; c != nil {
			drop = append(drop, c)
			delete(s.conns, id)
		}
		delete(s.addrs, id)
	}
	if _, ok := next[s.cfg.ID]; !ok {
		delete(s.addrs, s.cfg.ID)
	}
	for id, addr := range next {
		if s.addrs[id] != addr {
			s.addrs[id] = addr
			s.redialLocked()
		}
		s.startConnect(id)
	}
	close(s.up) // WaitPeers looks again
	s.up = make(chan struct{})
	s.mu.Unlock()
	s.streams.SetPeers(ids)
	for _, c := range drop {
		_ = c.Close()
	}
	s.log.Info("server: peers changed", "peers", ids)
}

// PeerConnected reports whether the server has a live connection to peer
// id, one that answered its last PING within KeepaliveTimeout.
func (s *Server) PeerConnected(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[id] != nil
}

// SetPeerAddr sets or changes the address of peer id, for groups whose
// members learn each other's ports after binding to port 0.
func (s *Server) SetPeerAddr(id, addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.addrs[id] != addr {
		s.addrs[id] = addr
		s.redialLocked() // a loop waiting to redial the old one
	}
}

// successor is the handler.PeerDialer: the live connection to id, or an
// error at once.
func (s *Server) successor(id string) (handler.Successor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.conns[id]; c != nil {
		return c.Pipeline(), nil
	}
	return nil, fmt.Errorf("%w: %s", ErrPeerUnavailable, id)
}

// WaitPeers blocks until this server has a live connection to every other
// peer, or ctx is done.
func (s *Server) WaitPeers(ctx context.Context) error {
	for {
		s.mu.Lock()
		missing := ""
		for id := range s.addrs {
			if id != s.cfg.ID && s.conns[id] == nil {
				missing = id
				break
			}
		}
		up := s.up
		s.mu.Unlock()
		if missing == "" {
			return nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return fmt.Errorf("server %s: waiting for peer %s: %w", s.cfg.ID, missing, ctx.Err())
		}
	}
}

// connect keeps a connection to peer id up until ctx is done (Shutdown, or
// the peer left the group), redialing with a capped exponential backoff.
func (s *Server) connect(ctx context.Context, id string) {
	defer s.wg.Done()
	backoff := s.redialFrom()
	for ctx.Err() == nil {
		s.mu.Lock()
		addr := s.addrs[id]
		// Taken before the dial: a wake-up while it fails must still
		// cut the wait after it.
		redial := s.redial
		s.mu.Unlock()
		var (
			ch    transport.Channel
			pongs <-chan struct{}
			err   error
		)
		if addr == "" {
			err = errors.New("address unknown")
		} else {
			ch, pongs, err = s.dial(ctx, addr, id)
		}
		if err == nil {
			s.log.Debug("server: connected to peer", "to", id, "local", ch.LocalAddr(), "remote", ch.RemoteAddr())
			s.mu.Lock()
			if ctx.Err() != nil { // left the group while dialing
				s.mu.Unlock()
				_ = ch.Close()
				<-ch.Done()
				return
			}
			s.conns[id] = ch
			close(s.up)
			s.up = make(chan struct{})
			s.mu.Unlock()
			if ev := s.cfg.Events; ev != nil {
				ev.Conn(handler.ConnEvent{Kind: handler.ConnUp, Peer: id})
			}
			s.keepalive(ctx, id, ch, pongs)
			s.untrack(id, ch)
			<-ch.Done()
			if ev := s.cfg.Events; ev != nil {
				ev.Conn(handler.ConnEvent{Kind: handler.ConnDown, Peer: id})
			}
			backoff = s.redialFrom()
			continue
		}
		s.log.Debug("server: peer not reachable yet", "to", id, "err", err)
		wait := time.NewTimer(backoff)
		select {
		case <-wait.C:
			backoff = min(2*backoff, s.cfg.RedialInterval)
		case <-redial:
			// A peer came up, perhaps this one after a restart (its
			// connection to us says so long before the backoff would),
			// or its address changed. Until this side redials, streams
			// route around it, so a group back at its quorum would
			// refuse writes meanwhile. The backoff stays: a peer that
			// keeps coming and going is not redialed ever faster.
			wait.Stop()
		case <-ctx.Done():
			wait.Stop()
		}
	}
}

// redialFrom returns the first wait before redialing a peer; each failed
// dial doubles it, up to Config.RedialInterval.
func (s *Server) redialFrom() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.firstRedial
}

// greet wakes the connect loops that wait to redial: a peer has connected
// to this server.
func (s *Server) greet() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.redialLocked()
}

// redialLocked makes the connect loops waiting out a backoff dial now.
// s.mu is held.
func (s *Server) redialLocked() {
	close(s.redial)
	s.redial = make(chan struct{})
}

// keepalive returns when the connection to peer id has ended or must: when
// ctx is done (Shutdown, or the peer left), or when a PING sent after KeepaliveInterval without one has no
// answer within KeepaliveTimeout. A partitioned link resets nothing, and
// its connection would otherwise look live until a stream failed on it;
// the connection is then taken out of use at once and closed, and connect
// redials in the background, so that the next stream finds a live one.
// pongs receives every answer to a PING.
func (s *Server) keepalive(ctx context.Context, id string, ch transport.Channel, pongs <-chan struct{}) {
	idle := time.NewTimer(s.cfg.KeepaliveInterval)
	defer idle.Stop()
	answer := time.NewTimer(s.cfg.KeepaliveTimeout)
	answer.Stop()
	for {
		select {
		case <-idle.C:
		case <-ch.Done():
			return
		case <-ctx.Done():
			_ = ch.Close()
			return
		}
		select {
		case <-pongs: // a late answer to the handshake's PING
		default:
		}
		if err := handler.Ping(ch); err != nil {
			s.log.Warn("server: cannot ping peer; reconnecting", "to", id, "err", err)
			s.untrack(id, ch)
			_ = ch.Close()
			return
		}
		answer.Reset(s.cfg.KeepaliveTimeout)
		select {
		case <-pongs:
			answer.Stop()
			idle.Reset(s.cfg.KeepaliveInterval)
		case <-answer.C:
			s.log.Warn("server: peer did not answer a keepalive ping; reconnecting", "to", id, "timeout", s.cfg.KeepaliveTimeout)
			s.untrack(id, ch)
			_ = ch.Close()
			return
		case <-ch.Done():
			return
		case <-ctx.Done():
			_ = ch.Close()
			return
		}
	}
}

// untrack takes ch out of use as the connection to peer id.
func (s *Server) untrack(id string, ch transport.Channel) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns[id] == ch {
		delete(s.conns, id)
	}
}

// dial connects to peer id and returns once the peer has answered a PING,
// so that a socket accepted by a server on its way down never counts as a
// live successor. pongs receives the answers to later PINGs.
func (s *Server) dial(ctx context.Context, addr, id string) (_ transport.Channel, pongs <-chan struct{}, _ error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	var replies *handler.SuccessorReplies
	answers := make(chan struct{}, 1)
	init := func(ch transport.Channel) {
		var err error
		if replies, err = handler.InstallSuccessor(ch.Pipeline(), s.streams, id, s.cfg.MaxFrame); err != nil {
			s.log.Error("server: cannot set up peer connection", "err", err)
			_ = ch.Close()
			return
		}
		replies.OnPong = func() {
			select {
			case answers <- struct{}{}:
			default:
			}
		}
	}
	ch, err := s.dialer.Dial(ctx, addr, init)
	if err != nil {
		return nil, nil, err
	}
	if err := handler.Ping(ch); err != nil {
		_ = ch.Close()
		return nil, nil, err
	}
	select {
	case <-replies.Pong:
		return ch, answers, nil
	case <-ch.Done():
		return nil, nil, fmt.Errorf("connection to %s closed before it answered a ping", addr)
	case <-ctx.Done():
		_ = ch.Close()
		<-ch.Done()
		return nil, nil, fmt.Errorf("%s did not answer a ping: %w", addr, ctx.Err())
	}
}
