package testkit

import (
	"bytes"
	"io"
	"testing"
)

// RandomBytes gives the length asked for, the same bytes for a seed, and
// other bytes for another seed.
func TestRandomBytes(t *testing.T) {
	for _, n := range []int{0, 1, 13, 1000} {
		a := RandomBytes(1, n)
		if len(a) != n {
			t.Fatalf("RandomBytes(1, %d) has %d bytes", n, len(a))
		}
		if !bytes.Equal(a, RandomBytes(1, n)) {
			t.Errorf("two calls of RandomBytes(1, %d) differ", n)
		}
		if n > 0 && bytes.Equal(a, RandomBytes(2, n)) {
			t.Errorf("RandomBytes(1, %d) and RandomBytes(2, %d) are the same", n, n)
		}
	}
}

func TestTempFile(t *testing.T) {
	f := TempFile(t, []byte("region"))
	got, err := io.ReadAll(f)
	if err != nil || string(got) != "region" {
		t.Fatalf("read %q, %v; want region", got, err)
	}
}
