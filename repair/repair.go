// Package repair heals a peer's store: a Repairer finds the committed
// entries whose copy this peer lacks (it was down while the stream was
// written, lost its disk, restored a snapshot, or Scrub found its copy
// corrupt), fetches each from another peer over the DataStream read path,
// and hands the bytes to the store, which checks them against the entry's
// length and CRC32C before it links them. Repairs run in the background,
// a few at a time and paced, retry with backoff, and pick up again after a
// restart, since the store records what is missing on disk. A Scrubber
// rereads the stored copies now and then and turns a bad one into a
// missing one, for the Repairer.
package repair

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/handler"
	"github.com/pipestream/pipestream/internal/ratelimit"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
)

// Store is what a Repairer heals; *statemachine.FileStore is one.
type Store interface {
	// MissingEntries lists the newest entry of each name with no copy here.
	MissingEntries() []statemachine.StoredFile
	// Repair checks src against sf and links it; see FileStore.Repair.
	Repair(ctx context.Context, sf statemachine.StoredFile, src io.Reader, wantSHA256 [32]byte, limit statemachine.Pacer) error
}

// Source opens committed files on other peers; *datastream.Client is one.
type Source interface {
	Open(ctx context.Context, name string, opts ...datastream.ReadOption) (*datastream.Reader, error)
}

// Config configures a Repairer. Zero fields take the defaults.
type Config struct {
	// Concurrency bounds the repairs in progress at once. Default 2.
	Concurrency int
	// BytesPerSecond bounds what all repairs read together; 0 takes the
	// default, 64 MiB/s, and a negative value does not limit.
	BytesPerSecond int64
	// Interval is how often the store is looked at for missing copies
	// when nothing kicks the Repairer. Default one second.
	Interval time.Duration
	// MaxBackoff bounds the wait before an entry whose repair failed is
	// tried again; the wait doubles from Interval. Default one minute.
	MaxBackoff time.Duration
	// Events, if set, is told when each repair starts and finishes, as
	// StreamRepairStarted and StreamRepairFinished events of the entry's
	// stream key.
	Events handler.Events
}

// Defaults for Config's zero fields.
const (
	DefaultConcurrency    = 2
	DefaultBytesPerSecond = 64 << 20
	DefaultInterval       = time.Second
	DefaultMaxBackoff     = time.Minute
)

func (c Config) withDefaults() Config {
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.BytesPerSecond == 0 {
		c.BytesPerSecond = DefaultBytesPerSecond
	}
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	return c
}

// Stats counts what a Repairer did.
type Stats struct {
	Repaired   int64 // copies fetched and linked
	Failed     int64 // attempts that failed (each is retried)
	InProgress int   // repairs running now
	Waiting    int   // missing copies waiting for their next attempt
}

// Repairer heals one store from the other peers of its group.
type Repairer struct {
	cfg    Config
	store  Store
	source Source
	peers  func() []string // the peers to fetch from: every one but this
	limit  *ratelimit.Limiter
	log    *slog.Logger

	kick chan struct{}

	repaired, failed atomic.Int64

	mu      sync.Mutex
	running map[statemachine.StreamKey]bool
	backoff map[statemachine.StreamKey]retry
}

// retry is when a failed repair is tried next, and how long the wait
// after that is.
type retry struct {
	at   time.Time
	wait time.Duration
}

// New returns a Repairer of store that fetches from the peers that peers
// returns (this one excluded) through source. Run starts it.
func New(cfg Config, store Store, source Source, peers func() []string, log *slog.Logger) *Repairer {
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.Default()
	}
	return &Repairer{
		cfg: cfg, store: store, source: source, peers: peers,
		limit: ratelimit.New(cfg.BytesPerSecond), log: log,
		kick:    make(chan struct{}, 1),
		running: make(map[statemachine.StreamKey]bool),
		backoff: make(map[statemachine.StreamKey]retry),
	}
}

// Kick makes the Repairer look for missing copies now rather than at its
// next interval.
func (r *Repairer) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Stats returns what the Repairer has done so far.
func (r *Repairer) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Stats{Repaired: r.repaired.Load(), Failed: r.failed.Load(), InProgress: len(r.running), Waiting: len(r.backoff)}
}

// Run repairs until ctx is done, then waits for the repairs in progress
// to stop.
func (r *Repairer) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		r.start(ctx, &wg)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.kick:
		}
	}
}

// start begins a repair of each missing copy that is not running or
// waiting, within the concurrency bound.
func (r *Repairer) start(ctx context.Context, wg *sync.WaitGroup) {
	missing := r.store.MissingEntries()
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	keep := make(map[statemachine.StreamKey]bool, len(missing))
	for _, sf := range missing {
		keep[sf.Key] = true
	}
	for k := range r.backoff {
		if !keep[k] { // linked, repaired or replaced meanwhile
			delete(r.backoff, k)
		}
	}
	for _, sf := range missing {
		if len(r.running) >= r.cfg.Concurrency {
			return
		}
		if r.running[sf.Key] || now.Before(r.backoff[sf.Key].at) {
			continue
		}
		r.running[sf.Key] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev, begin := r.cfg.Events, time.Now()
			if ev != nil {
				ev.Stream(handler.StreamEvent{Kind: handler.StreamRepairStarted, Key: sf.Key, Bytes: sf.Length})
			}
			err := r.repair(ctx, sf)
			if ev != nil {
				e := handler.StreamEvent{Kind: handler.StreamRepairFinished, Key: sf.Key, Bytes: sf.Length, Duration: time.Since(begin)}
				if err != nil && !errors.Is(err, statemachine.ErrNotMissing) {
					e.Code = pb.ErrorCode_INTERNAL
					var pe *pb.Error
					if errors.As(err, &pe) {
						e.Code = pe.Code
					}
				}
				ev.Stream(e)
			}
			r.done(sf, err, ctx.Err() != nil)
		}()
	}
}

