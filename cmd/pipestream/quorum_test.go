package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPeerDownPutsSucceed is the write quorum as a user meets it: three
// serve processes, one follower SIGKILLed (p1, the first of the group
// file, when it is not the leader, so put's default primary is the peer
// that is down), then 20 puts with plain "pipestream put": every one
// commits. The follower comes back with its disk and ends up holding all
// 20 byte-equal, read back over the network from it alone.
func TestPeerDownPutsSucceed(t *testing.T) {
	if testing.Short() {
		t.Skip("runs, kills and restarts three processes")
	}
	g := startGroup(t)
	victim := "p1"
	if g.leader == victim {
		victim = g.others(g.leader)[0]
	}
	g.kill(victim)

	const puts = 20
	dir := t.TempDir()
	files := make([][]byte, puts)
	for i := range puts {
		files[i] = randomBytes(uint64(500+i), 100<<10+i*7919)
		src := filepath.Join(dir, fmt.Sprintf("src%02d", i))
		if err := os.WriteFile(src, files[i], 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		out, err := exec.CommandContext(ctx, g.bin, "put", src, "--config", g.config, "--name", fmt.Sprintf("q/%02d", i), "--quiet").CombinedOutput()
		cancel()
		if err != nil || !strings.Contains(string(out), "committed q/") {
			t.Fatalf("put %d with %s down: %v\n%s", i, victim, err, out)
		}
	}

	if err := g.restart(victim); err != nil {
		t.Fatal(err)
	}
	if err := g.waitReady(victim); err != nil {
		t.Fatal(err)
	}
	g.waitHealed(t)
	for i := range puts {
		name := fmt.Sprintf("q/%02d", i)
		dst := filepath.Join(dir, fmt.Sprintf("got%02d", i))
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		out, err := exec.CommandContext(ctx, g.bin, "get", name, "--config", g.config, "--id", victim, "-o", dst).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("get %s from %s: %v\n%s", name, victim, err, out)
		}
		got, err := os.ReadFile(dst)
		if err != nil || !bytes.Equal(got, files[i]) {
			t.Errorf("%s on %s: %d bytes (%v), want the %d put", name, victim, len(got), err, len(files[i]))
		}
	}
}
