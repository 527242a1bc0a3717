package codec

import (
	"errors"
	"fmt"
	"io"
)

// PrefixLength is the size of the bare length prefix that ReadFrame and
// WriteFrame use: 4 bytes, big-endian, counting the bytes after it. It is
// the framing of FrameConfig{LengthFieldLength: 4, InitialBytesToStrip: 4}
// and PrependerConfig{LengthFieldLength: 4}, for a peer on a blocking
// connection rather than a pipeline.
const PrefixLength = 4

// WriteFrame writes the concatenation of parts as one frame behind a
// PrefixLength-byte length prefix, in a single Write, so that frames of
// writers that take turns on w never interleave. A body too long for the
// prefix fails with an error wrapping ErrFrameTooLong and writes nothing.
func WriteFrame(w io.Writer, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if uint64(n) > 1<<(8*PrefixLength)-1 {
		return fmt.Errorf("%w: body of %d bytes does not fit a %d-byte length field", ErrFrameTooLong, n, PrefixLength)
	}
	buf := make([]byte, PrefixLength, PrefixLength+n)
	putUint(buf, uint64(n), false)
	for _, p := range parts {
		buf = append(buf, p...)
	}
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one frame that WriteFrame wrote from r, a blocking reader
// such as a net.Conn, and returns its body in a new slice, which the
// caller owns. A body longer than maxBody fails with an error wrapping
// ErrFrameTooLong before any of it is read, as the FrameDecoder's
// MaxFrameLength does; the stream's framing is lost then. At the end of r
// between frames it returns io.EOF itself; a frame cut short is
// io.ErrUnexpectedEOF, wrapped.
func ReadFrame(r io.Reader, maxBody int) ([]byte, error) {
	maxBody = max(maxBody, 0)
	var prefix [PrefixLength]byte
	if _, err := io.ReadFull(r, prefix[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("codec: reading a length prefix: %w", err)
	}
	n := getUint(prefix[:], false)
	if n > uint64(maxBody) {
		return nil, fmt.Errorf("%w: body of %d bytes, more than the maximum of %d", ErrFrameTooLong, n, maxBody)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("codec: reading a frame of %d bytes: %w", n, err)
	}
	return body, nil
}
