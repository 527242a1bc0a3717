package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/pipestream/pipestream/internal/leaktest"
)

func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }

// Three files through a 3-peer group, then every peer's store listed and
// read back.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout); err != nil {
		panic(err)
	}
	// Output:
	// put hello.txt: 13 bytes, committed
	// put notes/todo.txt: 45 bytes, committed
	// put big/zeros.bin: 3145728 bytes, committed
	// p1 holds:
	//   hello.txt             13 bytes, sha256 853ff937… matches, "hello, world\n"
	//   notes/todo.txt        45 bytes, sha256 1f59a260… matches, "stream the bytes once\nco"
	//   big/zeros.bin    3145728 bytes, sha256 bbd05cf6… matches, binary
	// p2 holds:
	//   hello.txt             13 bytes, sha256 853ff937… matches, "hello, world\n"
	//   notes/todo.txt        45 bytes, sha256 1f59a260… matches, "stream the bytes once\nco"
	//   big/zeros.bin    3145728 bytes, sha256 bbd05cf6… matches, binary
	// p3 holds:
	//   hello.txt             13 bytes, sha256 853ff937… matches, "hello, world\n"
	//   notes/todo.txt        45 bytes, sha256 1f59a260… matches, "stream the bytes once\nco"
	//   big/zeros.bin    3145728 bytes, sha256 bbd05cf6… matches, binary
}
