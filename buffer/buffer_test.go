package buffer_test

import (
	"bytes"
	"errors"
	"strconv"
	"sync"
	"testing"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/buffer/buffertest"
)

func TestGetSizes(t *testing.T) {
	buffertest.Check(t)
	for _, n := range []int{0, 1, 255, 256, 257, 4096, 4097, 1 << 20, buffer.MaxPooled, buffer.MaxPooled + 1} {
		b := buffer.Get(n)
		if b.Len() != n || len(b.Bytes()) != n {
			t.Errorf("Get(%d).Len() = %d", n, b.Len())
		}
		if b.Cap() < n {
			t.Errorf("Get(%d).Cap() = %d", n, b.Cap())
		}
		b.Release()
	}
}

func TestWindow(t *testing.T) {
	buffertest.Check(t)
	b := buffer.Copy([]byte("header:body!"))
	defer b.Release()
	b.Skip(7)
	if got := string(b.Bytes()); got != "body!" {
		t.Fatalf("after Skip: %q", got)
	}
	b.Truncate(4)
	if got := string(b.Bytes()); got != "body" {
		t.Fatalf("after Truncate: %q", got)
	}
	b.SetLen(5)
	if got := string(b.Bytes()); got != "body!" {
		t.Fatalf("after SetLen: %q", got)
	}
	for name, f := range map[string]func(){
		"Skip":     func() { b.Skip(6) },
		"Truncate": func() { b.Truncate(-1) },
		"SetLen":   func() { b.SetLen(b.Cap() + 1) },
	} {
		if !panics(f) {
			t.Errorf("%s out of range did not panic", name)
		}
	}
}

func TestRetainRelease(t *testing.T) {
	buffertest.Check(t)
	b := buffer.Copy(bytes.Repeat([]byte{7}, 5000))
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		b.Retain()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if b.Bytes()[4999] != 7 {
				t.Error("shared bytes changed")
			}
			b.Release()
		}()
	}
	wg.Wait()
	if b.Refs() != 1 {
		t.Fatalf("Refs = %d, want 1", b.Refs())
	}
	before := buffer.Live()
	b.Release()
	if buffer.Live() != before-1 {
		t.Fatalf("Live did not drop on the last release")
	}
}

func TestDoubleReleasePanics(t *testing.T) {
	tr := buffer.StartTracking()
	b := buffer.Get(10)
	b.Release()
	var me *buffer.MisuseError
	err := recoverErr(b.Release)
	if !errors.As(err, &me) {
		t.Fatalf("second Release: got %v, want a *MisuseError", err)
	}
	if me.Taken == "" {
		t.Error("MisuseError does not say where the buffer was taken")
	}
	if err := recoverErr(func() { b.Retain() }); !errors.As(err, &me) {
		t.Fatalf("Retain after release: got %v, want a *MisuseError", err)
	}
	r := tr.Stop()
	if len(r.Misuses) != 2 || r.Leaked != 0 {
		t.Fatalf("report = %+v, want 2 misuses and no leak", r)
	}
}

func TestLeakIsReported(t *testing.T) {
	tr := buffer.StartTracking()
	b := buffer.Get(100)
	r := tr.Check()
	if r.Leaked != 1 || len(r.Stacks) != 1 {
		t.Fatalf("report = %+v, want one leak with its stack", r)
	}
	b.Release()
	if r := tr.Stop(); r.Leaked != 0 || len(r.Misuses) != 0 {
		t.Fatalf("report after release = %+v", r)
	}
}

func panics(f func()) bool { return recoverErr(f) != nil }

func recoverErr(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(error); ok {
				err = e
			} else {
				err = errors.New("non-error panic")
			}
		}
	}()
	f()
	return nil
}

func BenchmarkGetRelease(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10, 1 << 20, 4 << 20} {
		b.Run(byteSize(size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				buf := buffer.Get(size)
				buf.Bytes()[0] = 1
				buf.Release()
			}
		})
	}
}

func byteSize(n int) string {
	if n >= 1<<20 {
		return strconv.Itoa(n>>20) + "MiB"
	}
	return strconv.Itoa(n>>10) + "KiB"
}

func TestSlice(t *testing.T) {
	buffertest.Check(t)
	frame := buffer.Copy([]byte("HDRbody-bytes"))
	body := frame.Slice(3, frame.Len())
	if got := string(body.Bytes()); got != "body-bytes" {
		t.Fatalf("view = %q", got)
	}
	if frame.Refs() != 2 {
		t.Fatalf("frame refs = %d, want 2 while the view lives", frame.Refs())
	}
	inner := body.Slice(0, 4)
	body.Retain()
	body.Release()
	body.Release()
	if got := string(inner.Bytes()); got != "body" {
		t.Fatalf("view of a view = %q", got)
	}
	if !panics(func() { inner.Slice(0, 5) }) {
		t.Error("Slice beyond the view did not panic")
	}
	frame.Release()
	inner.Release() // the last reference: frame goes back to the pool here
}
