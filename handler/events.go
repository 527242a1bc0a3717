package handler

import (
	"time"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// Events observes a server: its streams, the packets of each stage and its
// connections. Config.Events nil means no calls and no cost. The methods
// are called synchronously, on whatever goroutine the event happens on,
// event loops included, so an implementation must not block and should
// not allocate: count, observe a histogram, return. The events are values,
// so a call allocates nothing per packet.
type Events interface {
	Stream(StreamEvent)
	Packet(PacketEvent)
	Conn(ConnEvent)
}

// StreamEventKind says what happened to a stream.
type StreamEventKind uint8

const (
	// StreamOpened: this peer took the stream's header.
	StreamOpened StreamEventKind = iota + 1
	// StreamCommitted: the stream's entry was linked to this peer's copy.
	// Bytes is its length, Duration the time since it opened here.
	StreamCommitted
	// StreamFailed: the stream failed on this peer, or its commit did on
	// the primary. Code says why.
	StreamFailed
	// StreamRepairStarted and StreamRepairFinished: the repair of a copy
	// this peer lacks (package repair). Finished has Bytes, Duration, and
	// a Code other than ERROR_NONE when the repair failed.
	StreamRepairStarted
	StreamRepairFinished
	// StreamRecovered: successor Peer failed (Code says how) and this
	// peer recovered the stream's pipeline around it.
	StreamRecovered
)

var streamEventNames = [...]string{"", "opened", "committed", "failed", "repair_started", "repair_finished", "recovered"}

func (k StreamEventKind) String() string { return kindName(streamEventNames[:], k) }

// StreamEvent is one event of a stream.
type StreamEvent struct {
	Kind     StreamEventKind
	Key      StreamKey
	Primary  bool
	Peer     string // for StreamRecovered
	Bytes    uint64
	Duration time.Duration
	Code     pb.ErrorCode
}

// PacketEventKind names the stage a packet event comes from.
type PacketEventKind uint8

const (
	// PacketWritten: a data packet was written to this peer's state
	// machine; Duration is the write (Sync and Close included).
	PacketWritten PacketEventKind = iota + 1
	// PacketForwarded: a packet's frame was queued to successor Peer.
	PacketForwarded
	// PacketAcknowledged: successor Peer answered a forwarded packet;
	// Duration is the time since it was forwarded, Code its answer.
	PacketAcknowledged
)

var packetEventNames = [...]string{"", "written", "forwarded", "acknowledged"}

func (k PacketEventKind) String() string { return kindName(packetEventNames[:], k) }

// PacketEvent is one stage's event for one data packet (a stream's header
// has none), the CLOSE included. Bytes is the packet's data length.
type PacketEvent struct {
	Kind     PacketEventKind
	Key      StreamKey
	Peer     string // the successor, for forwarded and acknowledged
	Bytes    uint64
	Duration time.Duration
	Code     pb.ErrorCode
}

// ConnEventKind says whether a connection came up or went down.
type ConnEventKind uint8

const (
	ConnUp ConnEventKind = iota + 1
	ConnDown
)

func (k ConnEventKind) String() string {
	switch k {
	case ConnUp:
		return "up"
	case ConnDown:
		return "down"
	}
	return "unknown"
}

// kindName is the name of an event kind k in names, and "unknown" for a
// kind past them.
func kindName[K ~uint8](names []string, k K) string {
	if int(k) < len(names) {
		return names[k]
	}
	return "unknown"
}

// ConnEvent is a connection's coming or going. Peer is the successor's id
// for a connection this server dialed, empty for an upstream connection
// (a client's or a predecessor's).
type ConnEvent struct {
	Kind ConnEventKind
	Peer string
}
