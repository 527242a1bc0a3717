package transport

import (
	"fmt"
	"io"
	"os"

	"github.com/pipestream/pipestream/buffer"
)

// FileRegion is a message that sends Count bytes of File from Offset, as
// Netty's FileRegion. On a channel over plain TCP on Linux, gnet's or
// net.Conn's, the kernel copies them from the page cache to the socket with
// sendfile(2), never through user space, when the writer goroutine gets to
// them. Elsewhere (TLS, other systems) Write reads them into a pooled
// buffer on the caller's goroutine, since TLS must encrypt in user space.
//
// Write takes over the region like a buffer: it calls Release exactly once,
// when it no longer needs File, after the bytes went to the socket or on
// any failure. File must stay open and the region unchanged until then. The
// bytes must exist: a region past the end of the file fails when it is sent
// and closes the connection, since the frame before it announced them.
type FileRegion struct {
	File   *os.File
	Offset int64
	Count  int64
	// OnRelease, if not nil, is called by Release.
	OnRelease func()
}

// Release calls OnRelease. The transport calls it; a stage that drops the
// message calls it through pipeline.Release.
func (r *FileRegion) Release() {
	if r.OnRelease != nil {
		r.OnRelease()
	}
}

// readRegion reads r into a pooled buffer and releases r.
func readRegion(r *FileRegion) (*buffer.Buf, error) {
	defer r.Release()
	if r.Count < 0 || r.Offset < 0 || r.Count > 1<<31-1 {
		return nil, fmt.Errorf("transport: file region of %d bytes at %d is out of range", r.Count, r.Offset)
	}
	b := buffer.Get(int(r.Count))
	if _, err := r.File.ReadAt(b.Bytes(), r.Offset); err != nil {
		b.Release()
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("transport: read file region: %w", err)
	}
	return b, nil
}

// SendsFileRegions reports whether ch sends a FileRegion from its writer
// goroutine with sendfile(2). When it does not, Write reads the region on
// the caller's goroutine, and a caller that holds a lock around Write does
// better to read the file into a buffer itself first.
func SendsFileRegions(ch Channel) bool {
	switch c := ch.(type) {
	case *connChannel:
		return c.out.tcp != nil
	case *gnetChannel:
		return c.out != nil && c.out.tcp != nil
	}
	return false
}
