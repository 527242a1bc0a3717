// Package testkit holds the small helpers that the tests of several
// packages share: a logger that stays quiet unless asked, random bytes
// that are the same from run to run, and a file to send them from.
package testkit

import (
	"encoding/binary"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// QuietLogger discards what it is given, unless PIPESTREAM_TEST_LOG is
// set: then it writes everything, debug included, to standard error, for
// reading what a failing test's peers did.
func QuietLogger() *slog.Logger {
	if os.Getenv("PIPESTREAM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// RandomBytes returns n bytes from a generator seeded with seed: fast, and
// the same for the same seed.
func RandomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)}))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TempFile returns a file holding data, open for reading, that the test's
// cleanup closes and removes.
func TempFile(t testing.TB, data []byte) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}
