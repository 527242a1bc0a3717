package transport

import (
	"crypto/tls"
	"log/slog"
	"runtime"
)

// Defaults for the options.
const (
	// DefaultReadBufferCap is enough for headers and small frames: the
	// rest of a frame of 64 KiB or more is read from the socket straight
	// into the frame's buffer (see codec.FrameDecoder), so a larger read
	// buffer only adds a copy of what it takes of such frames.
	DefaultReadBufferCap = 64 << 10
	// DefaultMaxOutbound bounds the bytes queued on one connection.
	DefaultMaxOutbound = 64 << 20
)

// netConnMaxRead caps the free space the net.Conn transport reserves for a
// read, which is per connection (gnet's read buffer is per event loop).
const netConnMaxRead = 64 << 10

// Option configures a server, a dialer or a dialed channel.
type Option func(*options)

type options struct {
	logger        *slog.Logger
	readBufferCap int
	eventLoops    int
	noDelay       bool
	maxOutbound   int
	tls           *tls.Config
}

func newOptions(opts []Option) options {
	o := options{
		logger:        slog.Default(),
		readBufferCap: DefaultReadBufferCap,
		noDelay:       true,
		maxOutbound:   DefaultMaxOutbound,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.eventLoops <= 0 {
		o.eventLoops = runtime.GOMAXPROCS(0)
	}
	return o
}

// WithLogger sets the logger of the transport and of every channel's
// pipeline. The default is slog.Default(). gnet's own messages go to it too;
// its lifecycle chatter is logged at debug level.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithReadBufferCap sets how many bytes one read from a socket may take.
// For gnet it is the read buffer of each event loop, rounded up to a power
// of two; for net.Conn the per-connection buffer reserves at most 64 KiB of
// it per read and grows as frames need. The default is
// DefaultReadBufferCap.
func WithReadBufferCap(n int) Option { return func(o *options) { o.readBufferCap = n } }

// WithEventLoops sets the number of gnet event loops of a server or dialer.
// The default, and any n <= 0, is runtime.GOMAXPROCS(0). The net.Conn
// transport ignores it.
func WithEventLoops(n int) Option { return func(o *options) { o.eventLoops = n } }

// WithNoDelay sets TCP_NODELAY on connections. The default is true: the
// transport batches writes itself, so Nagle's delay only adds latency.
func WithNoDelay(on bool) Option { return func(o *options) { o.noDelay = on } }

// WithMaxOutbound bounds the bytes that one connection holds written but not
// yet taken by the kernel; a Write past it fails with ErrOutboundFull. For
// gnet the bytes gnet itself buffers count as of the last time the event
// loop looked at the connection. The default is DefaultMaxOutbound.
func WithMaxOutbound(n int) Option { return func(o *options) { o.maxOutbound = n } }

// WithTLS makes ListenConn and DialConn speak TLS with cfg. The gnet
// transport has no TLS: Listen, Dial and NewDialer refuse this option.
func WithTLS(cfg *tls.Config) Option { return func(o *options) { o.tls = cfg } }
