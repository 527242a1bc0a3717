package codec_test

import (
	"errors"
	"testing"
	"time"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
	"github.com/pipestream/pipestream/codec"
)

// budgetDecoder returns a 4-byte length-prefixed decoder on budget b.
func budgetDecoder(t *testing.T, b *codec.PartialBudget) *codec.FrameDecoder {
	t.Helper()
	d, err := codec.NewFrameDecoder(codec.FrameConfig{LengthFieldLength: 4})
	must(t, err)
	d.SetBudget(b)
	t.Cleanup(d.Reset) // used without a pipeline: see Reset
	return d
}

// TestPartialBudgetRefuses checks that decoders sharing a budget hold no
// more of it than it has, that the one that would go past it fails with
// ErrPartialBudget and gives back what it held, and that the others finish
// their frames and, swept, give back what they hold.
func TestPartialBudgetRefuses(t *testing.T) {
	buffertest.Check(t)
	const size = 1 << 20
	b := codec.NewPartialBudget(2*size + size/2)
	body := make([]byte, size-4)
	whole := frame(4, false, uint64(len(body)), body)
	var (
		decs []*codec.FrameDecoder
		qs   []*buffer.Queue
	)
	for i := range 3 {
		d, q := budgetDecoder(t, b), new(buffer.Queue)
		_, _ = q.Write(whole[:size-1])
		f, err := d.Decode(q)
		if f != nil {
			t.Fatalf("decoder %d returned a frame of %d bytes of %d sent", i, f.Len(), size-1)
		}
		if i < 2 && err != nil {
			t.Fatalf("decoder %d within the budget: %v", i, err)
		}
		if i == 2 && !errors.Is(err, codec.ErrPartialBudget) {
			t.Fatalf("decoder past the budget: err %v, want ErrPartialBudget", err)
		}
		if held := b.Held(); held > b.Max() {
			t.Fatalf("budget holds %d of %d", held, b.Max())
		}
		decs, qs = append(decs, d), append(qs, q)
	}
	if held := b.Held(); held != 2*size {
		t.Fatalf("budget holds %d; want the two frames' %d", held, 2*size)
	}
	for i := range 2 {
		_, _ = qs[i].Write(whole[size-1:])
		f, err := decs[i].Decode(qs[i])
		if err != nil || f == nil || f.Len() != size {
			t.Fatalf("decoder %d finishing its frame: %v, %v", i, f, err)
		}
		f.Release()
		if f, err := decs[i].Decode(qs[i]); f != nil || err != nil {
			t.Fatalf("decoder %d with nothing left: %v, %v", i, f, err)
		}
		if decs[i].Sweep(time.Now(), time.Hour) {
			t.Fatalf("decoder %d with no frame swept as stalled", i)
		}
	}
	if held := b.Held(); held != 0 {
		t.Fatalf("budget holds %d after the frames and a sweep; want 0", held)
	}
}

// TestPartialBudgetCountsWaitingBytes checks that bytes of a frame too
// young to be assembled, left in the transport's buffer, count too.
func TestPartialBudgetCountsWaitingBytes(t *testing.T) {
	buffertest.Check(t)
	b := codec.NewPartialBudget(1000)
	d, q := budgetDecoder(t, b), new(buffer.Queue)
	_, _ = q.Write(frame(4, false, 4000, make([]byte, 600)))
	if f, err := d.Decode(q); f != nil || err != nil {
		t.Fatalf("604 bytes of a small frame: %v, %v", f, err)
	}
	if b.Held() != 604 {
		t.Fatalf("budget holds %d; want the 604 bytes waiting", b.Held())
	}
	_, _ = q.Write(make([]byte, 600))
	if _, err := d.Decode(q); !errors.Is(err, codec.ErrPartialBudget) {
		t.Fatalf("1204 bytes waiting on a budget of 1000: err %v, want ErrPartialBudget", err)
	}
	if b.Held() != 0 {
		t.Fatalf("a failed decoder holds %d of the budget", b.Held())
	}
}

// TestSweepDropsStalledFrame checks that a frame with no read between two
// sweeps stall apart is dropped, its buffer released and its budget given
// back, and the decoder fails with ErrReadStalled; and that a frame that
// gets bytes between sweeps is not.
func TestSweepDropsStalledFrame(t *testing.T) {
	buffertest.Check(t)
	const size = 1 << 20
	b := codec.NewPartialBudget(4 * size)
	d, q := budgetDecoder(t, b), new(buffer.Queue)
	live := buffer.Live()
	whole := frame(4, false, size-4, make([]byte, size-4))
	_, _ = q.Write(whole[:size/2])
	if f, err := d.Decode(q); f != nil || err != nil {
		t.Fatalf("half a frame: %v, %v", f, err)
	}
	if buffer.Live() != live+1 || b.Held() != size {
		t.Fatalf("half a large frame: %+d live buffers, %d held; want its buffer and %d", buffer.Live()-live, b.Held(), size)
	}
	const stall = time.Minute
	t0 := time.Now()
	if d.Sweep(t0, stall) {
		t.Fatal("first sweep found the frame stalled")
	}
	_, _ = q.Write(whole[size/2 : size-1])
	if f, err := d.Decode(q); f != nil || err != nil {
		t.Fatalf("all but a byte: %v, %v", f, err)
	}
	if d.Sweep(t0.Add(2*stall), stall) {
		t.Fatal("a frame that got bytes since the last sweep was found stalled")
	}
	if d.Sweep(t0.Add(2*stall+stall/2), stall) {
		t.Fatal("stalled for less than the timeout, and dropped")
	}
	if !d.Sweep(t0.Add(3*stall), stall) {
		t.Fatal("a frame with no bytes for the timeout was not found stalled")
	}
	if buffer.Live() != live || b.Held() != 0 {
		t.Fatalf("stalled frame dropped: %+d live buffers, %d held; want none", buffer.Live()-live, b.Held())
	}
	_, _ = q.Write(whole[size-1:])
	if f, err := d.Decode(q); f != nil || !errors.Is(err, codec.ErrReadStalled) {
		t.Fatalf("Decode after the stall: %v, %v; want ErrReadStalled", f, err)
	}
}
