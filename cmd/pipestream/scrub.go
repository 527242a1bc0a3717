package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

const scrubHelp = `
Usage: pipestream scrub (--config group.toml --id ID | --data-dir DIR)

Rereads every copy peer ID's file store holds, in its data directory on
this machine, and checks each against its committed.log record: its
length and SHA-256. Prints each bad copy (changed, cut short or gone),
then a summary line; exits 1 if any copy is bad, 0 if all are intact.
Entries the store records as missing hold no copy and are only counted.

scrub only reads and only reports: it changes nothing, so it is safe
while the peer runs (a copy a put replaces while scrub reads it may show
as bad; run it again). A running peer scrubs its own store on a schedule
(peer.Config.Scrub, daily by default), records the bad copies it finds as
missing and fetches them again from the other peers; send its serve
process SIGUSR1 to have it do so now (kill -USR1 PID).
`

func runScrub(ctx context.Context, args []string, e *env) int {
	fs := newFlagSet(e, "scrub", scrubHelp)
	loc := localFlags(fs)
	if err := fs.parseNone(args); err != nil {
		return e.exit(ctx, "scrub", err)
	}
	return e.exit(ctx, "scrub", scrub(ctx, e, loc))
}

func scrub(ctx context.Context, e *env, loc *storeLocation) error {
	s, err := loc.open()
	if err != nil {
		return err
	}
	var copies, bad, missing int
	var bytes uint64
	for _, sf := range s.list() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if sf.Missing {
			missing++
			continue
		}
		copies++
		bytes += sf.Length
		// copy checks what it reads against the record; scrub keeps
		// nothing of it.
		if err := s.copy(io.Discard, sf); err != nil {
			bad++
			why := strings.TrimPrefix(err.Error(), sf.Name+": ")
			if errors.Is(err, fs.ErrNotExist) {
				why = fmt.Sprintf("no file on disk; the log records %d bytes at log index %d", sf.Length, sf.Index)
			}
			fmt.Fprintf(e.stdout, "bad %s: %s\n", displayName(sf.Name), why)
		}
	}
	fmt.Fprintf(e.stdout, "scrubbed %d copies (%s) in %s: %d bad, %d intact; %d entries recorded missing\n",
		copies, formatBytes(int64(bytes)), s.dir, bad, copies-bad, missing)
	if bad > 0 {
		return fmt.Errorf("%d of %d copies bad", bad, copies)
	}
	return nil
}
