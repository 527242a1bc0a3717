// Package crashpoint lets a fault test kill a process at a named point of
// the code, so that a crash lands at the exact moment the test is about
// (after a record is written and before its rename, in the middle of a
// snapshot restore) instead of wherever a SIGKILL from outside happens to
// land. A process arms one point through its environment:
//
//	PIPESTREAM_CRASHPOINT=filestore.link.recorded     the first time it is hit
//	PIPESTREAM_CRASHPOINT=raft.restore.linking:3      the third time
//	PIPESTREAM_CRASHPOINT=filestore.link.recorded@a/b the first time for "a/b"
//
// A subject (HitOn's; the file stores name) picks one stream among the
// many that reach the same point, such as the entries a restart replays.
//
// Hit then sends the process SIGKILL: no deferred function runs, no file
// is closed, as in a power cut of the process. Unarmed, Hit costs a
// comparison. Nothing but tests sets the variable.
package crashpoint

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"
)

// Env is the environment variable that arms a crash point.
const Env = "PIPESTREAM_CRASHPOINT"

var (
	armed   string // the point, "" when none
	subject string // the subject it is armed for, "" for any
	nth     int64  // the hit that crashes
	hits    atomic.Int64
)

func init() {
	v := os.Getenv(Env)
	if v == "" {
		return
	}
	nth = 1
	if i := strings.LastIndexByte(v, ':'); i >= 0 {
		if n, err := strconv.ParseInt(v[i+1:], 10, 64); err == nil && n > 0 {
			nth = n
		}
		v = v[:i]
	}
	armed, subject, _ = strings.Cut(v, "@")
}

// Hit kills the process if point is the armed one and this is the hit it
// was armed for.
func Hit(point string) { HitOn(point, "") }

// HitOn is Hit for one subject of the point (the name of the stream at
// hand): a point armed for a subject crashes only on that subject.
func HitOn(point, subj string) {
	if armed == "" || point != armed || (subject != "" && subj != subject) {
		return
	}
	if hits.Add(1) != nth {
		return
	}
	if p, err := os.FindProcess(os.Getpid()); err == nil {
		_ = p.Kill()
	}
	select {} // the signal is on its way
}
