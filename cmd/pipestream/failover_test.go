package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/datastream"
)

var failoverSeed = flag.Uint64("failover.seed", 0, "seed of the kill offset of TestPrimaryKilled (0: from the clock; the test logs it)")

// TestPrimaryKilled is client failover against real processes: three
// serve processes, a 32 MiB stream through a follower, and that primary
// SIGKILLed at an offset drawn from a seeded generator. The client resumes
// the stream on another peer, the CLOSE commits there, both survivors
// serve the file byte-equal, and the killed peer, restarted, repairs its
// copy and serves it too. An older version of the name committed first
// must be served by no peer afterwards, and the durability checker must
// find every put where it belongs.
func TestPrimaryKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("runs, kills and restarts three processes")
	}
	seed := testSeed(t, *failoverSeed, "failover.seed")
	rng := rand.New(rand.NewPCG(seed, seed))

	const (
		size   = 32 << 20
		packet = 1 << 20
		name   = "failover/blob"
	)
	data := randomBytes(seed, size)
	killAt := packet + rng.IntN(size-2*packet) // mid-stream, past the header

	g := startGroup(t)
	victim := g.others(g.leader)[0]
	c := g.newClient()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	h := new(history)
	if rec := streamPut(ctx, h, c, name, g.leader, randomBytes(seed+1, packet), nil); rec.Outcome != outCommitted {
		t.Fatalf("the older version of %s: %v", name, rec)
	}
	rec := &putRecord{Name: name, Size: size, SHA256: sha256.Sum256(data), Primary: victim, Client: hex.EncodeToString(c.ID()), Start: time.Now()}
	out, err := c.Stream(ctx, []byte(name), datastream.WithPrimary(victim))
	if err != nil {
		t.Fatal(err)
	}
	killed := false
	for off := 0; off < size; off += packet {
		if !killed && off >= killAt {
			t.Logf("SIGKILL %s, the primary, with %d of %d bytes sent", victim, off, size)
			g.kill(victim)
			killed = true
		}
		if err := out.Send(ctx, buffer.Copy(data[off:min(off+packet, size)])); err != nil {
			t.Fatalf("send at %d: %v", off, err)
		}
	}
	reply, err := out.Close(ctx).Wait(ctx)
	if err != nil {
		t.Fatalf("CLOSE after %s was killed: %v", victim, err)
	}
	if reply.Server == victim || reply.BytesWritten() != size {
		t.Fatalf("CLOSE answered by %s for %d bytes; want another peer than %s, %d bytes", reply.Server, reply.BytesWritten(), victim, size)
	}
	t.Logf("committed by %s at log index %d", reply.Server, reply.RaftClientReply.GetLogIndex())
	rec.Stream, rec.Outcome, rec.End = out.ID(), outCommitted, time.Now()
	rec.Index, rec.Term = reply.RaftClientReply.GetLogIndex(), reply.RaftClientReply.GetTerm()
	h.add(rec)

	dir := t.TempDir()
	get := func(id string) ([]byte, error) {
		dst := filepath.Join(dir, "got-"+id)
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if out, err := exec.CommandContext(ctx, g.bin, "get", name, "--config", g.config, "--id", id, "-o", dst).CombinedOutput(); err != nil {
			return nil, &getError{id, err, out}
		}
		return os.ReadFile(dst)
	}
	for _, id := range g.others(victim) {
		got, err := get(id)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s on survivor %s: %d bytes (%v), want the %d sent", name, id, len(got), err, size)
		}
	}

	// The killed peer comes back; the entry leaves it out of the holders,
	// so it records its copy missing and repairs it from a survivor.
	// Until it has caught up with the group it refuses reads
	// (NOT_CAUGHT_UP), and then answers MISSING until its copy is
	// repaired: read from it as soon as it is up, and at every try, never
	// the older version.
	if err := g.restart(victim); err != nil {
		t.Fatal(err)
	}
	refused := 0
	for deadline := time.Now().Add(healTimeout); ; refused++ {
		got, err := get(victim)
		if err == nil {
			if !bytes.Equal(got, data) {
				t.Fatalf("%s on %s, restarted, after %d refused reads: %d bytes that are not the %d sent (the older version had %d)", name, victim, refused, len(got), size, packet)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s on %s: no read served within %v: %v", name, victim, healTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%s refused or missed %d reads before serving the put", victim, refused)
	g.waitHolds(victim, rec, data)
	if got, err := get(victim); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%s on %s after its repair: %d bytes (%v), want the %d sent", name, victim, len(got), err, size)
	}
	g.barrier(context.Background(), h, c)
	g.checkOrFail(h, nil)
}

// getError is a failed "pipestream get", with what it printed.
type getError struct {
	id  string
	err error
	out []byte
}

func (e *getError) Error() string {
	return "get from " + e.id + ": " + e.err.Error() + "\n" + string(e.out)
}
