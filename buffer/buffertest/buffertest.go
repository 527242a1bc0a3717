// Package buffertest fails a test that leaks or double-releases a pooled
// buffer.
package buffertest

import (
	"strings"
	"testing"

	"github.com/pipestream/pipestream/buffer"
)

// Check starts leak accounting for t and, when t ends, fails it if any
// buffer taken during the test is still live or was released twice.
//
// Call it first in the test: cleanups run last-registered first, so servers
// and clients closed by later cleanups have released their buffers by the
// time this one looks. Tests that use Check must not run in parallel with
// other tests that take buffers, since the count is process-wide.
func Check(t testing.TB) {
	t.Helper()
	tr := buffer.StartTracking()
	t.Cleanup(func() {
		r := tr.Stop()
		if len(r.Misuses) > 0 {
			t.Errorf("buffer misuse:\n%s", strings.Join(r.Misuses, "\n"))
		}
		if r.Leaked != 0 {
			t.Errorf("%d buffer(s) leaked; taken at:\n%s", r.Leaked, strings.Join(r.Stacks, "\n"))
		}
	})
}
