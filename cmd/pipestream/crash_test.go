package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	crashRounds   = flag.Int("crash.rounds", 0, "rounds of TestCrashSchedule, and kill points per routing of TestSuccessorKilledMidStream (0: a short run, or as many as -crash.duration allows)")
	crashDuration = flag.Duration("crash.duration", 0, "run TestCrashSchedule for this long instead of a number of rounds")
	crashSeed     = flag.Uint64("crash.seed", 0, "seed of TestCrashSchedule and TestSuccessorKilledMidStream (0: from the clock; the test logs it)")
)

// defaultCrashRounds is the schedule's length in an ordinary go test run.
const defaultCrashRounds = 10

// fault is one kill of a schedule.
type fault struct {
	round   int
	victims []string
	point   string // when: before, during, at-close, after-reply (of put #put)
	put     int
	delay   time.Duration // between the kill and the restart
	// wipe: the victim's store (files/) is deleted before its restart, as
	// a replaced disk; its copies come back by repair.
	wipe bool
}

// A schedule of rounds: each starts one or two puts (random sizes up to 8
// MiB, random primaries, names from a small pool so that versions matter)
// and SIGKILLs one, sometimes two, random peers at a random point of a put:
// before it, during it, as CLOSE is sent, or once its reply came; they are
// restarted after a short random delay. Small puts go on back to back
// throughout (writeThroughout), and every put made while its primary and
// a write quorum were up must commit (availability_test.go says which
// puts are held to that). At the end the group is healed and the checker
// runs over every name. -crash.rounds, -crash.duration and -crash.seed
// make longer or reproducible runs; the seed is logged.
func TestCrashSchedule(t *testing.T) {
	if testing.Short() {
		t.Skip("runs and kills three processes")
	}
	seed := testSeed(t, *crashSeed, "crash.seed")
	rounds, until := *crashRounds, time.Time{}
	if *crashDuration > 0 {
		until = time.Now().Add(*crashDuration)
	} else if rounds == 0 {
		rounds = defaultCrashRounds
	}

	// Debug logs say when peers reconnect, which availability needs.
	g := startGroupArgs(t, "", []string{"--log-level", "debug"})
	g.ups = newUpLog()
	h := new(history)
	c := g.newClient()
	w := g.writeThroughout(c, h, seed)
	names := []string{"crash/a", "crash/b", "crash/c"}
	var faults []fault
	kills := 0
	round := 0
	for ; (rounds == 0 || round < rounds) && (until.IsZero() || time.Now().Before(until)); round++ {
		rng := rand.New(rand.NewPCG(seed, uint64(round)))
		nputs := 1 + rng.IntN(2)
		type job struct {
			name, primary string
			data          []byte
			ev            *putEvents
		}
		jobs := make([]job, nputs)
		for i := range jobs {
			size := rng.IntN(8<<20 + 1)
			if rng.IntN(8) == 0 {
				size = 0
			}
			jobs[i] = job{
				name:    names[rng.IntN(len(names))],
				primary: g.ids[rng.IntN(len(g.ids))],
				data:    randomBytes(seed^uint64(round*16+i+1), size),
			}
			jobs[i].ev = newPutEvents(rng.IntN(size + 1))
		}
		var f *fault
		if rng.IntN(8) != 0 {
			f = &fault{round: round, put: rng.IntN(nputs), delay: time.Duration(rng.IntN(1500)) * time.Millisecond}
			// The points around the commit, where acknowledged copies are
			// at stake, weigh most.
			f.point = []string{"before", "during", "during", "at-close", "at-close", "at-close",
				"after-reply", "after-reply", "after-reply"}[rng.IntN(9)]
			candidates := g.ids
			if rng.IntN(2) == 0 {
				// Spare the primary: its followers are the peers that
				// acknowledged and apply later.
				candidates = g.others(jobs[f.put].primary)
			}
			nv := 1
			if rng.IntN(4) == 0 {
				nv = 2
			}
			for _, i := range rng.Perm(len(candidates))[:nv] {
				f.victims = append(f.victims, candidates[i])
			}
			f.wipe = nv == 1 && rng.IntN(5) == 0
		}

		if f != nil && f.point == "before" {
			for _, id := range f.victims {
				g.kill(id)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var wg sync.WaitGroup
		putDone := make([]chan struct{}, nputs)
		recs := make([]*putRecord, nputs)
		for i, j := range jobs {
			putDone[i] = make(chan struct{})
			wg.Go(func() {
				defer close(putDone[i])
				recs[i] = streamPut(ctx, h, c, j.name, j.primary, j.data, j.ev)
			})
		}
		if f != nil {
			if f.point != "before" {
				var at <-chan struct{}
				switch ev := jobs[f.put].ev; f.point {
				case "during":
					at = ev.atOffset
				case "at-close":
					at = ev.closeSent
				case "after-reply":
					at = ev.closeReply
				}
				select {
				case <-at:
				case <-putDone[f.put]: // it ended first: kill now
				}
				for _, id := range f.victims {
					g.kill(id)
				}
			}
			kills += len(f.victims)
			faults = append(faults, *f)
			// The delay is the schedule's: how long the peers stay down.
			time.Sleep(f.delay)
			for _, id := range f.victims {
				if f.wipe {
					if err := os.RemoveAll(g.files(id)); err != nil {
						t.Fatal(err)
					}
				}
				if err := g.restart(id); err != nil {
					cancel()
					wg.Wait()
					t.Fatal(err)
				}
			}
		}
		wg.Wait()
		cancel()
		if f != nil {
			for _, id := range f.victims {
				if err := g.waitReady(id); err != nil {
					t.Fatal(err)
				}
			}
			// The next round starts on a whole group: every peer
			// reconnected and caught up.
			g.barrier(context.Background(), h, c)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "round %d:", round)
		if f != nil {
			fmt.Fprintf(&b, " kill %v %s put %d, %srestart after %v;", f.victims, f.point, f.put, map[bool]string{true: "wipe its store, "}[f.wipe], f.delay)
		}
		for i, r := range recs {
			fmt.Fprintf(&b, "\n\t#%d %v", i, r)
		}
		t.Log(b.String())
	}
	w.halt()
	// Heal: every peer is up (each round restarted its victims); a
	// barrier makes every peer apply the whole log.
	for _, id := range g.ids {
		if g.down(id) {
			t.Fatalf("%s is down at the end", id)
		}
	}
	g.barrier(context.Background(), h, c)
	stores, v, missingAtEnd, healed := g.checkHealed(h, fmt.Sprintf("seed %d", seed))
	n := h.counts()
	a := g.ups.availability(h, g.ids, 2)
	lost, stale := lostAndStale(h, stores)
	t.Logf("crash schedule: seed %d, %d rounds, puts %d committed / %d failed / %d indeterminate, %d kills, %d violations; %d copies missing at the end, healed in %v",
		seed, round, n[outCommitted], n[outFailed], n[outIndeterminate], kills, len(v), missingAtEnd, healed.Round(time.Millisecond))
	t.Logf("crash schedule: %v; %d lost, %d stale", a, lost, stale)
	if len(a.unavailable) > 0 {
		var ul []string
		for _, p := range a.unavailable {
			ul = append(ul, fmt.Sprintf("%v (%s to %s)%s", p, p.Start.Format("15:04:05.000"), p.End.Format("15:04:05.000"), g.logsOf(p)))
		}
		t.Errorf("seed %d: %d puts failed with their primary and a quorum up:\n  %s\ndown:%s", seed, len(ul), strings.Join(ul, "\n  "), g.ups.spans())
	}
	if lost+stale > 0 && len(v) == 0 {
		t.Errorf("seed %d: %d copies lost and %d stale, yet the checker found no violation", seed, lost, stale)
	}
	if len(v) > 0 {
		var fl []string
		for _, f := range faults {
			fl = append(fl, fmt.Sprintf("round %d: kill %v %s put %d, wipe %v, restart after %v", f.round, f.victims, f.point, f.put, f.wipe, f.delay))
		}
		t.Errorf("seed %d: %d violations:\n  %s\nputs:\n  %s\nfaults:\n  %s\nstores:\n%s", seed, len(v),
			strings.Join(v, "\n  "), strings.Join(h.lines(), "\n  "), strings.Join(fl, "\n  "), describe(stores))
	}
}

// checkHealed runs the checker over every name once a barrier has made
// every peer apply the whole log, then waits, up to healTimeout, until the
// group has repaired every copy a peer reported missing, failing the test
// (its messages begun with label) if some are left. It returns the stores
// as last read, the violations (of the first check, or else of the check
// after the repairs), how many copies were missing at first and how long
// the repairs took.
func (g *group) checkHealed(h *history, label string) (stores []*peerStore, v []string, missingAtEnd int, healed time.Duration) {
	g.t.Helper()
	stores = g.stores()
	v = h.check(stores, nil)
	healStart := time.Now()
	left := missingCopies(stores)
	missingAtEnd = len(left)
	for len(left) > 0 && time.Since(healStart) < healTimeout {
		time.Sleep(100 * time.Millisecond)
		stores = g.stores()
		left = missingCopies(stores)
	}
	healed = time.Since(healStart)
	if len(left) > 0 {
		g.t.Errorf("%s: copies still missing %v after the faults ended: %s", label, healTimeout, strings.Join(left, ", "))
	}
	if len(v) == 0 {
		v = h.check(stores, nil)
	}
	return stores, v, missingAtEnd, healed
}
