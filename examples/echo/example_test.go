package main

import (
	"context"
	"fmt"
	"testing"

	"go.uber.org/goleak"

	"github.com/pipestream/pipestream/transport"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// gnet's goroutine pool (ants) starts two goroutines when the
		// package is loaded and keeps them for the life of the process.
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
	)
}

// A server on a free port of 127.0.0.1 echoes what a client sends: what
// the command does without -serve or -dial.
func Example() {
	err := run(context.Background(), transport.Gnet, "127.0.0.1:0", "", false,
		[]string{"hello", "length-prefixed", "world"})
	if err != nil {
		fmt.Println(err)
	}
	// Output:
	// hello
	// length-prefixed
	// world
}

// The same over the net.Conn transport.
func Example_netConn() {
	err := run(context.Background(), transport.NetConn, "127.0.0.1:0", "", false,
		[]string{"over", "net.Conn"})
	if err != nil {
		fmt.Println(err)
	}
	// Output:
	// over
	// net.Conn
}
