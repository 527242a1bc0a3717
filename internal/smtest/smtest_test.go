package smtest_test

import (
	"context"
	"testing"

	"github.com/pipestream/pipestream/internal/smtest"
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
