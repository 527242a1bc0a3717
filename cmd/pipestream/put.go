package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/pipestream/pipestream/datastream"
	"github.com/pipestream/pipestream/peer"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

const putHelp = `
Usage: pipestream put FILE (--config group.toml | --peers ID=ADDR,...) [flags]

Streams FILE to a running group and waits until it is committed: the file
goes to the primary (--primary, by default the first peer listed that accepts the connection), which
writes it and forwards it along the chain of the other peers in the order
listed; closing the stream commits one Raft entry naming it. Each peer's
file store then holds it as --name (default: FILE's base name). If the
primary fails on the way, the stream goes on through the next peer
(--failover).

Prints the log index and term of the commit and the throughput. Exits
non-zero, with the reason, if the stream fails or is not committed.
`

func runPut(ctx context.Context, args []string, e *env) int {
	fs := newFlagSet(e, "put", putHelp)
	config := fs.String("config", "", "group `file` to learn the peers' stream addresses from")
	peers := fs.String("peers", "", "the peers as `ID=HOST:PORT,...` (stream addresses), instead of --config")
	name := fs.String("name", "", "`name` to store the file under; subdirectories allowed (default: FILE's base name)")
	primary := fs.String("primary", "", "`id` of the peer to send the stream to (default: the first peer that answers)")
	quiet := fs.Bool("quiet", false, "draw no progress bar (none is drawn unless stderr is a terminal)")
	failover := fs.Bool("failover", true, "if the primary fails, go on through another peer from the last byte every peer acknowledged (off: fail; netconn then sends the file with sendfile(2))")
	kind := fs.transportFlag("DataStream `transport`: gnet or netconn (default: the group file's, else gnet)")
	logger := fs.logFlag(slog.LevelWarn)
	pos, err := fs.parse(args)
	if err != nil {
		return e.exit(ctx, "put", err)
	}
	p := &put{env: e, name: *name, primary: *primary, bar: !*quiet && isTerminal(e.stderr)}
	if err := p.check(pos, *config, *peers); err != nil {
		return e.exit(ctx, "put", err)
	}
	if kind.set {
		p.kind = kind.kind
	}
	if p.group != nil {
		if p.opts, err = clientOptions(*p.group, kind); err != nil {
			return e.exit(ctx, "put", err)
		}
	}
	p.failover = *failover
	log, _ := logger()
	return e.exit(ctx, "put", p.run(ctx, log))
}

// put is one run of the put command.
type put struct {
	*env
	file, name, primary string
	peers               []peer.Member
	kind                transport.Kind     // the group file's, or --transport
	group               *peer.ClientConfig // with --config
	bar                 bool
	opts                []datastream.Option // from the group file: transport and TLS
	failover            bool                // datastream.WithFailover
}

// check validates the arguments and fills in the defaults.
func (p *put) check(pos []string, config, peers string) error {
	switch {
	case len(pos) == 0:
		return usageError("which file? pipestream put FILE")
	case len(pos) > 1:
		return usageError("one file at a time; got %d arguments", len(pos))
	case config == "" && peers == "":
		return usageError("give the group with --config FILE or --peers ID=HOST:PORT,...")
	case config != "" && peers != "":
		return usageError("--config and --peers do not go together")
	}
	p.file = pos[0]
	what, instead := "--name "+strconv.Quote(p.name), "choose another"
	if p.name == "" {
		p.name = filepath.Base(p.file)
		what, instead = "the file's name "+strconv.Quote(p.name), "store it under another with --name"
	}
	// A name must be one line of text, or ls could not show it as one.
	// The peers do not check that (see statemachine.CleanName).
	if !utf8.ValidString(p.name) {
		return usageError("%s is not UTF-8, which committed.log cannot record; %s", what, instead)
	}
	if strings.ContainsFunc(p.name, unicode.IsControl) {
		return usageError("%s has a control character, which would break the lines ls prints; %s", what, instead)
	}
	// The peers check the rest; checking it here fails before any
	// connection, with the same words.
	clean, err := statemachine.CleanName(p.name)
	if err != nil {
		return usageError("--name: %v", err)
	}
	p.name = filepath.ToSlash(clean)
	if config != "" {
		cfg, err := loadClientGroup(config)
		if err != nil {
			return err
		}
		p.peers, p.kind, p.group = cfg.Peers, cfg.Transport, &cfg
	} else if p.peers, err = parsePeers(peers); err != nil {
		return usageError("%v", err)
	}
	if p.primary != "" && !slices.ContainsFunc(p.peers, func(x peer.Member) bool { return x.ID == p.primary }) {
		return usageError("--primary %q is not a peer of the group", p.primary)
	}
	return nil
}

func (p *put) run(ctx context.Context, log *slog.Logger) error {
	f, err := os.Open(p.file)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", p.file)
	}
	opts := p.opts
	if opts == nil {
		opts = []datastream.Option{datastream.WithTransport(p.kind)}
	}
	c, err := datastream.NewClient(p.peers, append(opts, datastream.WithLogger(log), datastream.WithFailover(p.failover))...)
	if err != nil {
		return err
	}
	defer c.Close()
	bar := newProgress(p.stderr, fi.Size(), "put "+p.name, p.bar && fi.Size() > 0)
	res, err := putFile(ctx, c, f, fi.Size(), p.name, p.primary, bar)
	bar.finish(err == nil)
	if err != nil {
		return tlsHint(p.group, hint(err))
	}
	fmt.Fprintln(p.stdout, res.summary(p.name))
	return nil
}
