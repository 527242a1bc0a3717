package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// The checker itself, on hand-made stores: it accepts a name that holds
// its newest committed entry's bytes or records it missing, and reports
// each way a store can break the invariant.
func TestCrashCheckerCases(t *testing.T) {
	v1, v2, bad := []byte("version one\n"), []byte("version two, longer\n"), []byte("failed put\n")
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	h := new(history)
	h.add(&putRecord{Name: "f", Size: len(v1), SHA256: sha256.Sum256(v1), Client: "aa", Stream: 1, Outcome: outCommitted, Index: 3})
	h.add(&putRecord{Name: "f", Size: len(v2), SHA256: sha256.Sum256(v2), Client: "aa", Stream: 2, Outcome: outCommitted, Index: 5})
	h.add(&putRecord{Name: "g", Size: len(bad), SHA256: sha256.Sum256(bad), Client: "aa", Stream: 3, Outcome: outFailed})
	rec := func(index uint64, stream uint64, name string, data []byte, missing bool) storeRecord {
		r := storeRecord{Index: index, Client: "aa", Stream: stream, Name: name, Length: uint64(len(data)), Missing: missing}
		if !missing {
			r.SHA256 = sum(data)
		}
		return r
	}
	// store writes a FileStore directory with the records and data files.
	store := func(t *testing.T, id string, recs []storeRecord, files map[string][]byte) *peerStore {
		dir := t.TempDir()
		var log []byte
		for _, r := range recs {
			line, _ := json.Marshal(r)
			log = append(append(log, line...), '\n')
		}
		log = append(log, `{"index":99,"na`...) // a torn last line is ignored
		if err := os.WriteFile(filepath.Join(dir, "committed.log"), log, 0o644); err != nil {
			t.Fatal(err)
		}
		for name, b := range files {
			p := filepath.Join(dir, "data", name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		s, err := readPeerStore(id, dir)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	linked := func(t *testing.T, id string) *peerStore {
		return store(t, id, []storeRecord{rec(3, 1, "f", v1, false), rec(5, 2, "f", v2, false)}, map[string][]byte{"f": v2})
	}
	for _, tc := range []struct {
		name  string
		third func(t *testing.T) *peerStore
		want  string // a violation contains it; "" for none
	}{
		{"linked", func(t *testing.T) *peerStore { return linked(t, "p3") }, ""},
		{"missing", func(t *testing.T) *peerStore {
			return store(t, "p3", []storeRecord{rec(3, 1, "f", v1, false), rec(5, 2, "f", v2, true)}, map[string][]byte{"f": v1})
		}, ""},
		{"older version", func(t *testing.T) *peerStore {
			return store(t, "p3", []storeRecord{rec(3, 1, "f", v1, false)}, map[string][]byte{"f": v1})
		}, "p3: f: newest record is index 3"},
		{"no record", func(t *testing.T) *peerStore { return store(t, "p3", nil, nil) }, "p3: f: no record"},
		{"wrong bytes", func(t *testing.T) *peerStore {
			return store(t, "p3", []storeRecord{rec(3, 1, "f", v1, false), rec(5, 2, "f", v2, false)}, map[string][]byte{"f": v1})
		}, "data/f holds"},
		{"failed put visible", func(t *testing.T) *peerStore {
			return store(t, "p3", []storeRecord{rec(3, 1, "f", v1, false), rec(5, 2, "f", v2, false), rec(6, 3, "g", bad, false)},
				map[string][]byte{"f": v2, "g": bad})
		}, "entry of a failed put"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := h.check([]*peerStore{linked(t, "p1"), linked(t, "p2"), tc.third(t)}, nil)
			switch {
			case tc.want == "" && len(v) > 0:
				t.Errorf("violations on a good store:\n%s", strings.Join(v, "\n"))
			case tc.want != "" && !strings.Contains(strings.Join(v, "\n"), tc.want):
				t.Errorf("no violation with %q in:\n%s", tc.want, strings.Join(v, "\n"))
			}
		})
	}
}

// Which errors prove that a put did not commit.
func TestCrashOutcomeOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want outcome
	}{
		{nil, outCommitted},
		{pb.Errorf(pb.ErrorCode_SUCCESSOR_FAILED, "successor p2 lost"), outFailed},
		{fmt.Errorf("wrapped: %w", datastream.ErrOffsetMismatch), outFailed},
		{datastream.ErrUnknownStream, outFailed},
		{pb.Errorf(pb.ErrorCode_TIMEOUT, "commit"), outIndeterminate},
		{fmt.Errorf("%w (leader hint p1)", datastream.ErrNotLeader), outIndeterminate},
		{datastream.ErrCommitFailed, outIndeterminate},
		{datastream.ErrStateMachine, outIndeterminate},
		{datastream.ErrConnectionLost, outIndeterminate},
		{datastream.ErrReplyTimeout, outIndeterminate},
		{context.DeadlineExceeded, outIndeterminate},
	} {
		if got := outcomeOf(tc.err); got != tc.want {
			t.Errorf("outcomeOf(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
