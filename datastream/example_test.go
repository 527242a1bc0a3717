package datastream_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/group"
	"github.com/pipestream/pipestream/server"
	"github.com/pipestream/pipestream/statemachine"
)

// startPeers starts a group of three standalone peers on loopback and
// returns their addresses and a function that stops them.
func startPeers() ([]group.Member, func()) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	members := []group.Member{{ID: "s1"}, {ID: "s2"}, {ID: "s3"}}
	var servers []*server.Server
	var peers []group.Member
	for _, m := range members {
		s, err := server.Listen(ctx, server.Config{
			ID: m.ID, Peers: members, StateMachine: statemachine.NewMemory(), Logger: quiet,
		})
		if err != nil {
			log.Fatal(err)
		}
		servers = append(servers, s)
		peers = append(peers, group.Member{ID: m.ID, StreamAddr: s.Addr().String()})
	}
	for _, s := range servers {
		for _, p := range peers {
			s.SetPeerAddr(p.ID, p.StreamAddr)
		}
	}
	for _, s := range servers {
		if err := s.WaitPeers(ctx); err != nil {
			log.Fatal(err)
		}
	}
	return peers, func() {
		for _, s := range servers {
			_ = s.Shutdown(context.Background())
		}
	}
}

// Stream a byte slice through three peers and commit it.
func Example() {
	peers, stop := startPeers()
	defer stop()
	c, err := datastream.NewClient(peers)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	out, err := c.Stream(ctx, []byte("greeting.txt"))
	if err != nil {
		log.Fatal(err)
	}
	out.WriteAsync(ctx, []byte("hello, "))
	out.WriteAsync(ctx, []byte("world"))
	reply, err := out.Close(ctx).Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("bytes written:", reply.BytesWritten())
	fmt.Println("committed:", reply.RaftClientReply.GetSuccess())
	// Output:
	// bytes written: 12
	// committed: true
}

// Stream a region of a file. On the net.Conn transport the kernel sends it
// with sendfile(2); on gnet each packet is read into a pooled buffer.
func ExampleOutput_WriteFile() {
	peers, stop := startPeers()
	defer stop()
	c, err := datastream.NewClient(peers, datastream.WithPacketSize(4<<10))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	f, err := os.CreateTemp("", "datastream-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.WriteString(strings.Repeat("0123456789", 1000)); err != nil {
		log.Fatal(err)
	}

	out, err := c.Stream(ctx, []byte("digits"))
	if err != nil {
		log.Fatal(err)
	}
	// 9,000 bytes from offset 500, in three packets, the last one closing
	// the stream.
	reply, err := out.WriteFile(ctx, f, 500, 9000, datastream.Close).Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("bytes written:", reply.BytesWritten())
	fmt.Println("committed:", reply.RaftClientReply.GetSuccess())
	// Output:
	// bytes written: 9000
	// committed: true
}

// Copy from any io.Reader into the stream's io.WriteCloser view.
func ExampleOutput_Writer() {
	peers, stop := startPeers()
	defer stop()
	c, err := datastream.NewClient(peers)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	out, err := c.Stream(ctx, []byte("copied"))
	if err != nil {
		log.Fatal(err)
	}
	w := out.Writer(ctx)
	n, err := io.Copy(w, strings.NewReader(strings.Repeat("pipestream ", 100)))
	if err != nil {
		log.Fatal(err)
	}
	if err := w.Close(); err != nil { // waits for the commit
		log.Fatal(err)
	}
	rcr, err := out.RaftClientReplyFuture().Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("copied:", n)
	fmt.Println("committed:", rcr.GetSuccess())
	// Output:
	// copied: 1100
	// committed: true
}
