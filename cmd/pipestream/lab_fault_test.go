package main

import (
	"flag"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/pipestream/pipestream/internal/netlab"
)

var labSeed = flag.Uint64("lab.seed", 0, "seed of TestLabFaults' schedules (0: from the clock; the test logs it)")

// TestLabFaults runs one fault schedule per subtest on a fresh lab of
// three peers and a client, each host at 1 Gbit/s, while the client puts
// back to back. Every schedule ends with the network whole and every peer
// up; then the checker runs (no acknowledged put lost, nothing failed
// visible, no older version served), missing copies must be repaired, and
// every name is read back from every peer over the network. Puts that fail
// while a peer is away (a stream that cannot reach a write quorum, or was
// under way through a peer that went) are counted and logged, not
// asserted: the invariant is what is checked, not availability.
//
//   - leader: the leader is cut off in the middle of a put; the others
//     elect a new one and puts go on; then it comes back.
//   - follower: a follower is cut off in the middle of a put, for two puts.
//   - primary: every put goes through one follower, the client's primary,
//     which is cut off in the middle of a put.
//   - flap: eight times a random host, the client's too, goes down for 0.1
//     to 0.8 s and comes back for as long.
//   - slow: a follower's egress is 200 Mbit/s instead of 1 Gbit/s for
//     six puts.
//   - kill: three times a random peer is SIGKILLed in the middle of a put
//     and restarted up to 1.5 s later.
func TestLabFaults(t *testing.T) {
	needLab(t)
	seed := testSeed(t, *labSeed, "lab.seed")
	bin := buildBinary(t)
	for _, c := range []struct {
		name string
		run  func(t *testing.T, lg *labGroup, h *history, rng *rand.Rand)
	}{
		{"leader", labPartitionLeader},
		{"follower", labPartitionFollower},
		{"primary", labPartitionPrimary},
		{"flap", labFlap},
		{"slow", labSlowPeer},
		{"kill", labKillRestart},
	} {
		t.Run(c.name, func(t *testing.T) {
			lg := startLabGroup(t, bin, 3, netlab.Gbit)
			h := new(history)
			c.run(t, lg, h, rand.New(rand.NewPCG(seed, uint64(len(c.name)))))
			for _, id := range lg.ids {
				if lg.down(id) {
					t.Fatalf("%s is down at the end of the schedule", id)
				}
			}
			lg.finish(h, c.name)
		})
	}
}

// cut and heal fail the test if the lab cannot.
func cut(t *testing.T, h *netlab.Host) {
	t.Helper()
	if err := h.Cut(); err != nil {
		t.Fatal(err)
	}
}

func heal(t *testing.T, h *netlab.Host) {
	t.Helper()
	if err := h.Heal(); err != nil {
		t.Fatal(err)
	}
}

func labPartitionLeader(t *testing.T, lg *labGroup, h *history, rng *rand.Rand) {
	load := lg.startLoad(h, rng.Uint64(), lg.ids, 1)
	defer load.end()
	load.waitMidPut(t)
	old := lg.currentLeader("")
	cut(t, lg.lab.Host(old))
	next := lg.currentLeader(old)
	if next == "" {
		t.Fatalf("no new leader within %v of cutting off %s", testTimeout, old)
	}
	t.Logf("cut off the leader %s; %s leads", old, next)
	load.waitPuts(2, testTimeout) // in the new term, without the old leader
	heal(t, lg.lab.Host(old))
	load.waitPuts(1, testTimeout)
}

func labPartitionFollower(t *testing.T, lg *labGroup, h *history, rng *rand.Rand) {
	load := lg.startLoad(h, rng.Uint64(), lg.ids, 1)
	defer load.end()
	victim := lg.others(lg.currentLeader(""))[rng.IntN(2)]
	cutMidPut(t, lg, load, victim, "the follower")
}

func labPartitionPrimary(t *testing.T, lg *labGroup, h *history, rng *rand.Rand) {
	primary := lg.others(lg.currentLeader(""))[rng.IntN(2)]
	load := lg.startLoad(h, rng.Uint64(), []string{primary}, 1)
	defer load.end()
	cutMidPut(t, lg, load, primary, "the client's primary")
}

// cutMidPut cuts peer id off in the middle of a put, heals it once two
// puts committed without it, and waits for one more with it back. The
// leader's partition does not use it: it checks the election in between.
func cutMidPut(t *testing.T, lg *labGroup, load *labLoad, id, role string) {
	t.Helper()
	load.waitMidPut(t)
	cut(t, lg.lab.Host(id))
	t.Logf("cut off %s %s", role, id)
	load.waitPuts(2, testTimeout)
	heal(t, lg.lab.Host(id))
	load.waitPuts(1, testTimeout)
}

func labFlap(t *testing.T, lg *labGroup, h *history, rng *rand.Rand) {
	load := lg.startLoad(h, rng.Uint64(), lg.ids, 2)
	defer load.end()
	hosts := lg.lab.Hosts()
	for i := range 8 {
		host := hosts[rng.IntN(len(hosts))]
		down := time.Duration(100+rng.IntN(700)) * time.Millisecond
		up := time.Duration(100+rng.IntN(700)) * time.Millisecond
		if i == 0 {
			load.waitMidPut(t)
		}
		cut(t, host)
		time.Sleep(down) // the schedule: how long the link stays down
		heal(t, host)
		t.Logf("flap %d: %s down %v, up %v", i, host.Name, down, up)
		time.Sleep(up)
	}
	load.waitPuts(1, testTimeout)
}

func labSlowPeer(t *testing.T, lg *labGroup, h *history, rng *rand.Rand) {
	slow := lg.lab.Host(lg.others(lg.currentLeader(""))[rng.IntN(2)])
	if err := slow.SetRate(200 * netlab.Mbit); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s sends at %v", slow.Name, slow.Rate())
	load := lg.startLoad(h, rng.Uint64(), lg.ids, 1)
	start := time.Now()
	load.waitPuts(6, 2*testTimeout)
	load.end()
	t.Logf("%d puts in %v with a slow peer", len(h.lines()), time.Since(start).Round(time.Millisecond))
	if err := slow.SetRate(netlab.Gbit); err != nil {
		t.Fatal(err)
	}
}

func labKillRestart(t *testing.T, lg *labGroup, h *history, rng *rand.Rand) {
	load := lg.startLoad(h, rng.Uint64(), lg.ids, 1)
	defer load.end()
	for round := range 3 {
		load.waitMidPut(t)
		victim := lg.ids[rng.IntN(len(lg.ids))]
		delay := time.Duration(rng.IntN(1500)) * time.Millisecond
		lg.kill(victim)
		time.Sleep(delay) // the schedule: how long the peer stays down
		if err := lg.restart(victim); err != nil {
			t.Fatal(err)
		}
		if err := lg.waitReady(victim); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: killed %s, restarted after %v", round, victim, delay)
		load.waitPuts(1, testTimeout)
	}
}
