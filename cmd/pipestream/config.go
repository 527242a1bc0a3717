package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
)

const configHelp = `
Usage: pipestream config [flags] > group.toml

Prints a group file for --peers peers on --host: peer pN's stream port is
--port+N-1, its Raft port --port+100+N-1 and its commit port
--port+200+N-1; each keeps its data in --data-dir/pN, relative to the
file. Every peer of a group reads the same file; see docs/operations.md
for every key.
`

func runConfig(ctx context.Context, args []string, e *env) int {
	fs := newFlagSet(e, "config", configHelp)
	n := fs.Int("peers", 3, "`number` of peers")
	host := fs.String("host", "127.0.0.1", "`host` every peer listens on; the others dial it, so not a wildcard address")
	port := fs.Int("port", 7001, "first stream `port`")
	dataDir := fs.String("data-dir", "data", "`directory` for the peers' data, relative to the file (empty: in memory)")
	err := fs.parseNone(args)
	*host = strings.TrimSuffix(strings.TrimPrefix(*host, "["), "]") // [::1] is ::1
	ip, ipErr := netip.ParseAddr(*host)
	switch {
	case err != nil:
	case *n < 1 || *n > 100:
		err = usageError("--peers must be between 1 and 100")
	case *port < 1 || *port > 65535:
		err = usageError("--port %d is not a port from 1 to 65535", *port)
	case *port+200+*n-1 > 65535:
		err = usageError("--port %d leaves no room for %d peers' ports up to --port+%d", *port, *n, 200+*n-1)
	case *host == "" || ipErr == nil && ip.IsUnspecified():
		err = usageError("--host must be an address the other peers can dial, not %q", *host)
	}
	if err != nil {
		return e.exit(ctx, "config", err)
	}
	fmt.Fprint(e.stdout, sampleConfig(*n, *host, *port, *dataDir))
	return exitOK
}
