package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode/utf8"
)

const lsHelp = `
Usage: pipestream ls --config group.toml [--id ID] [--local]
       pipestream ls --data-dir DIR

Lists the files a peer's file store holds: name, size, the log index and
term of the entry that wrote it, its status and the SHA-256 the peer
computed while writing it. Status "missing" means the entry committed but
this peer holds no copy of it (it was down, or its copy failed, and it has
not repaired it yet); get the file from another peer. A name with a
character that is not printable is shown quoted, as Go quotes strings, so
that every file is one line.

With --config it asks peer ID over the network, or without --id the first
peer of the group file that answers, and says on stderr which one did.
With --local (and --config, --id), or --data-dir, it reads the peer's data
directory on this machine instead, and only reads it: that works whether
the peer runs or not.
`

func runLs(ctx context.Context, args []string, e *env) int {
	fs := newFlagSet(e, "ls", lsHelp)
	loc := storeFlags(fs)
	err := fs.parseNone(args)
	if err == nil {
		err = loc.check()
	}
	if err != nil {
		return e.exit(ctx, "ls", err)
	}
	if loc.network() {
		return e.exit(ctx, "ls", lsNetwork(ctx, e, loc))
	}
	return e.exit(ctx, "ls", ls(e, loc))
}

// catalogEntry is one line of ls, from a local store or a peer's catalog.
type catalogEntry struct {
	name        string
	length      uint64
	index, term uint64
	missing     bool
	sha256      []byte
}

func ls(e *env, loc *storeLocation) error {
	s, err := loc.open()
	if err != nil {
		return err
	}
	files := s.list()
	entries := make([]catalogEntry, len(files))
	for i, f := range files {
		entries[i] = catalogEntry{f.Name, f.Length, f.Index, f.Term, f.Missing, f.SHA256[:]}
	}
	return printCatalog(e, entries)
}

// lsNetwork lists peer --id's catalog, or the first peer's that answers.
func lsNetwork(ctx context.Context, e *env, loc *storeLocation) error {
	c, peers, err := loc.client()
	if err != nil {
		return err
	}
	defer c.Close()
	ids := []string{loc.id}
	if loc.id == "" {
		ids = ids[:0]
		for _, p := range peers {
			ids = append(ids, p.ID)
		}
	}
	var errs []error
	for _, id := range ids {
		files, err := c.List(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(e.stderr, "pipestream ls: catalog of peer %s\n", id)
		entries := make([]catalogEntry, len(files))
		for i, f := range files {
			entries[i] = catalogEntry{f.Name, f.Length, f.Index, f.Term, f.Missing, f.SHA256}
		}
		return printCatalog(e, entries)
	}
	return tlsHint(loc.group, hint(errors.Join(errs...)))
}

func printCatalog(e *env, entries []catalogEntry) error {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tBYTES\tINDEX\tTERM\tSTATUS\tSHA256")
	for _, f := range entries {
		status, sum := "ok", hex.EncodeToString(f.sha256)
		if f.missing {
			status, sum = "missing", "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\n", displayName(f.name), f.length, f.index, f.term, status, sum)
	}
	return tw.Flush()
}

// displayName returns name as ls shows it: as it is, or quoted if it has
// anything a terminal would not show as one line of text (a newline, a
// tab, other control characters, bytes that are not UTF-8), or starts
// with a quote and so would read as quoted.
func displayName(name string) string {
	if !utf8.ValidString(name) || strings.HasPrefix(name, `"`) ||
		strings.ContainsFunc(name, func(r rune) bool { return !strconv.IsPrint(r) }) {
		return strconv.Quote(name)
	}
	return name
}
