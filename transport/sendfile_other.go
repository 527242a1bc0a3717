//go:build !linux

package transport

import "net"

// sendfileSupported is false: every channel reads file regions in Write.
const sendfileSupported = false

func sendRegion(*net.TCPConn, *FileRegion) error { panic("transport: sendfile is not supported") }
