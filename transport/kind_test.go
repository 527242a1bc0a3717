package transport_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/pipestream/pipestream/transport"
)

// Every kind's name reads back as the kind, whatever its case and through
// the text interfaces a configuration file uses.
func TestParseKind(t *testing.T) {
	tests := []struct {
		in   string
		want transport.Kind
	}{
		{"gnet", transport.Gnet},
		{"GNet", transport.Gnet},
		{"netconn", transport.NetConn},
		{"NetConn", transport.NetConn},
		{"net.conn", transport.NetConn},
	}
	for _, tc := range tests {
		got, err := transport.ParseKind(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseKind(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, k := range transport.Kinds() {
		text, err := k.MarshalText()
		if err != nil {
			t.Fatalf("%v.MarshalText: %v", k, err)
		}
		if string(text) != k.String() {
			t.Errorf("%v.MarshalText = %q, want its String", k, text)
		}
		var back transport.Kind = -1
		if err := back.UnmarshalText(text); err != nil || back != k {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", text, back, err, k)
		}
	}
}

// An unknown name is refused with an error that says which names would do;
// an unknown Kind value fails every method that needs an implementation.
func TestUnknownKind(t *testing.T) {
	for _, in := range []string{"", "carrier pigeon", "gnet ", "tcp"} {
		k, err := transport.ParseKind(in)
		if !errors.Is(err, transport.ErrUnknownKind) {
			t.Errorf("ParseKind(%q) = %v, %v; want ErrUnknownKind", in, k, err)
			continue
		}
		want := `transport: unknown kind "` + in + `": want gnet or netconn`
		if err.Error() != want {
			t.Errorf("ParseKind(%q) error %q, want %q", in, err, want)
		}
	}
	var k transport.Kind = transport.NetConn
	if err := k.UnmarshalText([]byte("smoke signals")); !errors.Is(err, transport.ErrUnknownKind) || k != transport.NetConn {
		t.Errorf("UnmarshalText of an unknown name: %v, kind now %v; want ErrUnknownKind and the kind unchanged", err, k)
	}

	bad := transport.Kind(len(transport.Kinds()))
	if got, want := bad.String(), "transport.Kind(2)"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	if _, err := bad.MarshalText(); !errors.Is(err, transport.ErrUnknownKind) {
		t.Errorf("MarshalText = %v, want ErrUnknownKind", err)
	}
	if c := bad.Caps(); c != (transport.Caps{}) {
		t.Errorf("Caps = %+v, want none", c)
	}
	ctx := context.Background()
	if _, err := bad.Listen(ctx, "127.0.0.1:0", nil); !errors.Is(err, transport.ErrUnknownKind) {
		t.Errorf("Listen = %v, want ErrUnknownKind", err)
	}
	if _, err := bad.Dial(ctx, "127.0.0.1:1", nil); !errors.Is(err, transport.ErrUnknownKind) {
		t.Errorf("Dial = %v, want ErrUnknownKind", err)
	}
	if _, err := bad.NewConnector(); !errors.Is(err, transport.ErrUnknownKind) {
		t.Errorf("NewConnector = %v, want ErrUnknownKind", err)
	}
}

// The registry lists each kind once, under a name of its own, and what it
// says a kind can do is what the kind does.
func TestRegistry(t *testing.T) {
	ks := transport.Kinds()
	if len(ks) != 2 || ks[0] != transport.Gnet || ks[1] != transport.NetConn {
		t.Fatalf("Kinds = %v, want [gnet netconn]", ks)
	}
	seen := map[string]bool{}
	for _, k := range ks {
		name := strings.ToLower(k.String())
		if seen[name] {
			t.Errorf("two kinds named %q", name)
		}
		seen[name] = true
	}
	if c := transport.Gnet.Caps(); c.TLS {
		t.Errorf("gnet Caps = %+v, want no TLS", c)
	}
	if c := transport.NetConn.Caps(); !c.TLS {
		t.Errorf("netconn Caps = %+v, want TLS", c)
	}
	server, client := tlsConfigs(t)
	forEachKind(t, func(t *testing.T, k transport.Kind) {
		caps := k.Caps()
		if want := runtime.GOOS == "linux"; caps.Sendfile != want {
			t.Errorf("Caps.Sendfile = %v, want %v", caps.Sendfile, want)
		}
		// Plain TCP: the channel sends file regions as Caps says.
		s := listen(t, k, nil)
		ch := dial(t, dialerFor(t, k), s.Addr().String(), nil)
		if got := transport.SendsFileRegions(ch); got != caps.Sendfile {
			t.Errorf("SendsFileRegions = %v, Caps.Sendfile = %v", got, caps.Sendfile)
		}

		// TLS: accepted by every constructor exactly when Caps says so.
		tlsOpt := transport.WithTLS(client)
		if !caps.TLS {
			// Refused up front. (A kind with TLS would wait for the
			// plain server's answer to its handshake.)
			if ch, err := k.Dial(context.Background(), s.Addr().String(), nil, quiet, tlsOpt); err == nil {
				_ = ch.Close()
				t.Error("Dial with TLS succeeded on a kind without TLS")
			}
		}
		c, err := k.NewConnector(quiet, tlsOpt)
		if (err == nil) != caps.TLS {
			t.Fatalf("NewConnector with TLS: err = %v, Caps.TLS = %v", err, caps.TLS)
		}
		ln, err := k.Listen(context.Background(), "127.0.0.1:0", nil, quiet, transport.WithTLS(server))
		if (err == nil) != caps.TLS {
			t.Fatalf("Listen with TLS: err = %v, Caps.TLS = %v", err, caps.TLS)
		}
		if !caps.TLS {
			return
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			if err := ln.Shutdown(ctx); err != nil {
				t.Error(err)
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		tch, err := c.Dial(ctx, ln.Addr().String(), nil)
		if err != nil {
			t.Fatalf("TLS Dial: %v", err)
		}
		if _, ok := transport.TLSConnectionState(tch); !ok {
			t.Error("channel dialed with TLS has no TLS state")
		}
		// Close ends the connector's channels.
		if err := c.Close(); err != nil {
			t.Error(err)
		}
		select {
		case <-tch.Done():
		default:
			t.Error("TLS channel not done when Close returned")
		}
	})
}
