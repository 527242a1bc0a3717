package handler

import (
	"hash/crc32"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// castagnoli is the CRC32C table; hash/crc32 computes it with the CPU's
// CRC32 instruction where there is one (SSE 4.2, ARMv8).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// sumMode is whether a stream's data packets carry checksums. The first
// data packet decides; the others must agree, so that a stream's checksum
// covers all of it or none.
type sumMode uint8

const (
	sumUnknown sumMode = iota
	sumOn
	sumOff
)

// streamSum is a stream's running CRC32C, kept by its executor.
type streamSum struct {
	mode sumMode
	crc  uint32 // of the data written so far, when mode is sumOn
}

// check folds a data packet into the running checksum and compares it with
// the one the packet carries: the CRC32C of the stream through the end of
// this packet. A mismatch is CHECKSUM, and the packet is not written.
//
// Without verify it only takes the packet's checksum as the stream's: a
// peer with successors forwards the very bytes it stores (one buffer, by
// reference), so every leaf of the routing tree, which verifies, checks
// what each peer on its path received, and the stream's CLOSE succeeds
// only once every leaf has. That spares the interior peers a pass over the
// data, as HDFS's pipeline leaves checksums to its last DataNode.
func (s *streamSum) check(p *Packet, verify bool) error {
	h := p.Header
	if h.GetType() != pb.DataStreamPacketHeader_STREAM_DATA {
		return nil
	}
	mode := sumOff
	if p.Has(pb.DataStreamPacketHeader_CHECKSUM) {
		mode = sumOn
	}
	switch {
	case s.mode == sumUnknown:
		s.mode = mode
	case s.mode != mode:
		return errorf(pb.ErrorCode_BAD_HEADER, "packet at offset %d: a stream's data packets carry a checksum all or none", h.GetStreamOffset())
	}
	if mode == sumOff {
		return nil
	}
	if !verify {
		s.crc = h.GetCrc32C()
		return nil
	}
	crc := crc32.Update(s.crc, castagnoli, p.Body.Bytes())
	if crc != h.GetCrc32C() {
		return errorf(pb.ErrorCode_CHECKSUM, "packet at offset %d: data has CRC32C %08x through its end, the packet says %08x",
			h.GetStreamOffset(), crc, h.GetCrc32C())
	}
	s.crc = crc
	return nil
}
