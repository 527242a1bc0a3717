package raft

import (
	"testing"

	hraft "github.com/hashicorp/raft"
)

// The defaults this package names for hashicorp/raft's settings are
// hashicorp's: an upgrade that changes one shows up here, not as a quiet
// change of behaviour.
func TestDefaultsAreHashicorps(t *testing.T) {
	h := hraft.DefaultConfig()
	for _, c := range []struct {
		name      string
		ours, its any
	}{
		{"SnapshotInterval", DefaultSnapshotInterval, h.SnapshotInterval},
		{"SnapshotThreshold", uint64(DefaultSnapshotThreshold), h.SnapshotThreshold},
		{"TrailingLogs", uint64(DefaultTrailingLogs), h.TrailingLogs},
	} {
		if c.ours != c.its {
			t.Errorf("Default%s = %v, hashicorp/raft's is %v", c.name, c.ours, c.its)
		}
	}
	c, err := Config{ID: "a", RaftAddr: "127.0.0.1:1", CommitAddr: "127.0.0.1:2"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.SnapshotInterval != DefaultSnapshotInterval || c.SnapshotThreshold != DefaultSnapshotThreshold || c.TrailingLogs != DefaultTrailingLogs {
		t.Errorf("withDefaults left snapshot settings %v, %d, %d", c.SnapshotInterval, c.SnapshotThreshold, c.TrailingLogs)
	}
}
