// Package faultnet is a loopback TCP proxy for fault tests. Put between two
// peers (dial the proxy instead of the target), it forwards bytes both ways
// until the test injects a fault: it stops forwarding (Pause), closes every
// connection at once (Cut), or closes a connection once it has forwarded a
// given number of bytes toward the target (DropAfter), for example in the
// middle of a frame, or flips a byte on its way to the target (CorruptAt).
//
// A paused proxy reads nothing more from either side, so the sender's socket
// buffers fill and its writes stall, as with a peer that stopped reading.
// The proxy itself holds at most one read buffer per direction and
// connection, so it adds nothing to the memory a test measures.
package faultnet

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// bufSize is the read buffer of each direction of a connection.
const bufSize = 32 << 10

// dialTimeout bounds connecting to the target for each accepted connection.
const dialTimeout = 5 * time.Second

// Stats counts what a proxy did.
type Stats struct {
	Accepted int // connections accepted and connected to the target
	// Dropped counts connections closed by DropAfter, each after exactly
	// the bytes it was armed with.
	Dropped int
	Cut     int // connections closed by Cut
	// ToTarget and FromTarget count the bytes taken to forward in each
	// direction, over all connections: an upper bound of what the other
	// side received, short of it only by a write that failed.
	ToTarget, FromTarget int64
}

// Proxy forwards connections from its own address to a target. Its
// methods are safe for concurrent use.
type Proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	toTarget, fromTarget atomic.Int64

	mu       sync.Mutex
	links    map[*link]struct{}
	resume   chan struct{} // non-nil while paused; closed by Resume
	closed   bool
	accepted int
	dropped  int
	cut      int
}

// link is one proxied connection.
type link struct {
	client, target net.Conn
	done           chan struct{} // closed when the link is closed
	// budget is the bytes toward the target left before the link is
	// dropped; negative when DropAfter was not armed for it. Guarded by
	// the proxy's mu.
	budget int64
	// corrupt is the bytes toward the target left before the one to flip;
	// negative when CorruptAt was not armed. Guarded by the proxy's mu.
	corrupt int64
}

// Listen starts a proxy on a free loopback port that forwards each
// connection to target. Close it to stop it and wait for its goroutines.
func Listen(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultnet: %w", err)
	}
	p := &Proxy{ln: ln, target: target, links: make(map[*link]struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the address to dial instead of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Pause stops forwarding in both directions: once Pause returns, no more
// bytes are read from either side, and bytes a read had already taken are
// held until Resume. Pausing a paused proxy does nothing.
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resume == nil {
		p.resume = make(chan struct{})
	}
}

// Resume forwards again, starting with the bytes held by Pause.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resume != nil {
		close(p.resume)
		p.resume = nil
	}
}

// Cut closes both sides of every open connection, as a network partition
// that resets them would. New connections are still accepted and
// forwarded.
func (p *Proxy) Cut() {
	p.closeWhere(&p.cut, func(*link) bool { return true })
}

// DropAfter arms every open connection to be closed, both sides, once it
// has forwarded n more bytes toward the target: the n-th byte is
// delivered, nothing after it. Connections accepted later are not armed.
// DropAfter(0) closes them at once.
func (p *Proxy) DropAfter(n int64) {
	if n < 0 {
		panic("faultnet: DropAfter with a negative count")
	}
	p.closeWhere(&p.dropped, func(l *link) bool {
		l.budget = n
		return n == 0
	})
}

// closeWhere calls arm on every open connection under p.mu, adds to
// *count how many it returned true for, and closes those, both sides,
// after releasing p.mu: close takes it again.
func (p *Proxy) closeWhere(count *int, arm func(*link) bool) {
	p.mu.Lock()
	var doomed []*link
	for l := range p.links {
		if arm(l) {
			doomed = append(doomed, l)
		}
	}
	*count += len(doomed)
	p.mu.Unlock()
	for _, l := range doomed {
		p.close(l)
	}
}

// CorruptAt arms every open connection to flip (invert) the byte that
// comes n bytes from now toward the target, once; the connection carries
// on. Connections accepted later are not armed.
func (p *Proxy) CorruptAt(n int64) {
	if n < 0 {
		panic("faultnet: CorruptAt with a negative offset")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for l := range p.links {
		l.corrupt = n
	}
}

// Stats returns what the proxy did so far.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{
		Accepted: p.accepted, Dropped: p.dropped, Cut: p.cut,
		ToTarget: p.toTarget.Load(), FromTarget: p.fromTarget.Load(),
	}
}

// Open returns the number of connections the proxy holds open.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	err := p.ln.Close()
	for _, l := range links {
		p.close(l)
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				// A transient accept error on loopback would be a bug in
				// the test's setup; dropping the listener shows it.
				_ = p.ln.Close()
			}
			return
		}
		t, err := net.DialTimeout("tcp", p.target, dialTimeout)
		if err != nil {
			// The target is down: the dialing side sees its connection
			// closed, as if refused a moment late.
			_ = c.Close()
			continue
		}
		l := &link{client: c, target: t, done: make(chan struct{}), budget: -1, corrupt: -1}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			_ = t.Close()
			return
		}
		p.links[l] = struct{}{}
		p.accepted++
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pump(l, l.client, l.target, true)
		go p.pump(l, l.target, l.client, false)
	}
}

// pump copies src to dst until either side closes or the link is closed.
// toTarget is the direction DropAfter counts.
func (p *Proxy) pump(l *link, src, dst net.Conn, toTarget bool) {
	defer p.wg.Done()
	defer p.close(l)
	buf := make([]byte, bufSize)
	for {
		if !p.running(l) {
			return
		}
		n, err := src.Read(buf)
		if n > 0 {
			if !p.running(l) {
				return // paused with the bytes in hand, then closed
			}
			m, drop := n, false
			if toTarget {
				p.mu.Lock()
				if l.budget >= 0 {
					m = int(min(int64(n), l.budget))
					l.budget -= int64(m)
					if drop = l.budget == 0; drop {
						p.dropped++
					}
				}
				if l.corrupt >= 0 {
					if l.corrupt < int64(m) {
						buf[l.corrupt] ^= 0xff
						l.corrupt = -1
					} else {
						l.corrupt -= int64(m)
					}
				}
				p.mu.Unlock()
			}
			if m > 0 {
				// Counted before the write, so that the count is never
				// behind what the other side may have seen.
				if toTarget {
					p.toTarget.Add(int64(m))
				} else {
					p.fromTarget.Add(int64(m))
				}
				if _, werr := dst.Write(buf[:m]); werr != nil {
					return
				}
			}
			if drop {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// running waits while the proxy is paused; it reports false once the link
// is closed.
func (p *Proxy) running(l *link) bool {
	for {
		p.mu.Lock()
		resume := p.resume
		p.mu.Unlock()
		if resume == nil {
			select {
			case <-l.done:
				return false
			default:
				return true
			}
		}
		select {
		case <-resume:
		case <-l.done:
			return false
		}
	}
}

// close closes both sides of l, once.
func (p *Proxy) close(l *link) {
	p.mu.Lock()
	_, open := p.links[l]
	delete(p.links, l)
	p.mu.Unlock()
	if !open {
		return
	}
	close(l.done)
	_ = l.client.Close()
	_ = l.target.Close()
}
