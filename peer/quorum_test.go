package peer_test

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/peer"
)

// TestFollowerDown: with one follower of three stopped, every put succeeds
// (the default write quorum is a majority, and each stream is routed
// around the missing peer); the entries name the two holders, and when the
// follower comes back it repairs every copy it missed, byte for byte.
func TestFollowerDown(t *testing.T) {
	buffertest.Check(t)
	g := startGroup(t, groupOpts{onDisk: true})
	leader := g.leader()
	down := g.other(leader)
	primary := g.members[g.other(leader, down)].ID
	c := g.client()
	g.stop(down)

	const puts = 20
	data := make([][]byte, puts)
	for i := range puts {
		data[i] = randomBytes(uint64(100+i), 64<<10+i*4099)
		// The client's default chain names the whole group; the peers
		// route around the stopped one.
		if _, err := putFile(g, c, primary, fmt.Sprintf("f%02d", i), data[i]); err != nil {
			t.Fatalf("put %d with %s down: %v", i, g.members[down].ID, err)
		}
	}
	g.restart(down, func(cfg *peer.Config) { cfg.StateMachine = nil })
	g.waitReady()
	fs := g.files(down)
	for i := range puts {
		name := fmt.Sprintf("f%02d", i)
		g.eventually(g.members[down].ID+" repairs "+name, func() bool {
			f, err := fs.Open(name)
			if err != nil {
				return false
			}
			defer f.Close()
			got, err := io.ReadAll(f)
			return err == nil && bytes.Equal(got, data[i])
		})
	}
	if n := fs.Missing(); n != 0 {
		t.Errorf("%s still misses %d copies", g.members[down].ID, n)
	}
}
