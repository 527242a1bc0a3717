//go:build !unix

package transport

// gnetSupported reports whether the gnet transport runs here: its writer
// needs a duplicate of gnet's socket as a net.Conn, which net.FileConn
// does not make on this system.
const gnetSupported = false

// socketReader is never used where gnet is not supported.
type socketReader int

func (socketReader) Read([]byte) (int, error) { return 0, nil }
