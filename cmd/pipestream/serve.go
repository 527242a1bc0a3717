package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pipestream/pipestream/metrics"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/statemachine"
)

const serveHelp = `
Usage: pipestream serve --config group.toml --id ID [flags]
       pipestream serve --id ID --member ID=STREAM,RAFT,COMMIT ... [--data-dir DIR] [flags]

Runs one peer of a group: its DataStream server, its Raft node and its file
store. Every peer of the group is started the same way, with its own id;
"pipestream config" prints a group file to start from.

The peer prints one line to stdout when it is bound ("ID serving: ...") and
one when the group has a leader and every other peer is connected ("ID
ready: ..."). It serves until SIGINT (Ctrl-C) or SIGTERM, then shuts down:
open streams fail, the Raft node and the stores are closed. It exits 0
after a clean shutdown. A second Ctrl-C kills it at once. SIGUSR1 makes it
reread every copy it stores now, and repair from the other peers any that
no longer matches its record (as its daily scrub does); "pipestream scrub"
only reports.

With --metrics ADDR the peer serves Prometheus metrics at
http://ADDR/metrics and the Go profiler at http://ADDR/debug/pprof/, and
prints "ID metrics: http://ADDR/metrics" once bound; see
docs/operations.md for the metric names. The address should be a private
or loopback one: the profiler shows the process's internals.

A new peer of a running group starts with --join and an empty data
directory: it does not bootstrap a group of its own but waits, printing
"ID waiting to join", until "pipestream join --id ID" adds it; it then
catches up from the others and prints its ready line. A peer removed from
the group ("pipestream leave") prints "ID removed from the group", shuts
down and exits 0.

Instead of a group file, list every member (this one too) with --member;
without --data-dir the peer then keeps its Raft log and files in memory.
The flags other than --config override the file.
`

// serveShutdownTimeout bounds a peer's shutdown after the signal.
const serveShutdownTimeout = 30 * time.Second

