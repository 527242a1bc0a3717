package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/pipestream/pipestream/internal/crashpoint"
)

// Crashes at the exact moments of the commit, link, restore and repair
// paths, with real processes: a follower is started with one crash point
// armed (internal/crashpoint), killed by SIGKILL the moment it reaches it,
// and restarted without it. Whatever the moment, every put the client was
// told committed ends up byte-equal on every peer (through its recovery,
// or its repair from the others), and a put that failed is visible
// nowhere.
func TestCrashPoints(t *testing.T) {
	if testing.Short() {
		t.Skip("runs, crashes and restarts three processes")
	}
	// Snapshots compact the log at once, so a wiped peer must restore one.
	g := startGroupWith(t, "snapshot_interval = \"200ms\"\nsnapshot_threshold = 2\ntrailing_logs = 1\n")
	h := new(history)
	c := g.newClient()
	leader := g.leader
	victim := g.others(leader)[0]

	for _, tc := range []struct {
		point string
		// wipe removes the victim's store ("files") or all its state
		// ("all") before the armed start, so that it must repair or
		// restore a snapshot.
		wipe string
		// committed: the put succeeds (the victim crashes after its ack,
		// and links its copy when it replays the entry). Otherwise it
		// may commit on the other two, which recover the pipeline around
		// the victim (the write quorum is a majority), or fail: a resume
		// that reaches the tail after it wrote the victim's CLOSE, and
		// before it parked, finds its copy closed and cannot cut it back.
		// Either way the checker below holds.
		committed bool
	}{
		{"filestore.close.renamed", "", false},
		{"filestore.close.synced", "", false},
		{"raft.apply.before-link", "", true},
		{"filestore.link.recorded", "", true},
		{"filestore.link.renamed", "", true},
		{"filestore.repair.filled", "files", true},
		{"raft.restore.linking", "all", true},
	} {
		t.Run(tc.point, func(t *testing.T) {
			g.kill(victim)
			switch tc.wipe {
			case "files":
				mustRemoveAll(t, g.files(victim))
			case "all":
				mustRemoveAll(t, filepath.Dir(g.files(victim)))
			}
			name := "points/" + tc.point
			arm := tc.point
			if tc.wipe == "" {
				arm += "@" + name // not on the entries its restart replays
			}
			if err := g.restart(victim, crashpoint.Env+"="+arm); err != nil {
				t.Fatal(err)
			}
			data := randomBytes(uint64(len(tc.point)), 1<<20+len(tc.point))
			if tc.wipe == "" {
				if err := g.waitReady(victim); err != nil {
					t.Fatal(err)
				}
				// Every peer connected to the new process (the point is
				// armed for this test's name only, not the barrier's).
				g.barrier(context.Background(), h, c)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				rec := streamPut(ctx, h, c, name, leader, data, nil)
				cancel()
				if tc.committed && rec.Outcome != outCommitted {
					t.Fatalf("put: %v, want it committed (the victim crashes after its ack)", rec)
				}
				if !tc.committed {
					t.Logf("put with the victim dying before its ack: %v", rec)
				}
			}
			g.waitKilled(t, victim, tc.point)
			if err := g.restart(victim); err != nil {
				t.Fatal(err)
			}
			if err := g.waitReady(victim); err != nil {
				t.Fatal(err)
			}
			g.barrier(context.Background(), h, c)
			g.waitHealed(t)
			g.checkOrFail(h, nil)
		})
	}
}

func mustRemoveAll(t *testing.T, dir string) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
}

// waitKilled waits until peer id has killed itself at its crash point.
func (g *group) waitKilled(t *testing.T, id, point string) {
	t.Helper()
	p := g.proc(id)
	select {
	case <-p.exited:
	case <-time.After(testTimeout):
		t.Fatalf("%s never reached crash point %s within %v", id, point, testTimeout)
	}
	var ee *exec.ExitError
	if !errors.As(p.err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("%s ended with %v, not killed at %s\n--- stderr\n%s", id, p.err, point, p.stderr.String())
	}
}

// waitHealed waits until no peer has a missing copy of any name.
func (g *group) waitHealed(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(healTimeout)
	for left := missingCopies(g.stores()); len(left) > 0; left = missingCopies(g.stores()) {
		if time.Now().After(deadline) {
			t.Fatalf("copies still missing %v after the crash: %v", healTimeout, left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
