package raft_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pipestream/pipestream/group"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/raft"
)

func TestConfigErrors(t *testing.T) {
	good := group.Member{ID: "a", RaftAddr: "127.0.0.1:1", CommitAddr: "127.0.0.1:2"}
	newErrs := []struct {
		name string
		cfg  raft.Config
	}{
		{"no id", raft.Config{RaftAddr: "127.0.0.1:0", CommitAddr: "127.0.0.1:0"}},
		{"no commit address", raft.Config{ID: "a", RaftAddr: "127.0.0.1:0"}},
		{"wildcard raft address", raft.Config{ID: "a", RaftAddr: "0.0.0.0:0", CommitAddr: "127.0.0.1:0"}},
		{"wildcard commit address", raft.Config{ID: "a", RaftAddr: "127.0.0.1:0", CommitAddr: ":0"}},
		{"lease longer than heartbeat", raft.Config{ID: "a", RaftAddr: "127.0.0.1:0", CommitAddr: "127.0.0.1:0",
			Tuning: raft.Tuning{HeartbeatTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: time.Second}}},
	}
	for _, tc := range newErrs {
		t.Run("New/"+tc.name, func(t *testing.T) {
			n, err := raft.New(tc.cfg)
			if !errors.Is(err, raft.ErrConfig) {
				t.Errorf("New: %v, want ErrConfig", err)
			}
			if n != nil {
				n.Shutdown()
			}
		})
	}

	startErrs := []struct {
		name  string
		peers func(self group.Member) []group.Member
	}{
		{"no peers", func(group.Member) []group.Member { return nil }},
		{"self missing", func(group.Member) []group.Member { return []group.Member{good} }},
		{"self with other addresses", func(self group.Member) []group.Member {
			self.RaftAddr = "127.0.0.1:1"
			return []group.Member{self}
		}},
		{"duplicate id", func(self group.Member) []group.Member {
			other := good
			other.ID = self.ID
			return []group.Member{self, other}
		}},
		{"incomplete peer", func(self group.Member) []group.Member { return []group.Member{self, {ID: "b"}} }},
	}
	for _, tc := range startErrs {
		t.Run("Start/"+tc.name, func(t *testing.T) {
			n, err := raft.New(testConfig("self"))
			if err != nil {
				t.Fatal(err)
			}
			defer n.Shutdown()
			if err := n.Start(t.Context(), tc.peers(n.Addr())); !errors.Is(err, raft.ErrConfig) {
				t.Errorf("Start: %v, want ErrConfig", err)
			}
		})
	}
}

func TestNodeLifecycle(t *testing.T) {
	var logs bytes.Buffer
	cfg := testConfig("solo")
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	n, err := raft.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := streamInfo("c", 1)
	if _, err := n.Commit(t.Context(), s); !errors.Is(err, raft.ErrNotStarted) {
		t.Errorf("Commit before Start: %v, want ErrNotStarted", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	if err := n.Start(ctx, []group.Member{n.Addr()}); err != nil {
		t.Fatal(err)
	}
	if err := n.Start(ctx, []group.Member{n.Addr()}); err == nil {
		t.Error("second Start succeeded")
	}
	if id, err := n.WaitLeader(ctx); err != nil || id != "solo" {
		t.Fatalf("WaitLeader: %q, %v", id, err)
	}
	if rep, err := n.Commit(ctx, s); err != nil || !rep.GetSuccess() {
		t.Fatalf("Commit on a group of one: %v, %v", rep, err)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := n.Shutdown(); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	rep, err := n.Commit(ctx, s)
	if !errors.Is(err, raft.ErrClosed) || rep.GetErrorCode() != pb.ErrorCode_CANCELLED {
		t.Errorf("Commit after Shutdown: %v, %v; want ErrClosed, CANCELLED", rep, err)
	}
	if _, err := n.WaitLeader(ctx); !errors.Is(err, raft.ErrClosed) {
		t.Errorf("WaitLeader after Shutdown: %v", err)
	}
	// hashicorp/raft's own log went to the slog.Logger.
	if out := logs.String(); !strings.Contains(out, `msg="entering leader state"`) || !strings.Contains(out, "logger=raft") {
		t.Errorf("raft's log did not reach slog:\n%s", out)
	}
}

func TestShutdownLeavesNoGoroutines(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	c := newCluster(t, 3, true, nil)
	li := c.leader()
	fi := c.follower(li)
	c.commit(fi, streamInfo("c", 1)) // forwarding connections in use and pooled
	c.stop(li)
	c.commit(fi, streamInfo("c", 2))
	c.shutdown()
	clear(c.nodes)
	// hashicorp/raft's transport and the commit listener leave no goroutine
	// behind once Shutdown has returned.
	goleak.VerifyNone(t, ignore)
}
