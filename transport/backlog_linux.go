package transport

import "golang.org/x/sys/unix"

// socketBacklog returns the bytes waiting in a socket's receive queue, or 0
// when it cannot tell.
func socketBacklog(fd int) int {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil || n < 0 {
		return 0
	}
	return n
}
