package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Issue 13, "acknowledged means durable": once a client holds a successful
// reply to CLOSE, every peer that acknowledged the stream either links its
// bytes or records its copy missing, and no peer serves an older version
// under the name. These tests SIGKILL real serve processes around a put and
// check the peers' data directories once the group is whole again (see
// crashcheck_test.go for the checker).

// killAfterCommit puts data as name through the leader and SIGKILLs the
// victims the moment put prints committed. It returns the put's record and
// whether some victim had not yet recorded the entry when it died, that is
// whether the kill hit the window between commit and apply.
func (g *group) killAfterCommit(dir, name string, data []byte, victims []string) (*putRecord, bool) {
	t := g.t
	t.Helper()
	put := g.startPut(writeFile(t, dir, filepath.Base(name), data), name, g.leader)
	index, term := awaitCommitted(t, put)
	for _, id := range victims {
		_ = g.proc(id).cmd.Process.Kill()
	}
	for _, id := range victims {
		g.kill(id) // waits until it is gone
	}
	waitPut(t, put)
	rec := &putRecord{Name: name, Size: len(data), SHA256: sha256.Sum256(data), Primary: g.leader, Outcome: outCommitted, Index: index, Term: term}
	hit := false
	for _, id := range victims {
		if !g.hasRecord(id, index) {
			hit = true
		}
	}
	return rec, hit
}

// The primary is the leader and has applied the entry when put prints
// committed; both followers, which acknowledged CLOSE, are SIGKILLed at
// that moment, before they apply it. Restarted, they must link the copy
// they acknowledged: the file is byte-equal on all three peers.
func TestLossFollowersKilledAfterCommit(t *testing.T) {
	if testing.Short() {
		t.Skip("runs and kills three processes")
	}
	g := startGroup(t)
	followers := g.others(g.leader)
	h := new(history)
	c := g.newClient()
	var rec *putRecord
	for attempt := 1; ; attempt++ {
		name := fmt.Sprintf("loss/after-commit-%d.bin", attempt)
		r, hit := g.killAfterCommit(t.TempDir(), name, randomBytes(uint64(attempt), 3<<20+777), followers)
		h.add(r)
		g.restartAll(followers...)
		if hit {
			rec = r
			break
		}
		// Both had applied the entry already: this round proves nothing.
		t.Logf("attempt %d: the followers had applied index %d before the kill", attempt, r.Index)
		if attempt == 5 {
			t.Fatal("in 5 attempts the followers always applied the entry before SIGKILL reached them")
		}
	}
	g.barrier(context.Background(), nil, c)
	want := hex.EncodeToString(rec.SHA256[:])
	for _, s := range g.stores() {
		r, ok := s.newest[rec.Name]
		switch {
		case !ok:
			t.Errorf("%s: acknowledged %s (index %d) and holds no record of it: its copy was dropped on restart", s.id, rec.Name, rec.Index)
		case r.Index != rec.Index || r.Missing || r.SHA256 != want || s.dataSum[rec.Name] != want:
			t.Errorf("%s: acknowledged %s (index %d, sha256 %.12s) and holds index %d missing=%v sha256 %.12s data %.12s",
				s.id, rec.Name, rec.Index, want, r.Index, r.Missing, r.SHA256, s.dataSum[rec.Name])
		}
	}
	g.checkOrFail(h, []string{rec.Name})
}

