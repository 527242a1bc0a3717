package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/pipestream/pipestream/transport"
)

// flagSet is a subcommand's flags and its help text.
type flagSet struct {
	*flag.FlagSet
	env  *env
	help string // shown above the flags by --help
}

// newFlagSet returns the flags of subcommand name. help starts with the
// usage line(s), then a blank line and what the command does.
func newFlagSet(e *env, name, help string) *flagSet {
	fs := flag.NewFlagSet("pipestream "+name, flag.ContinueOnError)
	// Parse reports errors through its return value; parse prints them,
	// and --help, itself.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &flagSet{FlagSet: fs, env: e, help: help}
}

// parse parses args, flags and positional arguments in any order (flag
// stops at the first positional one; "put FILE --name x" should work),
// and returns the positional ones. Everything after "--" is positional.
// --help prints the help to stdout and returns flag.ErrHelp.
func (fs *flagSet) parse(args []string) ([]string, error) {
	var pos []string
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			fs.printHelp(fs.env.stdout)
			return nil, err
		}
		if err != nil {
			return nil, usageError("%v", err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// parseNone is parse for a command that takes no positional arguments:
// any is a usage error.
func (fs *flagSet) parseNone(args []string) error {
	pos, err := fs.parse(args)
	if err == nil && len(pos) > 0 {
		err = usageError("unexpected argument %q", pos[0])
	}
	return err
}

func (fs *flagSet) printHelp(w io.Writer) {
	fmt.Fprintf(w, "%s\nFlags:\n", strings.TrimSpace(fs.help)+"\n")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// logFlag adds --log-level with the given default and returns a function
// that builds the logger once the flags are parsed, and a function to call
// as the peers start shutting down (see shutdownNoise).
func (fs *flagSet) logFlag(def slog.Level) func() (*slog.Logger, func()) {
	lv := new(slog.LevelVar)
	lv.Set(def)
	fs.TextVar(lv, "log-level", lv, "log `level`: debug, info, warn or error (logs go to stderr)")
	return func() (*slog.Logger, func()) {
		return newLogger(slog.NewTextHandler(fs.env.stderr, &slog.HandlerOptions{Level: lv}))
	}
}

// transportFlag adds --transport.
func (fs *flagSet) transportFlag(usage string) *transportValue {
	v := &transportValue{kind: transport.Gnet}
	fs.Var(v, "transport", usage)
	return v
}

// transportValue is a transport.Kind as a flag: gnet or netconn.
type transportValue struct {
	kind transport.Kind
	set  bool
}

func (v *transportValue) String() string {
	if v == nil {
		return transport.Gnet.String()
	}
	return v.kind.String()
}

func (v *transportValue) Set(s string) error {
	k, err := transport.ParseKind(s)
	if err != nil {
		return err
	}
	v.kind, v.set = k, true
	return nil
}

// byteSize is a size flag: a number of bytes with an optional binary unit,
// 8MiB, 256MiB, 1GiB, 64KiB or 4096.
type byteSize int64

var units = []struct {
	suffix string
	shift  uint
}{
	{"GiB", 30}, {"MiB", 20}, {"KiB", 10},
	{"G", 30}, {"M", 20}, {"K", 10},
	{"B", 0},
}

func (b *byteSize) String() string { return formatBytes(int64(*b)) }

func (b *byteSize) Set(s string) error {
	num, shift := strings.TrimSpace(s), uint(0)
	for _, u := range units {
		if strings.HasSuffix(strings.ToUpper(num), strings.ToUpper(u.suffix)) {
			num, shift = strings.TrimSpace(num[:len(num)-len(u.suffix)]), u.shift
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return fmt.Errorf("%q is not a size such as 4096, 64KiB, 8MiB or 1GiB", s)
	}
	*b = byteSize(n << shift)
	return nil
}

// formatBytes prints n in the largest binary unit that keeps it at least
// one, with up to one decimal.
func formatBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return trimZero(float64(n)/(1<<30)) + " GiB"
	case n >= 1<<20:
		return trimZero(float64(n)/(1<<20)) + " MiB"
	case n >= 1<<10:
		return trimZero(float64(n)/(1<<10)) + " KiB"
	}
	return strconv.FormatInt(n, 10) + " B"
}

func trimZero(f float64) string {
	return strings.TrimSuffix(strconv.FormatFloat(f, 'f', 1, 64), ".0")
}

// durationFlag is a duration flag that, unlike flag.Duration, says what
// is wrong with a value: a bare number ("30", for which ParseDuration
// wants a unit) or a negative duration. 0 needs no unit.
type durationFlag time.Duration

func (d *durationFlag) String() string { return time.Duration(*d).String() }

func (d *durationFlag) Set(s string) error {
	v, err := time.ParseDuration(s)
	switch {
	case err != nil && s != "" && strings.Trim(s, "0123456789.") == "":
		return fmt.Errorf("no unit: write \"%ss\", \"%sms\" or another duration", s, s)
	case err != nil:
		return errors.New("not a duration such as 500ms, 30s or 5m")
	case v < 0:
		return errors.New("negative")
	}
	*d = durationFlag(v)
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, " ") }

func (l *stringList) Set(s string) error {
	*l = append(*l, s)
	return nil
}
