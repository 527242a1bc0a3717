package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
)

// Three serve processes with --metrics, and a put of a file of known size
// with p2 as primary: every peer's /metrics must have moved by exactly what
// the stream did there. put's route is the chain p2 -> p1 -> p3: p2 and
// p1 forward every packet to one successor, p3 to none.
func TestServeMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs three processes")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "group.toml")
	ids := []string{"p1", "p2", "p3"}

	var (
		peers   []*process
		metrics []string // each peer's metrics address
	)
	onFreePorts(t, 12, func(addrs []string) error {
		if err := os.WriteFile(config, []byte(testGroupFile(addrs[:9])), 0o644); err != nil {
			t.Fatal(err)
		}
		peers, metrics = nil, addrs[9:]
		for i, id := range ids {
			peers = append(peers, startPeerArgs(t, bin, config, id, []string{"--metrics", metrics[i]}))
		}
		return waitAllReady(peers)
	})
	for i, p := range peers {
		want := fmt.Sprintf("%s metrics: http://%s/metrics", p.id, metrics[i])
		if _, err := p.stdout.waitFor(want, 0); err != nil {
			t.Errorf("%s did not print %q: %v", p.id, want, err)
		}
	}

	before := make([]map[string]float64, len(peers))
	for i := range peers {
		before[i] = scrape(t, metrics[i])
	}

	const size = 3<<20 + 12345
	data := make([]byte, size)
	_, _ = rand.NewChaCha8([32]byte{9}).Read(data)
	file := filepath.Join(dir, "payload.bin")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	runBinary(t, bin, "put", file, "--config", config, "--name", "m/payload.bin", "--primary", "p2")

	// put cuts the file into packets of DefaultPacketSize and ends with an
	// empty CLOSE packet.
	packets := float64((size+datastream.DefaultPacketSize-1)/datastream.DefaultPacketSize + 1)
	for i, id := range ids {
		// The primary answered the put once it had committed; the others
		// apply the entry a moment later.
		after := waitMetric(t, metrics[i], "pipestream_streams_committed_total", before[i]["pipestream_streams_committed_total"]+1)
		succ := 1.0
		if id == "p3" {
			succ = 0
		}
		want := map[string]float64{
			"pipestream_streams_opened_total":                       1,
			"pipestream_streams_committed_total":                    1,
			"pipestream_streams_committed_bytes_total":              size,
			`pipestream_packets_total{stage="written"}`:             packets,
			`pipestream_packet_bytes_total{stage="written"}`:        size,
			`pipestream_packet_seconds_count{stage="written"}`:      packets,
			`pipestream_packets_total{stage="forwarded"}`:           succ * packets,
			`pipestream_packet_bytes_total{stage="forwarded"}`:      succ * size,
			`pipestream_packets_total{stage="acknowledged"}`:        succ * packets,
			`pipestream_packet_bytes_total{stage="acknowledged"}`:   succ * size,
			`pipestream_packet_seconds_count{stage="acknowledged"}`: succ * packets,
			"pipestream_packet_acks_failed_total":                   0,
			"pipestream_stream_seconds_count":                       1,
			`pipestream_connections_opened_total{side="successor"}`: 0,
			`pipestream_repairs_finished_total{result="failed"}`:    0,
			`pipestream_repairs_started_total`:                      0,
			`pipestream_connections{side="successor"}`:              0,
			"pipestream_raft_streams_applied":                       1,
		}
		for name, d := range want {
			a, ok := after[name]
			if !ok {
				t.Errorf("%s: /metrics has no %s", id, name)
				continue
			}
			if got := a - before[i][name]; got != d {
				t.Errorf("%s: %s moved by %v, want %v", id, name, got, d)
			}
		}
		for name, v := range after {
			if strings.HasPrefix(name, "pipestream_streams_failed_total") && v != before[i][name] {
				t.Errorf("%s: %s = %v, was %v", id, name, v, before[i][name])
			}
		}
		// Each peer has a connection to each other peer, up since before
		// the first scrape.
		if got := after[`pipestream_connections{side="successor"}`]; got != 2 {
			t.Errorf("%s: %v successor connections, want 2", id, got)
		}
		if got := after["pipestream_raft_leader"]; got != 0 && got != 1 {
			t.Errorf("%s: pipestream_raft_leader = %v", id, got)
		}
		// hashicorp/raft's own figures: every peer in a term, with two
		// other voters, its log and commit index past the put's entry.
		if after["pipestream_raft_term"] < 1 || after["pipestream_raft_peers"] != 2 ||
			after["pipestream_raft_commit_index"] < after["pipestream_raft_applied_index"] ||
			after["pipestream_raft_last_log_index"] < after["pipestream_raft_commit_index"] {
			t.Errorf("%s: raft term %v, peers %v, commit %v, last log %v, applied %v", id, after["pipestream_raft_term"],
				after["pipestream_raft_peers"], after["pipestream_raft_commit_index"], after["pipestream_raft_last_log_index"],
				after["pipestream_raft_applied_index"])
		}
	}
	leaders := 0.0
	for i := range peers {
		leaders += scrape(t, metrics[i])["pipestream_raft_leader"]
	}
	if leaders != 1 {
		t.Errorf("%v peers report being the Raft leader, want 1", leaders)
	}
	resp, err := http.Get("http://" + metrics[0] + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine profile:") {
		t.Errorf("pprof: %s\n%.200s", resp.Status, body)
	}

	for _, p := range peers {
		p.interrupt(t)
	}
	for _, p := range peers {
		p.wait(t)
	}
}

// waitAllReady waits for every peer's ready line; if one fails it stops
// them all and returns the failure.
func waitAllReady(peers []*process) error {
	for _, p := range peers {
		if err := p.waitReady(); err != nil {
			for _, q := range peers {
				_ = q.cmd.Process.Kill()
				<-q.exited
			}
			return err
		}
	}
	return nil
}

// waitMetric scrapes addr until name reaches want, for up to testTimeout,
// and returns that scrape.
func waitMetric(t *testing.T, addr, name string, want float64) map[string]float64 {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		m := scrape(t, addr)
		if m[name] >= want {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s = %v, not %v within %v", addr, name, m[name], want, testTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// scrape reads addr's /metrics in the text format into name{labels} ->
// value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	m := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("/metrics line %q does not parse", line)
		}
		m[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}
