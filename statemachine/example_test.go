package statemachine_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// A stream written by hand, the way handler.Streams drives a state machine:
// open on the header, write the data, close, then link once the entry
// commits.
func ExampleFileStore() {
	dir, err := os.MkdirTemp("", "filestore")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	store, err := statemachine.NewFileStore(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()

	ctx := context.Background()
	key := statemachine.StreamKey{ClientID: "client-1", StreamID: 1}
	req := &pb.RaftClientRequest{
		ClientId: []byte(key.ClientID), CallId: key.StreamID,
		Type: pb.RaftClientRequest_STREAM, Message: []byte("reports/2026.txt"),
	}
	ch, err := store.OpenStream(ctx, key, req)
	if err != nil {
		log.Fatal(err)
	}
	n, _ := io.WriteString(ch, "hello, ")
	m, _ := io.WriteString(ch, "replicated world\n")
	if err := ch.Close(); err != nil {
		log.Fatal(err)
	}
	entry := statemachine.Entry{Index: 1, Term: 1, Key: key, Request: req, Length: uint64(n + m)}
	if err := store.Link(ctx, entry, ch); err != nil {
		log.Fatal(err)
	}

	for _, f := range store.List() {
		fmt.Printf("%s: %d bytes, index %d, sha256 %x...\n", f.Name, f.Length, f.Index, f.SHA256[:4])
	}
	r, err := store.Open("reports/2026.txt")
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	io.Copy(os.Stdout, r)
	// Output:
	// reports/2026.txt: 24 bytes, index 1, sha256 cf1ad60d...
	// hello, replicated world
}
