package smtest_test

import (
	"context"
	"testing"
	"time"

	"github.com/pipestream/pipestream/internal/smtest"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// counting counts the writes that go through it.
type counting struct {
	smtest.Channel
	writes *int
}

func (c counting) Write(p []byte) (int, error) {
	*c.writes++
	return c.Channel.Write(p)
}

// A wrapped channel sees the stream's writes, and the Memory links the data
// all the same.
func TestWrapper(t *testing.T) {
	ctx := context.Background()
	writes := 0
	w := &smtest.Wrapper{
		Memory: statemachine.NewMemory(),
		Wrap: func(ch statemachine.DataChannel) statemachine.DataChannel {
			return counting{smtest.Channel{DataChannel: ch}, &writes}
		},
	}
	k := statemachine.StreamKey{ClientID: "c", StreamID: 1}
	ch, err := w.OpenStream(ctx, k, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"ab", "cd"} {
		if _, err := ch.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Link(ctx, statemachine.Entry{Index: 1, Term: 1, Key: k, Length: 4}, ch); err != nil {
		t.Fatal(err)
	}
	if writes != 2 {
		t.Errorf("%d writes went through the wrapper, want 2", writes)
	}
	if data, ok := w.Data(k); !ok || string(data) != "abcd" {
		t.Errorf("Data = %q, %v; want abcd", data, ok)
	}
}

// A held write finishes only once the gate opens, and the wrapped channel
// still links: Memory gets its own channel back.
func TestGateHoldsWritesAndLinks(t *testing.T) {
	gate := smtest.NewGate(1)
	mem := statemachine.NewMemory()
	sm := gate.Hold(mem)
	ctx := context.Background()
	key := statemachine.StreamKey{ClientID: "c", StreamID: 1}
	req := &pb.RaftClientRequest{}
	ch, err := sm.OpenStream(ctx, key, req)
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := ch.Write([]byte("abc"))
		wrote <- err
	}()
	select {
	case <-gate.Entered():
	case <-time.After(10 * time.Second):
		t.Fatal("the write never reached the gate")
	}
	select {
	case err := <-wrote:
		t.Fatalf("the write passed a shut gate: %v", err)
	default:
	}
	gate.Open()
	gate.Open() // a second Open is harmless
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sm.Link(ctx, statemachine.Entry{Index: 1, Term: 1, Key: key, Request: req, Length: 3}, ch); err != nil {
		t.Fatal(err)
	}
	if n := len(mem.Committed()); n != 1 {
		t.Fatalf("%d streams committed, want 1", n)
	}
}
