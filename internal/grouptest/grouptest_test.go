package grouptest_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/internal/grouptest"
	"github.com/pipestream/pipestream/internal/leaktest"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/statemachine"
)

func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }

// A group starts, agrees on a leader and commits a file to every peer; a
// follower stopped and restarted on a new stream port serves the file it
// acknowledged, and the group commits through it again.
func TestStartRestart(t *testing.T) {
	buffertest.Check(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	ids := []string{"a", "b", "c"}
	var cfgs []peer.Config
	for _, id := range ids {
		cfg := grouptest.Config(id, ids)
		cfg.Logger = quiet
		cfg.DataDir = t.TempDir()
		cfgs = append(cfgs, cfg)
	}
	peers, members := grouptest.Start(t, ctx, cfgs)
	defer func() {
		for _, p := range peers {
			if p != nil {
				grouptest.Stop(t, ctx, p)
			}
		}
	}()
	for i, m := range members {
		if m.ID != ids[i] || m.StreamAddr == "" || m.RaftAddr == "" || m.CommitAddr == "" {
			t.Fatalf("member %d = %+v, want %s with every address bound", i, m, ids[i])
		}
	}
	leader := grouptest.Leader(t, ctx, peers, members)

	// put commits data under name and returns the entry's index and term.
	put := func(name string, data []byte) (index, term uint64) {
		t.Helper()
		c, err := datastream.NewClient(members, datastream.WithLogger(quiet))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		out, err := c.Stream(ctx, []byte(name), datastream.WithPrimary(members[leader].ID))
		if err != nil {
			t.Fatal(err)
		}
		out.WriteAsync(ctx, data)
		r, err := out.Close(ctx).Wait(ctx)
		if err != nil {
			t.Fatalf("put %s: %v", name, err)
		}
		return r.RaftClientReply.GetLogIndex(), r.RaftClientReply.GetTerm()
	}
	// holds checks that peer i links name, committed at index and term,
	// with exactly data. A follower links when it applies the entry,
	// after the client's reply: it is given until ctx is done.
	holds := func(i int, name string, data []byte, index, term uint64) {
		t.Helper()
		fs := peers[i].StateMachine().(*statemachine.FileStore)
		sf, ok := fs.Lookup(name)
		for n := 0; !ok && n < 3000 && ctx.Err() == nil; n++ {
			time.Sleep(10 * time.Millisecond)
			sf, ok = fs.Lookup(name)
		}
		if !ok {
			t.Fatalf("%s: %q never linked", members[i].ID, name)
		}
		if sf.Index != index || sf.Term != term {
			t.Errorf("%s: %q linked at %d/%d, committed at %d/%d", members[i].ID, name, sf.Index, sf.Term, index, term)
		}
		f, err := fs.Open(name)
		if err != nil {
			t.Fatalf("%s: %v", members[i].ID, err)
		}
		defer f.Close()
		got, err := io.ReadAll(f)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: %q holds %d bytes (%v), want the %d put", members[i].ID, name, len(got), err, len(data))
		}
	}

	first := bytes.Repeat([]byte("first "), 1000)
	i1, t1 := put("first", first)
	for i := range peers {
		holds(i, "first", first, i1, t1)
	}

	f := (leader + 1) % len(peers)
	old := members[f].StreamAddr
	grouptest.Stop(t, ctx, peers[f])
	peers[f] = nil
	grouptest.Restart(t, ctx, cfgs[f], f, peers, members)
	grouptest.WaitReady(t, ctx, peers)
	if members[f].StreamAddr == old {
		t.Errorf("restarted on the old stream address %s", old)
	}
	holds(f, "first", first, i1, t1)

	leader = grouptest.Leader(t, ctx, peers, members)
	second := []byte(fmt.Sprintf("second, after %s restarted", members[f].ID))
	i2, t2 := put("second", second)
	for i := range peers {
		holds(i, "second", second, i2, t2)
	}
}

// StartServers returns servers connected to each other, each dialing the
// address Dial gives, and a client of their members streams through all
// of them.
func TestStartServers(t *testing.T) {
	buffertest.Check(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dials := map[[2]int]bool{}
	servers, members, sms := grouptest.StartServers(t, ctx, 3, grouptest.ServerOptions{
		Dial: func(from, to int, addr string) string {
			dials[[2]int{from, to}] = true
			return addr
		},
	})
	if len(dials) != 9 {
		t.Errorf("Dial called for %d pairs, want 9", len(dials))
	}
	for i, s := range servers {
		if want := fmt.Sprintf("s%d", i+1); s.ID() != want || members[i].ID != want || members[i].StreamAddr != s.Addr().String() {
			t.Errorf("server %d is %s, member %+v at %s; want %s", i, s.ID(), members[i], s.Addr(), want)
		}
		for _, m := range members {
			if m.ID != s.ID() && !s.PeerConnected(m.ID) {
				t.Errorf("%s not connected to %s", s.ID(), m.ID)
			}
		}
	}

	c, err := datastream.NewClient(members, datastream.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	out, err := c.Stream(ctx, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("through the chain")
	out.WriteAsync(ctx, data)
	if _, err := out.Close(ctx).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	k := statemachine.StreamKey{ClientID: string(c.ID()), StreamID: out.ID()}
	for i, sm := range sms {
		if got, ok := sm.(*statemachine.Memory).Data(k); !ok || !bytes.Equal(got, data) {
			t.Errorf("%s holds %q (linked %v), want %q", members[i].ID, got, ok, data)
		}
	}
}
