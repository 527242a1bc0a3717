// Command pipestream runs pipestream peers and streams files through them.
//
//	pipestream demo                                   a 3-peer group in this process, one file through it
//	pipestream config > group.toml                    a sample group file: 3 peers on 127.0.0.1
//	pipestream serve --config group.toml --id p1      one peer, until interrupted
//	pipestream put --config group.toml FILE           stream FILE to the group and commit it
//	pipestream ls --config group.toml --id p2         what p2's file store holds
//	pipestream get --config group.toml NAME           one stored file from any peer, checked against its SHA-256
//	pipestream scrub --config group.toml --id p2      reread p2's local copies and report the bad ones
//	pipestream status --config group.toml             the leader, the members and every peer's state; exit 1 if unhealthy
//	pipestream serve --config group.toml --id p4 --join   a new peer, waiting to be added
//	pipestream join --config group.toml --id p4       add it to the running group
//	pipestream leave --config group.toml --id p3      remove a peer from the group
//	pipestream transfer-leader --config group.toml    hand leadership to another voter
//
// Every subcommand takes --help. Logs go to stderr through log/slog, at
// the level --log-level sets; results go to stdout.
//
// ls and get ask the peers over the network; with --local or --data-dir
// they read a peer's data directory on this machine instead, as scrub
// does. Those only read it, so they are safe while the peer runs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Exit codes.
const (
	exitOK          = 0
	exitFailed      = 1   // the command ran and failed
	exitUsage       = 2   // bad flags or arguments, as package flag does
	exitInterrupted = 130 // SIGINT, as a shell reports it
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal the default action comes back, so that a
	// second Ctrl-C kills a shutdown that hangs.
	context.AfterFunc(ctx, stop)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// command is one subcommand. run gets the arguments after the
// subcommand's name and returns the exit code.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, env *env) int
}

var commands = []command{
	{"demo", "start a 3-peer group in this process and stream a generated file through it", runDemo},
	{"serve", "run one peer of a group until interrupted", runServe},
	{"put", "stream a file to a running group and commit it", runPut},
	{"ls", "list the files a peer's store holds", runLs},
	{"get", "copy a committed file out of the group, checked against its SHA-256", runGet},
	{"scrub", "check a peer's local copies against their records (reports only)", runScrub},
	{"status", "show the leader, the members and each peer's progress, copies and disk; exit 1 if unhealthy", runStatus},
	{"join", "add a new peer, started with serve --join, to the running group", runJoin},
	{"leave", "remove a peer from the group", runLeave},
	{"transfer-leader", "hand Raft leadership to another voter", runTransfer},
	{"config", "print a sample group file", runConfig},
}

// run is the whole program, minus the process: it parses args (without
// the program name), runs the subcommand and returns the exit code. ctx
// is cancelled when the process is asked to stop.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			// "pipestream help put" is "pipestream put --help".
			return run(ctx, []string{args[1], "--help"}, stdout, stderr)
		}
		usage(stdout)
		return exitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(ctx, args[1:], e)
		}
	}
	fmt.Fprintf(stderr, "pipestream: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprint(w, `pipestream streams files to a group of peers and commits each with one Raft entry.

Usage:
  pipestream <command> [flags] [arguments]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-15s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Run "pipestream <command> --help" for a command's flags.

Start here:
  go run ./cmd/pipestream demo
`)
}

// env is where a subcommand writes.
type env struct {
	stdout, stderr io.Writer
}

// errUsage marks errors in how the command was called: exit code 2.
var errUsage = errors.New("usage")

// usageError returns an error that exits with exitUsage.
func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}

// exit reports err, if any, as the failure of command name and returns
// the exit code.
func (e *env) exit(ctx context.Context, name string, err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errUsage):
		fmt.Fprintf(e.stderr, "pipestream %s: %s\nRun \"pipestream %s --help\" for usage.\n",
			name, strings.TrimPrefix(message(err), errUsage.Error()+": "), name)
		return exitUsage
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		fmt.Fprintf(e.stderr, "pipestream %s: interrupted\n", name)
		return exitInterrupted
	}
	fmt.Fprintf(e.stderr, "pipestream %s: %s\n", name, message(err))
	return exitFailed
}

// message returns err's text without a leading "pipestream: ", which the
// errors a peer sends back begin with (see pipestreamv1.Error): exit
// prefixes the command already.
func message(err error) string {
	return strings.TrimPrefix(err.Error(), "pipestream: ")
}
