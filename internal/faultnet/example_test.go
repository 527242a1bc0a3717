package faultnet_test

import (
	"fmt"
	"io"
	"net"
	"time"

	"github.com/pipestream/pipestream/internal/faultnet"
)

// A connection through the proxy is closed in the middle of what the
// client writes: the target gets the first five bytes, then its end.
func ExampleProxy_DropAfter() {
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer target.Close()
	got := make(chan []byte)
	go func() {
		c, err := target.Accept()
		if err != nil {
			close(got)
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	}()

	p, err := faultnet.Listen(target.Addr().String())
	if err != nil {
		panic(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		panic(err)
	}
	defer c.Close()
	// The proxy accepts, and dials the target, on a goroutine of its own.
	for p.Open() == 0 {
		time.Sleep(time.Millisecond)
	}
	p.DropAfter(5)
	_, _ = c.Write([]byte("hello, world"))
	fmt.Printf("%s\n", <-got)
	// Output: hello
}
