package pipestreamv1

// KnownOptions holds every option bit this version of the protocol defines.
// A receiver answers a packet with any other bit set with BAD_HEADER, so a
// flag added later is never silently ignored by an old peer.
const KnownOptions = uint32(DataStreamPacketHeader_SYNC | DataStreamPacketHeader_FLUSH | DataStreamPacketHeader_CLOSE |
	DataStreamPacketHeader_ABORT | DataStreamPacketHeader_CHECKSUM | DataStreamPacketHeader_RESUME)

// HasOption reports whether o's bit is set in h's options. It is false for
// OPTION_NONE and for a nil h.
func (h *DataStreamPacketHeader) HasOption(o DataStreamPacketHeader_Option) bool {
	return h.GetOptions()&uint32(o) != 0
}
