//go:build !linux

package transport

// socketBacklog returns 0: the size of a socket's receive queue is asked
// for only on Linux.
func socketBacklog(int) int { return 0 }
