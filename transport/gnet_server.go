package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"

	"github.com/panjf2000/gnet/v2"
)

var (
	errGnetTLS         = errors.New("transport: the gnet transport has no TLS; use ListenConn or DialConn")
	errGnetUnsupported = errors.New("transport: the gnet transport needs a Unix system; use ListenConn or DialConn")
)

func gnetOptions(o *options) []gnet.Option {
	nodelay := gnet.TCPNoDelay
	if !o.noDelay {
		nodelay = gnet.TCPDelay
	}
	return []gnet.Option{
		gnet.WithNumEventLoop(o.eventLoops),
		gnet.WithReadBufferCap(o.readBufferCap),
		gnet.WithTCPNoDelay(nodelay),
		gnet.WithLogger(gnetLogger{o.logger}),
		// A restarted server must be able to bind its port again while
		// connections of its previous run wait in TIME_WAIT, as net.Listen
		// allows.
		gnet.WithReuseAddr(true),
	}
}

// gnetServer is a Server on a gnet engine.
type gnetServer struct {
	gnetEvents
	addr    net.Addr
	eng     gnet.Engine
	bootErr error
	booted  chan struct{} // closed by OnBoot
	stopped chan struct{} // closed when gnet.Run has returned
	runErr  error
	stop    sync.Once
}

// Listen starts a gnet server on addr ("host:port" or "tcp://host:port";
// port 0 picks a free port) and returns once it is listening. init is
// called for every accepted connection, on its event loop.
func Listen(ctx context.Context, addr string, init Initializer, opts ...Option) (Server, error) {
	o := newOptions(opts)
	if o.tls != nil {
		return nil, errGnetTLS
	}
	if !gnetSupported {
		return nil, errGnetUnsupported
	}
	network, hostport, err := splitAddr(addr)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := &gnetServer{
		gnetEvents: gnetEvents{opts: &o, init: init},
		booted:     make(chan struct{}),
		stopped:    make(chan struct{}),
	}
	go func() {
		defer close(s.stopped)
		s.runErr = gnet.Run(s, network+"://"+hostport, gnetOptions(&o)...)
	}()

	// Booting does not block, so waiting for it here is bounded even when
	// ctx is done meanwhile; the engine is then stopped again.
	select {
	case <-s.booted:
	case <-s.stopped:
		return nil, fmt.Errorf("transport: listen %s: %w", addr, s.runErr)
	}
	if s.bootErr != nil {
		<-s.stopped
		return nil, s.bootErr
	}
	if err := ctx.Err(); err != nil {
		_ = s.Shutdown(context.Background())
		return nil, err
	}
	return s, nil
}

// OnBoot learns the bound address from a duplicate of the listening socket,
// since gnet does not report the port it was given for port 0.
func (s *gnetServer) OnBoot(eng gnet.Engine) gnet.Action {
	defer close(s.booted)
	s.eng = eng
	fd, err := eng.Dup()
	if err != nil {
		s.bootErr = fmt.Errorf("transport: learning the listen address: %w", err)
		return gnet.Shutdown
	}
	f := os.NewFile(uintptr(fd), "gnet-listener")
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		s.bootErr = fmt.Errorf("transport: learning the listen address: %w", err)
		return gnet.Shutdown
	}
	s.addr = ln.Addr()
	_ = ln.Close()
	return gnet.None
}

func (s *gnetServer) Addr() net.Addr { return s.addr }