func runServe(ctx context.Context, args []string, e *env) int {
	fs := newFlagSet(e, "serve", serveHelp)
	config := fs.String("config", "", "group `file` (TOML; see pipestream config)")
	id := fs.String("id", "", "this peer's `id` in the group (required)")
	var members stringList
	fs.Var(&members, "member", "one member, `ID=STREAM,RAFT,COMMIT`: its id and three host:port addresses; repeat for every member, this one too, instead of --config")
	dataDir := fs.String("data-dir", "", "this peer's data `directory` (overrides the group file's data_dir/ID)")
	kind := fs.transportFlag("DataStream `transport`, gnet or netconn (default: the group file's, else gnet)")
	var stats durationFlag
	fs.Var(&stats, "stats", "log the peer's counters every `interval`, such as 10s (0: never)")
	metricsAddr := fs.String("metrics", "", "serve /metrics and /debug/pprof/ on `host:port` (default: off)")
	join := fs.Bool("join", false, "a new peer of a running group: wait to be added (pipestream join) instead of bootstrapping")
	logger := fs.logFlag(slog.LevelInfo)
	err := fs.parseNone(args)
	if err == nil {
		err = checkServeArgs(*config, *id, members)
	}
	if err != nil {
		return e.exit(ctx, "serve", err)
	}
	cfg, err := serveConfig(*config, *id, members)
	if err != nil {
		return e.exit(ctx, "serve", err)
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	if kind.set {
		cfg.Transport = kind.kind
	}
	cfg.Join = *join
	var closing func()
	cfg.Logger, closing = logger()
	return e.exit(ctx, "serve", serve(ctx, e, cfg, serveOptions{stats: time.Duration(stats), metrics: *metricsAddr}, closing))
}

func checkServeArgs(config, id string, members []string) error {
	switch {
	case id == "":
		return usageError("--id is required")
	case config == "" && len(members) == 0:
		return usageError("give the group with --config FILE or with --member for every member")
	case config != "" && len(members) > 0:
		return usageError("--config and --member do not go together")
	}
	return nil
}

// serveConfig returns peer id's config from the group file or the
// --member flags.
func serveConfig(config, id string, members []string) (peer.Config, error) {
	if config != "" {
		return peer.LoadConfig(config, id)
	}
	cfg := peer.Config{ID: id}
	for _, s := range members {
		m, err := parseMember(s)
		if err != nil {
			return cfg, usageError("%v", err)
		}
		cfg.Peers = append(cfg.Peers, m)
	}
	return cfg, nil
}

// serveOptions are serve's flags beyond the peer's config.
type serveOptions struct {
	stats   time.Duration // log interval, 0 for never
	metrics string        // metrics listen address, "" for none
}

// serve runs the peer until ctx is done.
// closing is called as the peer starts shutting down.
func serve(ctx context.Context, e *env, cfg peer.Config, opts serveOptions, closing func()) error {
	log, stats := cfg.Logger, opts.stats
	var (
		reg *prometheus.Registry
		mln net.Listener
	)
	if opts.metrics != "" {
		// Bound before the peer starts, so that a taken port fails at once.
		var err error
		if mln, err = net.Listen("tcp", opts.metrics); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		defer mln.Close()
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		cfg.Events = metrics.New(reg)
	}
	// SIGUSR1 asks for a scrub; caught from the start, so that it never
	// takes its default action, killing the peer.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	p, err := peer.Start(ctx, cfg)
	if err != nil {
		return err
	}
	a := p.Addrs()
	data := cfg.DataDir
	if data == "" {
		data = "(memory)"
	}
	fmt.Fprintf(e.stdout, "%s serving: stream %s, raft %s, commit %s, data %s\n", a.ID, a.StreamAddr, a.RaftAddr, a.CommitAddr, data)
	if cfg.Join && p.Node().Stats().LastIndex == 0 {
		if m, err := p.Membership(); err == nil && len(m.Voters) == 0 {
			fmt.Fprintf(e.stdout, "%s waiting to join: run pipestream join --id %s\n", a.ID, a.ID)
		}
	}
	if mln != nil {
		reg.MustRegister(metrics.NewCollector(p))
		hs := metricsServer(reg)
		go func() { _ = hs.Serve(mln) }()
		defer hs.Close()
		fmt.Fprintf(e.stdout, "%s metrics: http://%s/metrics\n", a.ID, mln.Addr())
	}

	// WaitReady returns early on a signal, which is then served below.
	start := time.Now()
	err = p.WaitReady(ctx)
	switch {
	case err == nil:
		leader, _ := p.Leader()
		fmt.Fprintf(e.stdout, "%s ready: leader %s, after %s\n", a.ID, leader.ID, since(start))
	case ctx.Err() == nil:
		closing()
		return errors.Join(err, p.Shutdown(context.Background()))
	}
	// The helpers below stop with the peer: at the signal, or once the
	// peer is removed from the group.
	sig := ctx
	ctx, stopHelpers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopHelpers()
	if stats > 0 && err == nil {
		wg.Go(func() { logStats(ctx, log, p, stats) })
	}
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-usr1:
				log.Info("SIGUSR1: scrubbing now", "peer", a.ID)
				p.ScrubNow()
			}
		}
	})
	select {
	case <-sig.Done():
		log.Info("shutting down", "peer", a.ID, "cause", context.Cause(sig))
	case <-p.Removed():
		fmt.Fprintf(e.stdout, "%s removed from the group\n", a.ID)
		log.Info("shutting down: removed from the group", "peer", a.ID)
		// Give the leader a moment to take it out of the Raft
		// configuration too, which it does right after.
		awaitNonvoter(sig, p)
	}
	stopHelpers()
	closing()
	sctx, cancel := context.WithTimeout(context.Background(), serveShutdownTimeout)
	defer cancel()
	if err := p.Shutdown(sctx); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s stopped\n", a.ID)
	return nil
}

// removedGrace bounds how long a removed peer waits to leave the Raft
// configuration before it stops anyway.
const removedGrace = 10 * time.Second

// awaitNonvoter waits until p's Raft configuration no longer lists it, or
// removedGrace has passed: stopping before the leader's second step is
// harmless (the group has one voter less to reach), just untidy.
func awaitNonvoter(ctx context.Context, p *peer.Peer) {
	ctx, cancel := context.WithTimeout(ctx, removedGrace)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if m, err := p.Membership(); err != nil || !m.IsVoter(p.ID()) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// metricsServer serves reg at /metrics and the profiler at /debug/pprof/.
func metricsServer(reg *prometheus.Registry) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}

// logStats logs p's counters every interval until ctx is done: what there
// is to watch, without a metrics endpoint (see docs/operations.md).
func logStats(ctx context.Context, log *slog.Logger, p *peer.Peer, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := p.Server().Streams()
		rs := p.Node().Stats()
		leader, _ := p.Leader()
		attrs := []any{"peer", p.ID(), "leader", leader.ID,
			"streams_open", st.Active(), "streams_awaiting_commit", st.Pending(),
			"applied_index", rs.LastIndex, "applied_term", rs.LastTerm, "streams_committed", rs.Streams}
		if fs, ok := p.StateMachine().(*statemachine.FileStore); ok {
			attrs = append(attrs, "copies_missing", fs.Missing(), "links_deferred", fs.Deferred(), "kept_closed", fs.Orphans())
		}
		if r := p.Repairer(); r != nil {
			rst := r.Stats()
			attrs = append(attrs, "repaired", rst.Repaired, "repairs_failed", rst.Failed, "repairing", rst.InProgress)
		}
		log.Info("stats", attrs...)
	}
}
