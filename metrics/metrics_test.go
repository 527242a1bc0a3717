package metrics_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/metrics"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// Each event moves its metrics by what it carries, and a packet event
// allocates nothing.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	key := handler.StreamKey{ClientID: "c", StreamID: 1}
	m.Stream(handler.StreamEvent{Kind: handler.StreamOpened, Key: key})
	m.Stream(handler.StreamEvent{Kind: handler.StreamCommitted, Key: key, Bytes: 300, Duration: time.Millisecond})
	m.Stream(handler.StreamEvent{Kind: handler.StreamFailed, Key: key, Code: pb.ErrorCode_TIMEOUT})
	m.Stream(handler.StreamEvent{Kind: handler.StreamRepairStarted, Key: key, Bytes: 300})
	m.Stream(handler.StreamEvent{Kind: handler.StreamRepairFinished, Key: key, Bytes: 300})
	m.Stream(handler.StreamEvent{Kind: handler.StreamRepairFinished, Key: key, Bytes: 300, Code: pb.ErrorCode_INTERNAL})
	m.Conn(handler.ConnEvent{Kind: handler.ConnUp, Peer: "p2"})
	m.Conn(handler.ConnEvent{Kind: handler.ConnUp})
	m.Conn(handler.ConnEvent{Kind: handler.ConnDown})
	pe := handler.PacketEvent{Kind: handler.PacketWritten, Key: key, Bytes: 100, Duration: time.Microsecond}
	if n := testing.AllocsPerRun(1000, func() { m.Packet(pe) }); n != 0 {
		t.Errorf("Packet allocates %v times per call", n)
	}
	m.Packet(handler.PacketEvent{Kind: handler.PacketForwarded, Key: key, Peer: "p2", Bytes: 100})
	m.Packet(handler.PacketEvent{Kind: handler.PacketAcknowledged, Key: key, Peer: "p2", Bytes: 100, Code: pb.ErrorCode_CHECKSUM})
	m.Packet(handler.PacketEvent{Kind: 99}) // unknown kinds are ignored

	// AllocsPerRun calls once more than it counts.
	want := `
# HELP pipestream_packets_total Data packets by stage: written to this peer's store, forwarded to a successor, acknowledged by one.
# TYPE pipestream_packets_total counter
pipestream_packets_total{stage="acknowledged"} 1
pipestream_packets_total{stage="forwarded"} 1
pipestream_packets_total{stage="written"} 1001
# HELP pipestream_packet_bytes_total Data bytes of the packets by stage.
# TYPE pipestream_packet_bytes_total counter
pipestream_packet_bytes_total{stage="acknowledged"} 100
pipestream_packet_bytes_total{stage="forwarded"} 100
pipestream_packet_bytes_total{stage="written"} 100100
# HELP pipestream_packet_acks_failed_total Successor answers that failed their packet.
# TYPE pipestream_packet_acks_failed_total counter
pipestream_packet_acks_failed_total 1
# HELP pipestream_streams_opened_total Streams opened on this peer.
# TYPE pipestream_streams_opened_total counter
pipestream_streams_opened_total 1
# HELP pipestream_streams_committed_total Streams committed and linked to this peer's copy.
# TYPE pipestream_streams_committed_total counter
pipestream_streams_committed_total 1
# HELP pipestream_streams_committed_bytes_total Bytes of the streams committed on this peer.
# TYPE pipestream_streams_committed_bytes_total counter
pipestream_streams_committed_bytes_total 300
# HELP pipestream_streams_failed_total Streams failed on this peer, or whose commit failed on their primary, by error code.
# TYPE pipestream_streams_failed_total counter
pipestream_streams_failed_total{code="TIMEOUT"} 1
# HELP pipestream_repairs_started_total Repairs of a missing copy started.
# TYPE pipestream_repairs_started_total counter
pipestream_repairs_started_total 1
# HELP pipestream_repairs_finished_total Repairs finished, by result (ok or failed).
# TYPE pipestream_repairs_finished_total counter
pipestream_repairs_finished_total{result="failed"} 1
pipestream_repairs_finished_total{result="ok"} 1
# HELP pipestream_repaired_bytes_total Bytes of the copies repaired.
# TYPE pipestream_repaired_bytes_total counter
pipestream_repaired_bytes_total 300
# HELP pipestream_connections Open connections by side: upstream (clients and predecessors) or successor.
# TYPE pipestream_connections gauge
pipestream_connections{side="successor"} 1
pipestream_connections{side="upstream"} 0
# HELP pipestream_connections_opened_total Connections opened since start by side; a successor's count grows with each redial.
# TYPE pipestream_connections_opened_total counter
pipestream_connections_opened_total{side="successor"} 1
pipestream_connections_opened_total{side="upstream"} 1
`
	names := []string{"pipestream_packets_total", "pipestream_packet_bytes_total", "pipestream_packet_acks_failed_total",
		"pipestream_streams_opened_total", "pipestream_streams_committed_total", "pipestream_streams_committed_bytes_total",
		"pipestream_streams_failed_total", "pipestream_repairs_started_total", "pipestream_repairs_finished_total",
		"pipestream_repaired_bytes_total", "pipestream_connections", "pipestream_connections_opened_total"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "pipestream_packet_seconds", "pipestream_stream_seconds", "pipestream_repair_seconds"); err != nil || n != 4 {
		// written and acknowledged, stream, repair
		t.Errorf("histograms: %d series, %v; want 4", n, err)
	}
}
