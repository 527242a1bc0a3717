// Command filestore uses statemachine.FileStore as a library, as Apache
// Ratis ships a FileStore example on its streaming API: three peers in this
// process, each storing streams as files under its own directory, take a
// few files from a datastream client; then every peer's store is listed
// and read back.
//
//	go run ./examples/filestore
//
// Each peer is a peer.Peer with a DataDir, which gives it a FileStore in
// DataDir/files (and its Raft log in DataDir/raft). The header of each
// stream names the file; the stream's bytes go to every peer's FileStore,
// forwarded along the chain p1 -> p2 -> p3; one Raft entry commits it, and
// every peer then renames its copy to the final name and records its
// SHA-256 in committed.log.
package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/statemachine"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// files are what the example stores: name, then contents.
var files = []struct{ name, data string }{
	{"hello.txt", "hello, world\n"},
	{"notes/todo.txt", "stream the bytes once\ncommit one small entry\n"},
	{"big/zeros.bin", strings.Repeat("\x00", 3<<20)},
}

func run(ctx context.Context, w io.Writer) (err error) {
	dir, err := os.MkdirTemp("", "filestore-example-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	peers, err := startGroup(ctx, dir)
	defer func() {
		for _, p := range peers {
			err = errors.Join(err, p.Shutdown(context.Background()))
		}
	}()
	if err != nil {
		return err
	}

	// The client takes the members as the peers report them; it dials
	// their DataStream addresses.
	var members []peer.Member
	for _, p := range peers {
		members = append(members, p.Addrs())
	}
	c, err := datastream.NewClient(members, datastream.WithLogger(quiet))
	if err != nil {
		return err
	}
	defer c.Close()

	var last uint64
	for _, f := range files {
		// The header's message is the file's name in every peer's store.
		out, err := c.Stream(ctx, []byte(f.name))
		if err != nil {
			return err
		}
		if _, err := io.Copy(out.Writer(ctx), strings.NewReader(f.data)); err != nil {
			return err
		}
		reply, err := out.Close(ctx).Wait(ctx)
		if err != nil {
			return fmt.Errorf("put %s: %w", f.name, err)
		}
		last = reply.RaftClientReply.GetLogIndex()
		fmt.Fprintf(w, "put %s: %d bytes, committed\n", f.name, reply.BytesWritten())
	}

	for _, p := range peers {
		store := p.StateMachine().(*statemachine.FileStore)
		// The primary (p1) answered once it had applied the last entry;
		// the other peers apply it a moment later.
		if err := waitApplied(ctx, p, last); err != nil {
			return err
		}
		fmt.Fprintf(w, "%s holds:\n", p.ID())
		for _, sf := range store.List() {
			data, err := readFile(store, sf.Name)
			if err != nil {
				return err
			}
			check := "matches"
			if sha256.Sum256(data) != sf.SHA256 {
				check = "DIFFERS"
			}
			fmt.Fprintf(w, "  %-15s %8d bytes, sha256 %x… %s, %s\n",
				sf.Name, len(data), sf.SHA256[:4], check, preview(data))
		}
	}
	return nil
}

// quiet discards the peers' and the client's logs.
var quiet = slog.New(slog.DiscardHandler)

// startGroup starts three peers with their data under dir. Every port is
// picked by the system: New binds them, Start tells each peer where the
// others are. It returns the peers started, even on failure, for the
// caller to shut down.
func startGroup(ctx context.Context, dir string) ([]*peer.Peer, error) {
	ids := []peer.Member{{ID: "p1"}, {ID: "p2"}, {ID: "p3"}}
	var peers []*peer.Peer
	var members []peer.Member
	for _, m := range ids {
		p, err := peer.New(ctx, peer.Config{
			ID:      m.ID,
			Peers:   ids,
			DataDir: filepath.Join(dir, m.ID), // a FileStore in DataDir/files
			Logger:  quiet,
		})
		if err != nil {
			return peers, err
		}
		peers = append(peers, p)
		members = append(members, p.Addrs())
	}
	for _, p := range peers {
		if err := p.Start(ctx, members); err != nil {
			return peers, err
		}
	}
	for _, p := range peers {
		if err := p.WaitReady(ctx); err != nil {
			return peers, err
		}
	}
	return peers, nil
}

// waitApplied waits until p's Raft node has applied the entry at index.
func waitApplied(ctx context.Context, p *peer.Peer, index uint64) error {
	for p.Node().Stats().LastIndex < index {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s has not applied entry %d: %w", p.ID(), index, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// readFile reads a committed file back from a store.
func readFile(store *statemachine.FileStore, name string) ([]byte, error) {
	f, err := store.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// preview shows the start of a text file.
func preview(data []byte) string {
	s := string(data[:min(len(data), 24)])
	if strings.ContainsFunc(s, func(r rune) bool { return r < ' ' && r != '\n' }) {
		return "binary"
	}
	return fmt.Sprintf("%q", s)
}
