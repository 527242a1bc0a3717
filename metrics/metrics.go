// Package metrics exports a peer's events and state as Prometheus metrics.
// A Metrics is the handler.Events of a server (and a Repairer); a Collector
// reads the Raft node and the stream table when scraped. The names are
// documented in docs/operations.md.
package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/statemachine"
)

// latencyBuckets, in seconds, span a packet's write to memory (tens of
// microseconds) to a reply near the default reply timeout (10s): ×4 steps
// from 10µs to 10.5s.
var latencyBuckets = prometheus.ExponentialBuckets(10e-6, 4, 11)

// streamBuckets, in seconds, span a stream's life from open to commit:
// ×4 steps from 1ms to 4.4 minutes, past the default commit timeout.
var streamBuckets = prometheus.ExponentialBuckets(1e-3, 4, 10)

// stage is the metrics of one packet stage, resolved once so that a packet
// costs a few atomic adds and no label lookup.
type stage struct {
	packets, bytes prometheus.Counter
	latency        prometheus.Observer // nil for forwarded: it has none
}

// Metrics implements handler.Events with Prometheus counters, gauges and
// histograms. Its methods only add to them: they neither block nor
// allocate, except for the first failure with a given error code.
type Metrics struct {
	stages     [handler.PacketAcknowledged + 1]stage
	acksFailed prometheus.Counter

	opened, committed, committedBytes prometheus.Counter
	failed                            *prometheus.CounterVec
	streamSeconds                     prometheus.Observer

	repairsStarted, repairBytes prometheus.Counter
	repairsFinished             *prometheus.CounterVec
	repairSeconds               prometheus.Observer

	conns      *prometheus.GaugeVec
	connsTotal *prometheus.CounterVec
}

// New returns a Metrics whose metrics are registered with reg.
func New(reg prometheus.Registerer) *Metrics {
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		reg.MustRegister(c)
		return c
	}
	counterVec := func(name, help, label string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{label})
		reg.MustRegister(c)
		return c
	}
	histogram := func(name, help string, buckets []float64) prometheus.Histogram {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
		reg.MustRegister(h)
		return h
	}

	packets := counterVec("pipestream_packets_total", "Data packets by stage: written to this peer's store, forwarded to a successor, acknowledged by one.", "stage")
	bytes := counterVec("pipestream_packet_bytes_total", "Data bytes of the packets by stage.", "stage")
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "pipestream_packet_seconds", Help: "Per packet: the local write (stage written), the wait for a successor's answer (stage acknowledged).",
		Buckets: latencyBuckets,
	}, []string{"stage"})
	reg.MustRegister(latency)
	conns := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pipestream_connections", Help: "Open connections by side: upstream (clients and predecessors) or successor.",
	}, []string{"side"})
	reg.MustRegister(conns)

	m := &Metrics{
		acksFailed: counter("pipestream_packet_acks_failed_total", "Successor answers that failed their packet."),
		failed: counterVec("pipestream_streams_failed_total",
			"Streams failed on this peer, or whose commit failed on their primary, by error code.", "code"),
		opened:         counter("pipestream_streams_opened_total", "Streams opened on this peer."),
		committed:      counter("pipestream_streams_committed_total", "Streams committed and linked to this peer's copy."),
		committedBytes: counter("pipestream_streams_committed_bytes_total", "Bytes of the streams committed on this peer."),
		streamSeconds: histogram("pipestream_stream_seconds",
			"Time from a stream's header to its commit on this peer.", streamBuckets),
		repairsStarted: counter("pipestream_repairs_started_total", "Repairs of a missing copy started."),
		repairsFinished: counterVec("pipestream_repairs_finished_total",
			"Repairs finished, by result (ok or failed).", "result"),
		repairBytes: counter("pipestream_repaired_bytes_total", "Bytes of the copies repaired."),
		repairSeconds: histogram("pipestream_repair_seconds",
			"Duration of each repair, failed ones included.", streamBuckets),
		conns: conns,
		connsTotal: counterVec("pipestream_connections_opened_total",
			"Connections opened since start by side; a successor's count grows with each redial.", "side"),
	}
	for _, k := range []handler.PacketEventKind{handler.PacketWritten, handler.PacketForwarded, handler.PacketAcknowledged} {
		s := stage{packets: packets.WithLabelValues(k.String()), bytes: bytes.WithLabelValues(k.String())}
		if k != handler.PacketForwarded {
			s.latency = latency.WithLabelValues(k.String())
		}
		m.stages[k] = s
	}
	for _, side := range []string{"upstream", "successor"} {
		m.conns.WithLabelValues(side)
		m.connsTotal.WithLabelValues(side)
	}
	m.repairsFinished.WithLabelValues("ok")
	m.repairsFinished.WithLabelValues("failed")
	return m
}

// Packet implements handler.Events.
func (m *Metrics) Packet(e handler.PacketEvent) {
	if int(e.Kind) >= len(m.stages) || m.stages[e.Kind].packets == nil {
		return
	}
	s := &m.stages[e.Kind]
	s.packets.Inc()
	s.bytes.Add(float64(e.Bytes))
	if s.latency != nil {
		s.latency.Observe(e.Duration.Seconds())
	}
	if e.Kind == handler.PacketAcknowledged && e.Code != 0 {
		m.acksFailed.Inc()
	}
}