// A name is put twice. A follower is SIGKILLed after v2 commits and before
// it applies v2, and its copy of v2 is destroyed while it is down. After
// the restart it must not serve v1 under the name: its newest record is
// v2's, missing (or holding v2's bytes), and get does not give v1's bytes.
func TestLossStaleVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("runs and kills three processes")
	}
	g := startGroup(t)
	victim := g.others(g.leader)[0]
	h := new(history)
	c := g.newClient()
	dir := t.TempDir()
	var v1, v2 *putRecord
	var data1 []byte
	for attempt := 1; ; attempt++ {
		name := fmt.Sprintf("loss/versioned-%d.bin", attempt)
		data1 = randomBytes(uint64(100+attempt), 1<<20+3)
		put := g.startPut(writeFile(t, dir, "v1", data1), name, g.leader)
		index, term := awaitCommitted(t, put)
		waitPut(t, put)
		v1 = &putRecord{Name: name, Size: len(data1), SHA256: sha256.Sum256(data1), Primary: g.leader, Outcome: outCommitted, Index: index, Term: term}
		h.add(v1)
		// v1 is linked everywhere before v2 starts.
		g.barrier(context.Background(), nil, c)

		r, hit := g.killAfterCommit(dir, name, randomBytes(uint64(200+attempt), 2<<20+5), []string{victim})
		v2 = r
		h.add(v2)
		if hit {
			break
		}
		t.Logf("attempt %d: %s had applied index %d before the kill", attempt, victim, r.Index)
		g.restartAll(victim)
		if attempt == 5 {
			t.Fatalf("in 5 attempts %s always applied v2 before SIGKILL reached it", victim)
		}
	}
	// The victim's copy of v2 is lost while it is down.
	tmp := filepath.Join(g.files(victim), "tmp")
	ents, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(tmp, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("removed %d files from %s's tmp", len(ents), victim)
	g.restartAll(victim)
	g.barrier(context.Background(), nil, c)

	s, err := readPeerStore(victim, g.files(victim))
	if err != nil {
		t.Fatal(err)
	}
	want2 := hex.EncodeToString(v2.SHA256[:])
	switch r, ok := s.newest[v2.Name]; {
	case !ok:
		t.Errorf("%s: no record of %s at all", victim, v2.Name)
	case r.Index == v1.Index:
		t.Errorf("%s: serves v1 (index %d) under %s, committed as v2 at index %d", victim, v1.Index, v2.Name, v2.Index)
	case r.Index != v2.Index:
		t.Errorf("%s: newest record of %s is index %d, v2 is %d", victim, v2.Name, r.Index, v2.Index)
	case !r.Missing && (r.SHA256 != want2 || s.dataSum[v2.Name] != want2):
		t.Errorf("%s: %s at index %d is not missing and holds sha256 %.12s (data %.12s), not v2's %.12s", victim, v2.Name, r.Index, r.SHA256, s.dataSum[v2.Name], want2)
	}
	// What a reader gets, over the network from the victim or from its
	// directory: an error, or v2's bytes; never v1's.
	for _, how := range [][]string{{"--id", victim}, {"--id", victim, "--local"}} {
		var stdout, stderr bytes.Buffer
		get := exec.Command(g.bin, append([]string{"get", v2.Name, "--config", g.config}, how...)...)
		get.Stdout, get.Stderr = &stdout, &stderr
		if err := get.Run(); err == nil && bytes.Equal(stdout.Bytes(), data1) {
			t.Errorf("%s: get %s %v gives v1's bytes (index %d); v2 committed at index %d", victim, v2.Name, how, v1.Index, v2.Index)
		}
	}
	g.checkOrFail(h, []string{v2.Name})
}

// The primary, a follower, is SIGKILLed a few milliseconds after the
// client sends CLOSE: before, during or just after the commit it forwards
// to the leader. The put is indeterminate; whatever became of the entry,
// the group agrees on it once the primary is back, and a peer that
// acknowledged it links it or records it missing.
func TestLossPrimaryKilledAtClose(t *testing.T) {
	if testing.Short() {
		t.Skip("runs and kills three processes")
	}
	g := startGroup(t)
	primary := g.others(g.leader)[0]
	h := new(history)
	c := g.newClient()
	var names []string
	for i := range 6 {
		name := fmt.Sprintf("loss/at-close-%d.bin", i)
		names = append(names, name)
		ev := newPutEvents(0)
		ev.drain = true
		done := make(chan *putRecord, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		go func() { done <- streamPut(ctx, h, c, name, primary, randomBytes(uint64(300+i), 2<<20), ev) }()
		select {
		case <-ev.closeSent:
			// The schedule's delay: 0, 3, 6 ... ms into the commit.
			time.Sleep(time.Duration(3*i) * time.Millisecond)
		case r := <-done:
			done <- r
		}
		g.kill(primary)
		rec := <-done
		cancel()
		t.Logf("%v", rec)
		g.restartAll(primary)
	}
	g.barrier(context.Background(), h, c)
	g.checkOrFail(h, names)
}
