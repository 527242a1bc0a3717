// Command echo is a length-prefixed echo server and a client for it, built
// from a pipeline, the length-field codec and a transport.
//
// By default it starts a server, sends the messages given as arguments
// through it and prints the echoes:
//
//	go run ./examples/echo [-addr 127.0.0.1:0] [-transport gnet|netconn] [message ...]
//
// With -serve it only serves, until interrupted; with -dial ADDR it only
// runs the client, against a server elsewhere.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec"
	"github.com/pipestream/pipestream/pipeline"
	"github.com/pipestream/pipestream/transport"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to serve on")
	kindName := flag.String("transport", "gnet", "transport: gnet or netconn")
	serveOnly := flag.Bool("serve", false, "serve until interrupted; run no client")
	dialAddr := flag.String("dial", "", "run only the client, against the server at this address")
	flag.Parse()
	log.SetFlags(0)

	kind, err := transport.ParseKind(*kindName)
	if err != nil {
		log.Fatalf("echo: %v", err)
	}
	msgs := flag.Args()
	if len(msgs) == 0 {
		msgs = []string{"hello", "pipestream"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, kind, *addr, *dialAddr, *serveOnly, msgs); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, kind transport.Kind, addr, dialAddr string, serveOnly bool, msgs []string) error {
	if dialAddr == "" {
		s, err := serve(ctx, kind, addr)
		if err != nil {
			return err
		}
		defer func() { _ = s.Shutdown(context.Background()) }()
		fmt.Fprintf(os.Stderr, "echo: serving on %v over %v\n", s.Addr(), kind)
		if serveOnly {
			<-ctx.Done()
			return nil
		}
		dialAddr = s.Addr().String()
	}
	echoes, err := ping(ctx, kind, dialAddr, msgs)
	for _, e := range echoes {
		fmt.Println(e)
	}
	return err
}

// addFraming puts the 4-byte length-prefix codec in p: a decoder for
// inbound frames and a prepender for outbound ones.
func addFraming(p *pipeline.Pipeline) error {
	dec, err := codec.NewFrameDecoder(codec.FrameConfig{LengthFieldLength: 4, InitialBytesToStrip: 4})
	if err != nil {
		return err
	}
	pre, err := codec.NewLengthFieldPrepender(codec.PrependerConfig{LengthFieldLength: 4})
	if err != nil {
		return err
	}
	return errors.Join(p.AddLast("frame-decoder", dec), p.AddLast("prepender", pre))
}

// echo writes every frame back; the prepender frames it again. It flushes
// once per read, so that the replies to one read leave together.
type echo struct{}

func (echo) ChannelRead(ctx *pipeline.Context, msg any) {
	if err := ctx.Write(msg); err != nil {
		ctx.FireError(err)
	}
}

func (echo) ChannelReadComplete(ctx *pipeline.Context) { _ = ctx.Flush() }

// serve starts an echo server on addr.
func serve(ctx context.Context, kind transport.Kind, addr string) (transport.Server, error) {
	return kind.Listen(ctx, addr, func(ch transport.Channel) {
		if err := addFraming(ch.Pipeline()); err != nil {
			panic(err) // closes this connection
		}
		_ = ch.Pipeline().AddLast("echo", echo{})
	})
}

// ping sends msgs to the echo server at addr and returns the echoes, in
// order.
func ping(ctx context.Context, kind transport.Kind, addr string, msgs []string) ([]string, error) {
	echoes := make(chan string, len(msgs))
	ch, err := kind.Dial(ctx, addr, func(ch transport.Channel) {
		if err := addFraming(ch.Pipeline()); err != nil {
			panic(err)
		}
		_ = ch.Pipeline().AddLast("collect", pipeline.Inbound(func(_ *pipeline.Context, frame *buffer.Buf) {
			echoes <- string(frame.Bytes())
			frame.Release()
		}))
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		_ = ch.Close()
		<-ch.Done()
	}()

	// Writes go through the pipeline, so the prepender frames them.
	for _, m := range msgs {
		if err := ch.Pipeline().Write([]byte(m)); err != nil {
			return nil, err
		}
	}
	if err := ch.Pipeline().Flush(); err != nil {
		return nil, err
	}
	var got []string
	for range msgs {
		select {
		case e := <-echoes:
			got = append(got, e)
		case <-ch.Done():
			return got, errors.New("echo: the server closed the connection")
		case <-ctx.Done():
			return got, ctx.Err()
		}
	}
	return got, nil
}
