package datastream

import (
	"fmt"
	"io"
	"slices"
)

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	r.smu.Lock()
	defer r.smu.Unlock()
	for {
		if r.cur != nil {
			n := copy(p, r.cur.Bytes())
			r.cur.Skip(n)
			if r.cur.Len() == 0 {
				r.cur.Release()
				r.cur = nil
			}
			r.off += int64(n)
			return n, nil
		}
		if r.off >= r.Size() {
			return 0, io.EOF
		}
		if len(p) == 0 {
			return 0, nil
		}
		if err := r.advance(); err != nil {
			return 0, err
		}
	}
}

// WriteTo implements io.WriterTo, which io.Copy uses: the rest of the
// file goes to w chunk by chunk as the replies hold it, with no copy into
// a buffer of the caller's.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	r.smu.Lock()
	defer r.smu.Unlock()
	var written int64
	for {
		if r.cur != nil {
			n, err := w.Write(r.cur.Bytes())
			r.cur.Skip(n)
			if r.cur.Len() == 0 {
				r.cur.Release()
				r.cur = nil
			}
			r.off += int64(n)
			written += int64(n)
			if err != nil {
				return written, err
			}
			if r.cur != nil {
				return written, io.ErrShortWrite
			}
			continue
		}
		if r.off >= r.Size() {
			return written, nil
		}
		if err := r.advance(); err != nil {
			return written, err
		}
	}
}

// advance makes the next chunk of the sequential read r.cur, or moves past a
// request that is done, or restarts on another peer after a failure.
func (r *Reader) advance() error {
	if err := r.readAhead(); err != nil {
		return err
	}
	head := r.ahead[0]
	b, err := head.take(r.ctx, r.o.timeout)
	switch {
	case err == io.EOF:
		r.ahead[0] = nil
		r.ahead = r.ahead[1:]
	case err != nil:
		r.dropAhead()
		return r.retry(head.rc, err)
	default:
		r.cur = b
	}
	return nil
}

// readAhead keeps the window of requests ahead of the sequential reader
// full. A request that cannot be sent restarts it on the next peer.
func (r *Reader) readAhead() error {
	for len(r.ahead) < r.o.window && r.fetched < r.Size() {
		n := min(r.o.request, r.Size()-r.fetched)
		call, err := r.request(r.fetched, n)
		if err != nil {
			r.dropAhead()
			if err := r.retry(nil, err); err != nil {
				return err
			}
			continue
		}
		r.ahead = append(r.ahead, call)
		r.fetched += n
	}
	return nil
}

// dropAhead forgets the requests ahead; the reader asks again from its
// offset.
func (r *Reader) dropAhead() {
	for _, c := range r.ahead {
		c.cancel()
	}
	clear(r.ahead)
	r.ahead = r.ahead[:0]
	r.fetched = r.off
}

// ReadAt implements io.ReaderAt: it fills p from off, reading with the
// same window as Read, and fails with io.EOF only when p reaches past the
// end of the file.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("datastream: read %q at negative offset %d", r.name, off)
	}
	end := min(off+int64(len(p)), r.Size())
	if off > r.Size() {
		end = off
	}
	pos := off // p is filled up to here
	var calls []*readCall
	defer func() {
		for _, c := range calls {
			c.cancel()
		}
	}()
	var lastErr error
	for pos < end {
		asked := pos
		if len(calls) > 0 {
			last := calls[len(calls)-1]
			asked = last.off + last.n
		}
		for len(calls) < r.o.window && asked < end {
			n := min(r.o.request, end-asked)
			call, err := r.request(asked, n)
			if err != nil {
				lastErr = err
				break
			}
			calls = append(calls, call)
			asked += n
		}
		if len(calls) == 0 {
			if err := r.retry(nil, lastErr); err != nil {
				return int(pos - off), err
			}
			continue
		}
		head := calls[0]
		b, err := head.take(r.ctx, r.o.timeout)
		switch {
		case err == io.EOF:
			calls = slices.Delete(calls, 0, 1)
		case err != nil:
			for _, c := range calls {
				c.cancel()
			}
			calls = calls[:0]
			if err := r.retry(head.rc, err); err != nil {
				return int(pos - off), err
			}
		default:
			// A call's chunks arrive in order, each where the last ended,
			// and the calls cover [off, end) in order: this one is at pos.
			copy(p[pos-off:], b.Bytes())
			pos += int64(b.Len())
			b.Release()
		}
	}
	if end < off+int64(len(p)) {
		return int(end - off), io.EOF
	}
	return len(p), nil
}
