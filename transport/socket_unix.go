//go:build unix

package transport

import (
	"io"
	"syscall"
)

// gnetSupported reports whether the gnet transport runs here: its writer
// needs a duplicate of gnet's socket as a net.Conn.
const gnetSupported = true

// socketReader reads a non-blocking socket once, without waiting: "no
// bytes yet" is (0, nil).
type socketReader int

func (fd socketReader) Read(p []byte) (int, error) {
	n, err := syscall.Read(int(fd), p)
	switch {
	case err == syscall.EAGAIN || err == syscall.EINTR:
		return 0, nil
	case err != nil:
		return 0, err
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
}
