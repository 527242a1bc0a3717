package raft_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/pipestream/pipestream/raft"
)

// BenchmarkRaftLogThroughput is the baseline streaming is measured
// against: the same bytes written through hashicorp/raft as 1 MiB log
// entries on a group of three, each applied on every peer. The group
// snapshots and truncates its log as it goes, so memory stays bounded.
func BenchmarkRaftLogThroughput(b *testing.B) {
	const entrySize = 1 << 20
	for _, store := range []struct {
		name   string
		onDisk bool
	}{{"mem", false}, {"boltdb", true}} {
		b.Run(fmt.Sprintf("store=%s/entry=1MiB", store.name), func(b *testing.B) {
			c := newCluster(b, 3, store.onDisk, func(cfg *raft.Config) {
				// Steady timeouts: a busy machine must not trigger elections.
				cfg.HeartbeatTimeout = raft.DefaultHeartbeatTimeout
				cfg.ElectionTimeout = raft.DefaultElectionTimeout
				cfg.LeaderLeaseTimeout = raft.DefaultLeaderLeaseTimeout
				cfg.DataSink = nil // count and discard
				cfg.SnapshotInterval = 50 * time.Millisecond
				cfg.SnapshotThreshold = 16
				cfg.TrailingLogs = 16
			})
			leader := c.nodes[c.leader()]
			payload := make([]byte, entrySize)
			for i := range payload {
				payload[i] = byte(i)
			}
			b.SetBytes(entrySize)
			b.ReportAllocs()
			b.SetParallelism(4) // several entries in flight, as streams would be
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := leader.ApplyData(c.ctx, payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
		})
	}
}
