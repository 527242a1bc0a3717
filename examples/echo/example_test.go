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

// A server on a free port of 127.0.0.1 echoes what a client sends.
func Example() {
	ctx := context.Background()
	s, err := serve(ctx, transport.Gnet, "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer func() { _ = s.Shutdown(ctx) }()

	echoes, err := ping(ctx, transport.Gnet, s.Addr().String(), []string{"hello", "length-prefixed", "world"})
	if err != nil {
		fmt.Println(err)
	}
	for _, e := range echoes {
		fmt.Println(e)
	}
	// Output:
	// hello
	// length-prefixed
	// world
}

// The same over the net.Conn transport.
func Example_netConn() {
	ctx := context.Background()
	s, err := serve(ctx, transport.NetConn, "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer func() { _ = s.Shutdown(ctx) }()

	echoes, err := ping(ctx, transport.NetConn, s.Addr().String(), []string{"over", "net.Conn"})
	if err != nil {
		fmt.Println(err)
	}
	for _, e := range echoes {
		fmt.Println(e)
	}
	// Output:
	// over
	// net.Conn
}
