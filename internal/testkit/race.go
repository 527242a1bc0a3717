//go:build race

package testkit

// Race reports whether the race detector is on. It allocates for its own
// bookkeeping (when a goroutine starts, say), so tests that count
// allocations skip under it; .ci/run runs them without it too.
const Race = true
