package datastream_test

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/datastream"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// OnDone runs each callback once with the future's result, whether it was
// registered before or after the result, on a goroutine of its own.
func TestFutureOnDone(t *testing.T) {
	buffertest.Check(t)
	hold := make(chan struct{})
	f := startFake(t, func(c net.Conn, h *pb.DataStreamPacketHeader) {
		if h.HasOption(pb.DataStreamPacketHeader_CLOSE) {
			<-hold
		}
		success(c, h)
	})
	c := f.client(t)
	ctx := testCtx(t)
	out, err := c.Stream(ctx, []byte("s"))
	if err != nil {
		t.Fatal(err)
	}
	fut := out.Close(ctx)
	type result struct {
		r   *datastream.Reply
		err error
	}
	early := make(chan result, 2) // room for a wrong second call
	fut.OnDone(func(r *datastream.Reply, err error) { early <- result{r, err} })
	select {
	case r := <-early:
		t.Fatalf("callback ran before the reply: %v", r)
	default:
	}
	close(hold)
	want, err := fut.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	timer := time.NewTimer(patience)
	defer timer.Stop()
	select {
	case r := <-early:
		if r.r != want || r.err != nil {
			t.Errorf("callback got %v, %v; want %v", r.r, r.err, want)
		}
	case <-timer.C:
		t.Fatal("callback registered before the reply never ran")
	}

	// Registered on a completed future, a callback that blocks does not
	// hold up OnDone.
	release := make(chan struct{})
	late := make(chan result, 2)
	returned := make(chan struct{})
	go func() {
		fut.OnDone(func(r *datastream.Reply, err error) {
			<-release
			late <- result{r, err}
		})
		close(returned)
	}()
	select {
	case <-returned:
	case <-timer.C:
		t.Fatal("OnDone waited for its callback")
	}
	close(release)
	select {
	case r := <-late:
		if r.r != want || r.err != nil {
			t.Errorf("late callback got %v, %v; want %v", r.r, r.err, want)
		}
	case <-timer.C:
		t.Fatal("callback registered after the reply never ran")
	}

	// A future that failed at once calls back with its error.
	failed := out.WriteAsync(ctx, []byte("late"))
	errc := make(chan error, 2)
	failed.OnDone(func(_ *datastream.Reply, err error) { errc <- err })
	select {
	case err := <-errc:
		if !errors.Is(err, datastream.ErrClosed) {
			t.Errorf("callback of a write after Close got %v, want ErrClosed", err)
		}
	case <-timer.C:
		t.Fatal("callback of a failed future never ran")
	}
	select {
	case r := <-early:
		t.Errorf("callback ran twice: %v", r)
	case r := <-late:
		t.Errorf("late callback ran twice: %v", r)
	case err := <-errc:
		t.Errorf("failed future's callback ran twice: %v", err)
	default:
	}
}
