package buffer_test

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
)

// chunkReader serves data in reads of at most the next size in sizes, as a
// socket would, and records how much each Read asked for.
type chunkReader struct {
	data  []byte
	sizes []int
	asked []int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	r.asked = append(r.asked, len(p))
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	limit := len(p)
	if len(r.sizes) > 0 {
		limit, r.sizes = min(limit, r.sizes[0]), r.sizes[1:]
	}
	n := copy(p[:limit], r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestQueueReadOnce(t *testing.T) {
	var q buffer.Queue
	r := &chunkReader{data: []byte("0123456789"), sizes: []int{3, 100}}
	for _, want := range []string{"012", "0123456789"} {
		if _, err := q.ReadOnce(r, 4); err != nil {
			t.Fatal(err)
		}
		if got, _ := q.Peek(q.Buffered()); string(got) != want {
			t.Fatalf("buffered %q, want %q", got, want)
		}
	}
	if _, err := q.Discard(4); err != nil {
		t.Fatal(err)
	}
	if n, err := q.ReadOnce(r, 4); n != 0 || err != io.EOF {
		t.Fatalf("ReadOnce at the end = %d, %v", n, err)
	}
	if got, _ := q.Peek(q.Buffered()); string(got) != "456789" {
		t.Fatalf("buffered %q after Discard(4)", got)
	}
}

// TestQueueDirect reads a stream with a 10-byte target set in the middle of
// a 14-byte buffer.
func TestQueueDirect(t *testing.T) {
	tests := []struct {
		name       string
		buffered   string // written to the queue before the target is set
		reads      []int  // the most each ReadOnce gets
		wantBuf    string // the target's buffer after the reads
		wantQueue  string
		wantLanded int
	}{
		{"an empty queue reads into the target", "", []int{6}, "..012345......", "", 6},
		{"one read may take the whole target", "", []int{100}, "..0123456789..", "", 10},
		{"reads fill the target and then the queue", "", []int{6, 8, 3}, "..0123456789..", "abc", 10},
		{"buffered bytes keep reads in the queue", "xy", []int{5}, "..............", "xy01234", 0},
		{"no read, nothing landed", "", nil, "..............", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buffertest.Check(t)
			b := buffer.Copy([]byte(".............."))
			defer b.Release()
			var q buffer.Queue
			_, _ = q.Write([]byte(tt.buffered))
			q.ReadInto(b.Slice(2, 12))
			r := &chunkReader{data: []byte("0123456789abcdefghij"), sizes: tt.reads}
			for range tt.reads {
				if _, err := q.ReadOnce(r, 4); err != nil {
					t.Fatal(err)
				}
			}
			if got := q.Withdraw(); got != tt.wantLanded {
				t.Errorf("Withdraw = %d, want %d", got, tt.wantLanded)
			}
			if got := string(b.Bytes()); got != tt.wantBuf {
				t.Errorf("target's buffer %q, want %q", got, tt.wantBuf)
			}
			if got, _ := q.Peek(q.Buffered()); string(got) != tt.wantQueue {
				t.Errorf("queue holds %q, want %q", got, tt.wantQueue)
			}
			if b.Refs() != 1 {
				t.Errorf("the queue still holds %d references to the buffer", b.Refs()-1)
			}
		})
	}
}

// TestQueueReadAsksForTheTarget checks that a direct read asks for all of
// the target's free part, not the queue's read size.
func TestQueueReadAsksForTheTarget(t *testing.T) {
	buffertest.Check(t)
	b := buffer.Get(1 << 20)
	defer b.Release()
	var q buffer.Queue
	q.ReadInto(b.Slice(100, b.Len()))
	r := &chunkReader{data: make([]byte, 1<<20), sizes: []int{1000, 1 << 20}}
	for range 2 {
		_, _ = q.ReadOnce(r, 64<<10)
	}
	if want := []int{1<<20 - 100, 1<<20 - 1100}; !slices.Equal(r.asked, want) {
		t.Errorf("reads asked for %v bytes, want %v", r.asked, want)
	}
	if n := q.Withdraw(); n != 1<<20-100 {
		t.Errorf("Withdraw = %d, want the whole target", n)
	}
}

func TestQueueReadIntoReplaces(t *testing.T) {
	buffertest.Check(t)
	var q buffer.Queue
	if n := q.Withdraw(); n != 0 {
		t.Fatalf("Withdraw without a target = %d", n)
	}
	first, second := buffer.Get(8), buffer.Get(8)
	defer first.Release()
	defer second.Release()
	q.ReadInto(first.Slice(0, 8))
	_, _ = q.ReadOnce(strings.NewReader("abc"), 4)
	q.ReadInto(second.Slice(0, 8))
	if first.Refs() != 1 {
		t.Errorf("a replaced target still holds a reference")
	}
	_, _ = q.ReadOnce(strings.NewReader("de"), 4)
	if n := q.Withdraw(); n != 2 || string(second.Bytes()[:2]) != "de" {
		t.Errorf("Withdraw = %d, target %q; want 2, \"de\"", n, second.Bytes()[:2])
	}
	if n := q.Withdraw(); n != 0 || second.Refs() != 1 {
		t.Errorf("a second Withdraw = %d, refs %d; want 0, 1", n, second.Refs())
	}
}

// gateReader blocks its first Read until proceed is closed, having closed
// started, so that a test can act while a read is in progress.
type gateReader struct {
	started, proceed chan struct{}
}

func (r *gateReader) Read(p []byte) (int, error) {
	close(r.started)
	<-r.proceed
	return copy(p, "landed late"), nil
}

// TestQueueWithdrawDuringRead withdraws the target and releases its
// buffer from another goroutine while a read into it waits: the read keeps
// the memory alive until it ends, then lets it go, and its bytes are lost.
func TestQueueWithdrawDuringRead(t *testing.T) {
	buffertest.Check(t)
	b := buffer.Get(64)
	var q buffer.Queue
	q.ReadInto(b.Slice(0, 64))
	r := &gateReader{started: make(chan struct{}), proceed: make(chan struct{})}
	type result struct {
		n   int
		err error
	}
	done := make(chan result)
	go func() {
		n, err := q.ReadOnce(r, 16)
		done <- result{n, err}
	}()
	<-r.started
	if n := q.Withdraw(); n != 0 {
		t.Errorf("Withdraw during the first read = %d", n)
	}
	b.Release()
	if refs := b.Refs(); refs != 1 {
		t.Errorf("while the read waits the buffer has %d references, want the read's one", refs)
	}
	close(r.proceed)
	if res := <-done; res.n != len("landed late") || res.err != nil {
		t.Fatalf("ReadOnce = %d, %v", res.n, res.err)
	}
	if b.Refs() != 0 || q.Buffered() != 0 || q.Withdraw() != 0 {
		t.Fatalf("after the read: refs %d, buffered %d", b.Refs(), q.Buffered())
	}
	// Without a target the next read is buffered.
	if n, _ := q.ReadOnce(strings.NewReader("next"), 16); n != 4 || q.Buffered() != 4 {
		t.Fatalf("the next read was not buffered: %d read, %d buffered", n, q.Buffered())
	}
}

// A decoder that has the first bytes of a frame has the rest read straight
// into the frame's buffer.
func ExampleQueue_ReadInto() {
	frame := buffer.Get(11)
	defer frame.Release()
	copy(frame.Bytes(), "hello") // what has arrived

	var in buffer.Queue
	in.ReadInto(frame.Slice(5, frame.Len())) // the missing tail
	n, _ := in.ReadOnce(strings.NewReader(" world"), 4096)
	fmt.Println(n, "read,", in.Buffered(), "buffered,", in.Withdraw(), "landed")
	fmt.Println(string(frame.Bytes()))
	// Output:
	// 6 read, 0 buffered, 6 landed
	// hello world
}