func (r *Repairer) done(sf statemachine.StoredFile, err error, stopping bool) {
	r.mu.Lock()
	delete(r.running, sf.Key)
	switch {
	case err == nil || errors.Is(err, statemachine.ErrNotMissing):
		delete(r.backoff, sf.Key)
	case stopping:
	default:
		b := r.backoff[sf.Key]
		b.wait = min(max(2*b.wait, r.cfg.Interval), r.cfg.MaxBackoff)
		b.at = time.Now().Add(b.wait)
		r.backoff[sf.Key] = b
	}
	r.mu.Unlock()
	switch {
	case err == nil:
		r.repaired.Add(1)
		r.log.Info("repair: copy repaired", "name", sf.Name, "index", sf.Index)
		r.Kick() // a slot is free
	case errors.Is(err, statemachine.ErrNotMissing), stopping:
	default:
		r.failed.Add(1)
		r.log.Warn("repair: failed; will retry", "name", sf.Name, "index", sf.Index, "err", err)
	}
}

// repair fetches sf from the first peer that holds its very entry.
func (r *Repairer) repair(ctx context.Context, sf statemachine.StoredFile) error {
	peers := r.peers()
	if len(peers) == 0 {
		return errors.New("repair: no other peer to fetch from")
	}
	off := rand.IntN(len(peers))
	var errs []error
	for i := range peers {
		id := peers[(off+i)%len(peers)]
		err := r.fetch(ctx, sf, id)
		if err == nil || errors.Is(err, statemachine.ErrNotMissing) || ctx.Err() != nil {
			return err
		}
		errs = append(errs, fmt.Errorf("from %s: %w", id, err))
	}
	return errors.Join(errs...)
}

// errOtherVersion: a peer holds another entry of the name than the one to
// repair (it is behind, or this peer is).
var errOtherVersion = errors.New("repair: peer holds another version")

func (r *Repairer) fetch(ctx context.Context, sf statemachine.StoredFile, id string) error {
	rd, err := r.source.Open(ctx, sf.Name, datastream.WithReadPeer(id))
	if err != nil {
		return err
	}
	defer rd.Close()
	info := rd.Info()
	if info.Index != sf.Index {
		return fmt.Errorf("%w: index %d, want %d", errOtherVersion, info.Index, sf.Index)
	}
	var want [32]byte
	if copy(want[:], info.SHA256) != len(want) && !sf.Checksummed {
		// Nothing to check the bytes against but their length.
		return fmt.Errorf("repair: %s serves %s without a SHA-256, and its entry has no checksum", id, sf.Name)
	}
	return r.store.Repair(ctx, sf, rd, want, r.limit)
}

// Scrubbed is a store a Scrubber can reread; *statemachine.FileStore is one.
type Scrubbed interface {
	Scrub(ctx context.Context, limit statemachine.Pacer) (statemachine.ScrubReport, error)
}

// ScrubConfig configures a Scrubber. Zero fields take the defaults.
type ScrubConfig struct {
	// Interval is the time between the starts of two scrubs, the first
	// one Interval after start. Default 24 hours; negative scrubs only
	// when kicked.
	Interval time.Duration
	// BytesPerSecond paces a scrub's reads; 0 takes the default, 32 MiB/s,
	// and a negative value does not limit.
	BytesPerSecond int64
}

// Defaults for ScrubConfig's zero fields.
const (
	DefaultScrubInterval       = 24 * time.Hour
	DefaultScrubBytesPerSecond = 32 << 20
)

// Scrubber rereads a store's copies on a schedule, and when kicked.
type Scrubber struct {
	cfg   ScrubConfig
	store Scrubbed
	found func()
	limit *ratelimit.Limiter
	log   *slog.Logger
	kick  chan struct{}
	runs  atomic.Int64
}

// NewScrubber returns a Scrubber of store that calls found after a scrub
// that recorded bad copies missing (a Repairer's Kick). Run starts it.
func NewScrubber(cfg ScrubConfig, store Scrubbed, found func(), log *slog.Logger) *Scrubber {
	if cfg.Interval == 0 {
		cfg.Interval = DefaultScrubInterval
	}
	if cfg.BytesPerSecond == 0 {
		cfg.BytesPerSecond = DefaultScrubBytesPerSecond
	}
	if log == nil {
		log = slog.Default()
	}
	return &Scrubber{cfg: cfg, store: store, found: found, limit: ratelimit.New(cfg.BytesPerSecond), log: log,
		kick: make(chan struct{}, 1)}
}

// Kick starts a scrub now, or right after the one in progress.
func (s *Scrubber) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Runs returns how many scrubs have finished.
func (s *Scrubber) Runs() int64 { return s.runs.Load() }

// Run scrubs on the schedule and when kicked, until ctx is done.
func (s *Scrubber) Run(ctx context.Context) {
	var tick <-chan time.Time
	if s.cfg.Interval > 0 {
		t := time.NewTicker(s.cfg.Interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
		case <-s.kick:
		}
		rep, err := s.store.Scrub(ctx, s.limit)
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			s.log.Warn("repair: scrub stopped", "checked", rep.Checked, "err", err)
		case len(rep.Bad) == 0:
			s.log.Info("repair: scrub found every copy intact", "checked", rep.Checked, "bytes", rep.Bytes)
		}
		if len(rep.Bad) > 0 {
			s.log.Warn("repair: scrub found bad copies; repairing", "bad", len(rep.Bad), "checked", rep.Checked)
			s.found()
		}
		s.runs.Add(1)
	}
}