// Shutdown stops the engine: gnet closes every connection on its loop
// (firing ChannelInactive) and gnet.Run returns once all loops have ended.
func (s *gnetServer) Shutdown(ctx context.Context) error {
	s.stop.Do(func() {
		// Engine.Stop signals the engine and then polls twice a second
		// until it has stopped; a done context makes it return right after
		// the signal, and waiting for gnet.Run to return is the real wait.
		signalOnly, cancel := context.WithCancel(context.Background())
		cancel()
		_ = s.eng.Stop(signalOnly)
	})
	select {
	case <-s.stopped:
		return s.runErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Dialer connects gnet channels that share one client engine and its event
// loops. The zero value is not usable; call NewDialer.
type Dialer struct {
	events gnetEvents
	cli    *gnet.Client
	gate   *dialGate
}

// NewDialer starts a client engine with its event loops (WithEventLoops).
func NewDialer(opts ...Option) (*Dialer, error) {
	o := newOptions(opts)
	if o.tls != nil {
		return nil, errGnetTLS
	}
	if !gnetSupported {
		return nil, errGnetUnsupported
	}
	d := &Dialer{events: gnetEvents{opts: &o}}
	cli, err := gnet.NewClient(&d.events, gnetOptions(&o)...)
	if err != nil {
		return nil, fmt.Errorf("transport: %w", err)
	}
	if err := cli.Start(); err != nil {
		return nil, fmt.Errorf("transport: %w", err)
	}
	d.cli, d.gate = cli, newDialGate()
	return d, nil
}

// Dial connects to addr ("host:port" or "tcp://host:port") and returns once
// init has run and ChannelActive has been fired on the channel's event loop.
func (d *Dialer) Dial(ctx context.Context, addr string, init Initializer) (Channel, error) {
	return d.dial(ctx, addr, init, nil)
}

func (d *Dialer) dial(ctx context.Context, addr string, init Initializer, onDone func()) (Channel, error) {
	network, hostport, err := splitAddr(addr)
	if err != nil {
		return nil, err
	}
	ctx, done, err := d.gate.enter(ctx)
	if err != nil {
		return nil, err
	}
	defer done()

	var nd net.Dialer
	conn, err := nd.DialContext(ctx, network, hostport)
	if err != nil {
		return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		// gnet only ever turns TCP_NODELAY on, and Go dials with it on.
		_ = tc.SetNoDelay(d.events.opts.noDelay)
	}
	ch := newGnetChannel(d.events.opts, init)
	ch.onDone = onDone
	// EnrollContext duplicates the socket into the engine and closes conn;
	// it returns after OnOpen has run.
	if _, err := d.cli.EnrollContext(conn, ch); err != nil {
		return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
	}
	if ch.out == nil { // OnOpen has run and closed it
		return nil, fmt.Errorf("transport: dial %s: %w", addr, ch.openErr)
	}
	return ch, nil
}

// Close closes every channel of the dialer (each fires ChannelInactive),
// cancels dials in progress and stops the event loops. It must not be
// called from a handler running on one of them.
func (d *Dialer) Close() error {
	if !d.gate.close() {
		return nil
	}
	return d.cli.Stop()
}

// Dial connects a gnet channel on an engine of its own with one event loop,
// which stops when the channel closes; Done is closed after that. For many
// connections a Dialer shares its loops and is cheaper.
func Dial(ctx context.Context, addr string, init Initializer, opts ...Option) (Channel, error) {
	d, err := NewDialer(append([]Option{WithEventLoops(1)}, opts...)...)
	if err != nil {
		return nil, err
	}
	ch, err := d.dial(ctx, addr, init, func() { _ = d.Close() })
	if err != nil {
		_ = d.Close()
		return nil, err
	}
	return ch, nil
}

// gnetLogger passes gnet's messages to slog. gnet reports its lifecycle at
// info level; that is debug detail for a library user.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(format string, args ...any) { g.log(slog.LevelDebug, format, args) }
func (g gnetLogger) Infof(format string, args ...any)  { g.log(slog.LevelDebug, format, args) }
func (g gnetLogger) Warnf(format string, args ...any)  { g.log(slog.LevelWarn, format, args) }
func (g gnetLogger) Errorf(format string, args ...any) { g.log(slog.LevelError, format, args) }

// Fatalf is what gnet calls when it cannot go on; like zap's Fatal, the
// default gnet logger, it exits.
func (g gnetLogger) Fatalf(format string, args ...any) {
	g.log(slog.LevelError, format, args)
	os.Exit(1)
}

func (g gnetLogger) log(level slog.Level, format string, args []any) {
	if !g.l.Enabled(context.Background(), level) {
		return
	}
	g.l.Log(context.Background(), level, "gnet: "+fmt.Sprintf(format, args...))
}
