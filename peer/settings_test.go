package peer_test

import (
	"context"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/internal/testkit"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/server"
)

// TestConfigReachesServer checks that every setting of server.Config can
// be set through peer.Config, under the same name and type, so that a
// field added to the server cannot be left out of the one-call API. The
// exceptions are what a Peer sets itself.
func TestConfigReachesServer(t *testing.T) {
	own := map[string]string{
		"Addr":      "StreamAddr",
		"Peers":     "Peers, as []Member",
		"Committer": "the Raft node",
	}
	st, pt := reflect.TypeFor[server.Config](), reflect.TypeFor[peer.Config]()
	for i := range st.NumField() {
		f := st.Field(i)
		if _, ok := own[f.Name]; ok {
			continue
		}
		pf, ok := pt.FieldByName(f.Name)
		switch {
		case !ok:
			t.Errorf("server.Config.%s cannot be set through peer.Config", f.Name)
		case pf.Type != f.Type:
			t.Errorf("peer.Config.%s is a %v, server.Config's a %v", f.Name, pf.Type, f.Type)
		}
	}
}

// allSettings returns settings with no field at zero or at its default, so
// that a field a layer fails to pass on shows up as a difference.
func allSettings(t *testing.T) (handler.Policy, handler.Limits, handler.Timeouts) {
	p := handler.Policy{GroupID: []byte("g"), WriteQuorum: 1, InlineWrites: true, VerifyEveryPeer: true}
	l := handler.Limits{
		MaxFrame: 1 << 20, MaxHeader: 4 << 10, MaxStreams: 7, MaxStreamsPerConn: 5,
		MaxConnBytes: 3 << 20, MaxPartialBytes: 9 << 20,
	}
	d := handler.Timeouts{
		ReplyTimeout: 11 * time.Second, CommitTimeout: 12 * time.Second, LinkTimeout: 13 * time.Second,
		IdleTimeout: 14 * time.Second, ReadStallTimeout: 15 * time.Second, HandshakeTimeout: 16 * time.Second,
		KeepaliveInterval: 17 * time.Second, KeepaliveTimeout: 18 * time.Second,
		SweepInterval: 19 * time.Millisecond, RedialInterval: 20 * time.Millisecond,
	}
	for _, s := range []struct{ set, defaults any }{
		{p, handler.Policy{}}, {l, handler.Limits{}.WithDefaults()}, {d, handler.Timeouts{}.WithDefaults()},
	} {
		v, def := reflect.ValueOf(s.set), reflect.ValueOf(s.defaults)
		for i := range v.NumField() {
			if v.Field(i).IsZero() || reflect.DeepEqual(v.Field(i).Interface(), def.Field(i).Interface()) {
				t.Fatalf("allSettings leaves %s at zero or its default; give it a value of its own", v.Type().Field(i).Name)
			}
		}
	}
	return p, l, d
}

// TestConfigPassedToServer checks that New hands every setting of
// peer.Config to its stream server unchanged.
func TestConfigPassedToServer(t *testing.T) {
	cfg := testConfig("a", []string{"a"})
	cfg.Policy, cfg.Limits, cfg.Timeouts = allSettings(t)
	p, err := peer.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	got := p.Server().Streams().Config()
	if !reflect.DeepEqual(got.Policy, cfg.Policy) {
		t.Errorf("server's Policy %+v, want %+v", got.Policy, cfg.Policy)
	}
	if got.Limits != cfg.Limits {
		t.Errorf("server's Limits %+v, want %+v", got.Limits, cfg.Limits)
	}
	if got.Timeouts != cfg.Timeouts {
		t.Errorf("server's Timeouts %+v, want %+v", got.Timeouts, cfg.Timeouts)
	}
}

// TestConfigDefaults checks that a Peer's server runs with the defaults
// package handler declares, the ones the handler and the server apply on
// their own.
func TestConfigDefaults(t *testing.T) {
	p, err := peer.New(context.Background(), peer.Config{ID: "a", Peers: []peer.Member{{ID: "a"}}, Logger: testkit.QuietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	got := p.Server().Streams().Config()
	if want := (handler.Limits{}).WithDefaults(); got.Limits != want {
		t.Errorf("Limits %+v, want %+v", got.Limits, want)
	}
	if want := (handler.Timeouts{}).WithDefaults(); got.Timeouts != want {
		t.Errorf("Timeouts %+v, want %+v", got.Timeouts, want)
	}
	if got.ReplyTimeout != handler.DefaultReplyTimeout || got.MaxStreams != handler.DefaultMaxStreams {
		t.Errorf("ReplyTimeout %v and MaxStreams %d, want the handler's defaults", got.ReplyTimeout, got.MaxStreams)
	}
}

// TestConfigPipeline adds a stage through peer.Config.Pipeline and checks
// that it runs on every peer and sees every data byte of a stream.
func TestConfigPipeline(t *testing.T) {
	buffertest.Check(t)
	var seen [3]atomic.Int64 // data bytes each peer's stage saw
	g := startGroup(t, groupOpts{edit: func(i int, cfg *peer.Config) {
		cfg.Pipeline = func(p *pipeline.Pipeline) error {
			return p.AddAfter(handler.StageRouter, "count", pipeline.Inbound(func(ctx *pipeline.Context, pk *handler.Packet) {
				if pk.Header.GetType() == pb.DataStreamPacketHeader_STREAM_DATA {
					seen[i].Add(int64(pk.Body.Len()))
				}
				ctx.FireChannelRead(pk)
			}))
		}
	}})
	data := randomBytes(1, 200<<10+3)
	storeFile(t, g, g.client(), g.members[0].ID, "staged", data)
	for i := range seen {
		if n := seen[i].Load(); n != int64(len(data)) {
			t.Errorf("%s: stage saw %d data bytes, want %d", g.members[i].ID, n, len(data))
		}
	}
}
