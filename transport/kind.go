package transport

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Kind names a transport implementation, for callers that choose one by
// configuration. Its text form is its name ("gnet", "netconn"): ParseKind
// reads it and String writes it, and since Kind implements
// encoding.TextMarshaler and encoding.TextUnmarshaler it can be a field of
// a TOML or JSON file or a flag value as it is.
//
// What a kind can do is asked of it (Caps) rather than assumed from its
// name, so that callers need no change when a kind is added.
type Kind int

const (
	// Gnet is the event-loop transport: Listen, Dial and NewDialer.
	Gnet Kind = iota
	// NetConn is the net.Conn transport: ListenConn and DialConn.
	NetConn
)

// Caps says what a transport kind can do on this system.
type Caps struct {
	// TLS is whether the kind accepts WithTLS.
	TLS bool
	// Sendfile is whether the kind's channels over plain TCP send a
	// FileRegion from the page cache with sendfile(2), without copying
	// it through user space. Whether one channel does is
	// SendsFileRegions.
	Sendfile bool
}

// Connector dials channels of one kind; Kind.NewConnector makes one. A
// connector may share resources between its channels (gnet's event
// loops), so one connector for many connections is cheaper than a Dial
// for each.
type Connector interface {
	// Dial connects to addr ("host:port" or "tcp://host:port") and
	// returns once init has run and ChannelActive has been fired. After
	// Close it fails with ErrClosed.
	Dial(ctx context.Context, addr string, init Initializer) (Channel, error)
	// Close cancels dials in progress, closes every channel the
	// connector dialed and returns once each is done. It must not be
	// called from a handler of one of them. Closing twice does nothing.
	Close() error
}

// kindInfo is a kind's entry in the registry.
type kindInfo struct {
	name    string
	aliases []string // also accepted by ParseKind
	caps    Caps
	listen  func(ctx context.Context, addr string, init Initializer, opts ...Option) (Server, error)
	dial    func(ctx context.Context, addr string, init Initializer, opts ...Option) (Channel, error)
	connect func(opts ...Option) (Connector, error)
}

// registry lists every kind, indexed by Kind. Adding a transport means
// adding its constant and its entry here; everything else asks this table.
var registry = [...]kindInfo{
	Gnet: {
		name:   "gnet",
		caps:   Caps{Sendfile: sendfileSupported},
		listen: Listen,
		// An engine of its own, which stops with the channel.
		dial: Dial,
		connect: func(opts ...Option) (Connector, error) {
			d, err := NewDialer(opts...)
			if err != nil {
				return nil, err // not a nil *Dialer in a non-nil interface
			}
			return d, nil
		},
	},
	NetConn: {
		name:    "netconn",
		aliases: []string{"net.conn"},
		caps:    Caps{TLS: true, Sendfile: sendfileSupported},
		listen:  ListenConn,
		dial:    DialConn,
		connect: newConnDialer,
	},
}

// ErrUnknownKind is returned, wrapped, by ParseKind and by the methods of a
// Kind that is not one of the constants.
var ErrUnknownKind = errors.New("transport: unknown kind")

// Kinds returns every kind, in the order of their constants.
func Kinds() []Kind {
	ks := make([]Kind, len(registry))
	for i := range registry {
		ks[i] = Kind(i)
	}
	return ks
}

// ParseKind returns the kind named s, ignoring case: "gnet" or "netconn"
// (also "net.conn").
func ParseKind(s string) (Kind, error) {
	for i, info := range registry {
		if strings.EqualFold(s, info.name) {
			return Kind(i), nil
		}
		for _, a := range info.aliases {
			if strings.EqualFold(s, a) {
				return Kind(i), nil
			}
		}
	}
	return 0, fmt.Errorf("%w %q: want %s", ErrUnknownKind, s, kindNames())
}

// kindNames lists the kinds' names for error messages: "a or b", "a, b or c".
func kindNames() string {
	var b strings.Builder
	for i, info := range registry {
		switch {
		case i == 0:
		case i == len(registry)-1:
			b.WriteString(" or ")
		default:
			b.WriteString(", ")
		}
		b.WriteString(info.name)
	}
	return b.String()
}

func (k Kind) info() (*kindInfo, error) {
	if k < 0 || int(k) >= len(registry) {
		return nil, fmt.Errorf("%w %d", ErrUnknownKind, int(k))
	}
	return &registry[k], nil
}

// String returns the kind's name, or "transport.Kind(n)" for an unknown
// kind.
func (k Kind) String() string {
	info, err := k.info()
	if err != nil {
		return fmt.Sprintf("transport.Kind(%d)", int(k))
	}
	return info.name
}

// MarshalText returns the kind's name; an unknown kind is an error.
func (k Kind) MarshalText() ([]byte, error) {
	info, err := k.info()
	if err != nil {
		return nil, err
	}
	return []byte(info.name), nil
}

// UnmarshalText sets k to the kind named text; see ParseKind.
func (k *Kind) UnmarshalText(text []byte) error {
	parsed, err := ParseKind(string(text))
	if err != nil {
		return err
	}
	*k = parsed
	return nil
}

// Caps returns what the kind can do on this system; an unknown kind can do
// nothing.
func (k Kind) Caps() Caps {
	info, err := k.info()
	if err != nil {
		return Caps{}
	}
	return info.caps
}

// Listen starts a server of kind k; see Listen and ListenConn.
func (k Kind) Listen(ctx context.Context, addr string, init Initializer, opts ...Option) (Server, error) {
	info, err := k.info()
	if err != nil {
		return nil, err
	}
	return info.listen(ctx, addr, init, opts...)
}

// Dial connects one channel with kind k; see Dial and DialConn. For many
// connections, NewConnector is cheaper.
func (k Kind) Dial(ctx context.Context, addr string, init Initializer, opts ...Option) (Channel, error) {
	info, err := k.info()
	if err != nil {
		return nil, err
	}
	return info.dial(ctx, addr, init, opts...)
}

// NewConnector returns a Connector of kind k whose channels get opts. For
// gnet it is a Dialer, whose channels share its event loops.
func (k Kind) NewConnector(opts ...Option) (Connector, error) {
	info, err := k.info()
	if err != nil {
		return nil, err
	}
	return info.connect(opts...)
}
