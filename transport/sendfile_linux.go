package transport

import (
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/pipestream/pipestream/buffer"
)

// sendfileSupported says whether plain TCP channels queue file regions for
// sendfile(2) instead of reading them in Write.
const sendfileSupported = true

// maxSendfile is the most one sendfile(2) call is asked to move; Linux
// stops at about 2 GiB anyway.
const maxSendfile = 1 << 30

// sendRegion sends r on conn with sendfile(2) at r's offset, leaving the
// file's own position alone so that the caller may share the file. It
// waits for the socket through the runtime poller and honors conn's write
// deadline. A file system without sendfile falls back to pooled reads.
func sendRegion(conn *net.TCPConn, r *FileRegion) error {
	sc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	fc, err := r.File.SyscallConn()
	if err != nil {
		return err
	}
	off, left := r.Offset, r.Count
	var serr error
	unsupported := false
	// Control keeps the descriptor valid (a concurrent Close waits)
	// without locking out the file's other readers.
	err = fc.Control(func(in uintptr) {
		err := sc.Write(func(out uintptr) bool {
			for left > 0 {
				n, err := syscall.Sendfile(int(out), int(in), &off, int(min(left, maxSendfile)))
				if n > 0 {
					left -= int64(n)
				}
				switch {
				case err == syscall.EINTR:
					continue
				case err == syscall.EAGAIN:
					return false // wait until the socket takes more
				case err != nil:
					if left == r.Count && (err == syscall.EINVAL || err == syscall.ENOSYS || err == syscall.EOPNOTSUPP) {
						unsupported = true
					} else {
						serr = err
					}
					return true
				case n == 0:
					serr = io.ErrUnexpectedEOF // the file is shorter than the region
					return true
				}
			}
			return true
		})
		if serr == nil {
			serr = err
		}
	})
	if err != nil {
		return err
	}
	if unsupported {
		return copyRegion(conn, r)
	}
	if serr != nil {
		return &net.OpError{Op: "sendfile", Net: "tcp", Source: conn.LocalAddr(), Addr: conn.RemoteAddr(), Err: serr}
	}
	return nil
}

// copyRegion sends r through a pooled buffer, for files sendfile(2) cannot
// read.
func copyRegion(w io.Writer, r *FileRegion) error {
	const chunk = 256 << 10
	b := buffer.Get(int(min(r.Count, chunk)))
	defer b.Release()
	off, left := r.Offset, r.Count
	for left > 0 {
		p := b.Bytes()[:min(int64(len(b.Bytes())), left)]
		n, err := r.File.ReadAt(p, off)
		if n < len(p) {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if _, err := w.Write(p); err != nil {
			return err
		}
		off += int64(n)
		left -= int64(n)
	}
	return nil
}
