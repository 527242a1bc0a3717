package server

import "time"

// SetFirstRedial sets the first wait before s redials a peer it lost.
func SetFirstRedial(s *Server, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.firstRedial = d
}
