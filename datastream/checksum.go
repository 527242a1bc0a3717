package datastream

import (
	"fmt"
	"hash/crc32"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/transport"
)

// castagnoli is the CRC32C table; hash/crc32 computes it with the CPU's
// CRC32 instruction where there is one.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// regionChunk is how much of a file region updateCRC reads at a time.
const regionChunk = 256 << 10

// updateCRC folds a packet's data into the stream's running CRC32C: data,
// or body, a *buffer.Buf or a transport.FileRegion (read for it, since the
// kernel sends it without passing through here).
func updateCRC(crc uint32, data []byte, body any) (uint32, error) {
	switch b := body.(type) {
	case nil:
		return crc32.Update(crc, castagnoli, data), nil
	case *buffer.Buf:
		return crc32.Update(crc, castagnoli, b.Bytes()), nil
	case *transport.FileRegion:
		buf := buffer.Get(int(min(b.Count, regionChunk)))
		defer buf.Release()
		p := buf.Bytes()
		for off := int64(0); off < b.Count; {
			n := min(int64(len(p)), b.Count-off)
			if _, err := b.File.ReadAt(p[:n], b.Offset+off); err != nil {
				return 0, fmt.Errorf("datastream: checksum %s at %d: %w", b.File.Name(), b.Offset+off, err)
			}
			crc = crc32.Update(crc, castagnoli, p[:n])
			off += n
		}
		return crc, nil
	default:
		return 0, fmt.Errorf("datastream: cannot checksum a %T body", body)
	}
}