// Stream implements handler.Events.
func (m *Metrics) Stream(e handler.StreamEvent) {
	switch e.Kind {
	case handler.StreamOpened:
		m.opened.Inc()
	case handler.StreamCommitted:
		m.committed.Inc()
		m.committedBytes.Add(float64(e.Bytes))
		m.streamSeconds.Observe(e.Duration.Seconds())
	case handler.StreamFailed:
		m.failed.WithLabelValues(e.Code.String()).Inc()
	case handler.StreamRepairStarted:
		m.repairsStarted.Inc()
	case handler.StreamRepairFinished:
		m.repairSeconds.Observe(e.Duration.Seconds())
		if e.Code != 0 {
			m.repairsFinished.WithLabelValues("failed").Inc()
			return
		}
		m.repairsFinished.WithLabelValues("ok").Inc()
		m.repairBytes.Add(float64(e.Bytes))
	}
}

// Conn implements handler.Events.
func (m *Metrics) Conn(e handler.ConnEvent) {
	side := "upstream"
	if e.Peer != "" {
		side = "successor"
	}
	switch e.Kind {
	case handler.ConnUp:
		m.conns.WithLabelValues(side).Inc()
		m.connsTotal.WithLabelValues(side).Inc()
	case handler.ConnDown:
		m.conns.WithLabelValues(side).Dec()
	}
}

var _ handler.Events = (*Metrics)(nil)

// Collector reads a peer's state when scraped: its Raft node's role and
// applied position, its open and parked streams, its missing copies and
// repairs.
type Collector struct {
	p *peer.Peer

	leader, appliedIndex, appliedTerm, raftStreams            *prometheus.Desc
	open, pending, missing, repairing, repairWaiting          *prometheus.Desc
	raftTerm, raftCommit, raftLastLog, raftPeers, raftContact *prometheus.Desc
}

// NewCollector returns a Collector of p; register it with a registry.
func NewCollector(p *peer.Peer) *Collector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &Collector{p: p,
		leader:        d("pipestream_raft_leader", "1 while this peer is the Raft leader, else 0."),
		appliedIndex:  d("pipestream_raft_applied_index", "Index of the last Raft entry this peer applied."),
		appliedTerm:   d("pipestream_raft_applied_term", "Term of the last Raft entry this peer applied."),
		raftStreams:   d("pipestream_raft_streams_applied", "Distinct stream entries this peer's Raft state machine applied."),
		open:          d("pipestream_streams_open", "Streams open on this peer."),
		pending:       d("pipestream_streams_awaiting_commit", "Streams closed on every peer, waiting for their entry."),
		missing:       d("pipestream_copies_missing", "Committed entries this peer holds no copy of."),
		repairing:     d("pipestream_repairs_in_progress", "Repairs running now."),
		repairWaiting: d("pipestream_repairs_waiting", "Missing copies waiting for their next repair attempt."),
		raftTerm:      d("pipestream_raft_term", "hashicorp/raft's current term."),
		raftCommit:    d("pipestream_raft_commit_index", "hashicorp/raft's commit index."),
		raftLastLog:   d("pipestream_raft_last_log_index", "hashicorp/raft's last log index."),
		raftPeers:     d("pipestream_raft_peers", "Other voters in hashicorp/raft's configuration."),
		raftContact:   d("pipestream_raft_last_contact_seconds", "Seconds since a follower last heard from its leader (0 on the leader)."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.leader, c.appliedIndex, c.appliedTerm, c.raftStreams,
		c.open, c.pending, c.missing, c.repairing, c.repairWaiting,
		c.raftTerm, c.raftCommit, c.raftLastLog, c.raftPeers, c.raftContact} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	g := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	leader := 0.0
	if c.p.IsLeader() {
		leader = 1
	}
	g(c.leader, leader)
	rs := c.p.Node().Stats()
	g(c.appliedIndex, float64(rs.LastIndex))
	g(c.appliedTerm, float64(rs.LastTerm))
	g(c.raftStreams, float64(rs.Streams))
	st := c.p.Server().Streams()
	g(c.open, float64(st.Active()))
	g(c.pending, float64(st.Pending()))
	if fs, ok := c.p.StateMachine().(*statemachine.FileStore); ok {
		g(c.missing, float64(fs.Missing()))
	}
	if r := c.p.Repairer(); r != nil {
		s := r.Stats()
		g(c.repairing, float64(s.InProgress))
		g(c.repairWaiting, float64(s.Waiting))
	}
	// hashicorp/raft reports its state as strings; the numeric ones are
	// exported as they are, last_contact as seconds.
	raw := c.p.Node().RaftStats()
	for d, key := range map[*prometheus.Desc]string{c.raftTerm: "term", c.raftCommit: "commit_index",
		c.raftLastLog: "last_log_index", c.raftPeers: "num_peers"} {
		if v, err := strconv.ParseFloat(raw[key], 64); err == nil {
			g(d, v)
		}
	}
	switch lc := raw["last_contact"]; lc {
	case "", "never":
	case "0":
		g(c.raftContact, 0)
	default:
		if d, err := time.ParseDuration(lc); err == nil {
			g(c.raftContact, d.Seconds())
		}
	}
}
