package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/internal/leaktest"
	"github.com/pipestream/pipestream/peer"
)

func TestMain(m *testing.M) {
	if config := os.Getenv(labClientEnv); config != "" {
		os.Exit(labClientMain(config))
	}
	leaktest.VerifyTestMain(m)
}

// testTimeout bounds every wait of a test; a healthy run takes far less.
const testTimeout = 60 * time.Second

// result is one call of run.
type result struct {
	code           int
	stdout, stderr string
}

// runCmd calls run with args and returns what it printed.
func runCmd(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, &stdout, &stderr)
	return result{code, stdout.String(), stderr.String()}
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout\n%s--- stderr\n%s", r.code, r.stdout, r.stderr)
}

// want fails the test unless r exited with code and printed every
// pattern (regular expressions) on stdout.
func (r result) want(t *testing.T, code int, stdout ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit %d, got:\n%v", code, r)
	}
	for _, p := range stdout {
		if !regexp.MustCompile(p).MatchString(r.stdout) {
			t.Errorf("stdout lacks %q:\n%v", p, r)
		}
	}
}

// The demo's own code path, with a smaller file: it streams through three
// peers, verifies the SHA-256 on each, shuts down and removes its data.
func TestDemo(t *testing.T) {
	dir := t.TempDir()
	r := runCmd(t, "demo", "--size", "8MiB", "--dir", dir, "--quiet")
	r.want(t, exitOK,
		`(?m)^generated .*demo\.bin: 8 MiB of random bytes in .*, sha256 [0-9a-f]{64}$`,
		`(?m)^leader: p[123], elected in `,
		`(?m)^committed demo\.bin: 8 MiB in \S+ \([0-9.]+ [KMG]?i?B/s\), log index \d+, term \d+, primary p1$`,
		`(?m)^p1: demo\.bin holds 8388608 bytes, sha256 matches, log index \d+$`,
		`(?m)^p2: demo\.bin holds 8388608 bytes, sha256 matches, log index \d+$`,
		`(?m)^p3: demo\.bin holds 8388608 bytes, sha256 matches, log index \d+$`,
		`(?m)^throughput: `,
		`(?m)^shut down 3 peers in `,
		`(?m)^removed `,
	)
	if r.stderr != "" {
		t.Errorf("the demo logged at its default level:\n%s", r.stderr)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("the demo left %v in its --dir", ents)
	}
}

// With --keep the demo's directory stays, with a group file that ls and
// get read the peers' stores through.
func TestDemoKeep(t *testing.T) {
	dir := t.TempDir()
	r := runCmd(t, "demo", "--size", "100KiB", "--dir", dir, "--keep", "--transport", "netconn")
	r.want(t, exitOK, `(?m)^kept `)
	sum := regexp.MustCompile(`sha256 ([0-9a-f]{64})`).FindStringSubmatch(r.stdout)
	kept := regexp.MustCompile(`(?m)^kept (.*)$`).FindStringSubmatch(r.stdout)
	if sum == nil || kept == nil {
		t.Fatalf("no sha256 or kept directory in:\n%v", r)
	}
	config := filepath.Join(kept[1], "group.toml")
	for _, id := range demoPeers {
		ls := runCmd(t, "ls", "--config", config, "--id", id, "--local")
		ls.want(t, exitOK, `(?m)^NAME +BYTES +INDEX +TERM +STATUS +SHA256$`, `(?m)^demo\.bin +102400 +\d+ +\d+ +ok +`+sum[1]+`$`)
		out := filepath.Join(t.TempDir(), "out")
		runCmd(t, "get", "demo.bin", "--config", config, "--id", id, "--local", "-o", out).want(t, exitOK)
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if got := sha256.Sum256(data); hex.EncodeToString(got[:]) != sum[1] {
			t.Errorf("%s: get gave %d bytes with sha256 %x, the demo streamed %s", id, len(data), got, sum[1])
		}
	}
	generated, err := os.ReadFile(filepath.Join(kept[1], demoName))
	if err != nil {
		t.Fatal(err)
	}
	if got := sha256.Sum256(generated); hex.EncodeToString(got[:]) != sum[1] {
		t.Errorf("the kept %s has sha256 %x; the demo printed %s", demoName, got, sum[1])
	}
}

// get checks what it copies against the store's record: a file changed
// behind the store's back is an error, and -o leaves no partial file.
func TestGetDetectsCorruption(t *testing.T) {
	dir := t.TempDir()
	r := runCmd(t, "demo", "--size", "4KiB", "--dir", dir, "--keep", "--quiet")
	r.want(t, exitOK)
	kept := regexp.MustCompile(`(?m)^kept (.*)$`).FindStringSubmatch(r.stdout)[1]
	stored := filepath.Join(kept, "data", "p3", "files", "data", demoName)
	data, err := os.ReadFile(stored)
	if err != nil {
		t.Fatal(err)
	}
	data[100] ^= 1
	if err := os.WriteFile(stored, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	g := runCmd(t, "get", demoName, "--data-dir", filepath.Join(kept, "data", "p3"), "-o", out)
	g.want(t, exitFailed)
	if !strings.Contains(g.stderr, "the store recorded 4096 bytes with sha256") {
		t.Errorf("get's error does not say what the store recorded:\n%v", g)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("get left %s behind: %v", out, err)
	}
	// The other peers' copies are intact.
	runCmd(t, "get", demoName, "--data-dir", filepath.Join(kept, "data", "p2"), "-o", out).want(t, exitOK)
}

// Bad invocations fail with a clear message and the exit code of their
// kind, before anything starts.
func TestUsageErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no command", nil, exitUsage, "Usage:"},
		{"unknown command", []string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{"size not a size", []string{"demo", "--size", "banana"}, exitUsage, `invalid value "banana" for flag -size`},
		{"size zero", []string{"demo", "--size", "0"}, exitUsage, "--size must be positive"},
		{"unknown flag", []string{"demo", "--sise", "1MiB"}, exitUsage, "flag provided but not defined: -sise"},
		{"demo argument", []string{"demo", "extra"}, exitUsage, `unexpected argument "extra"`},
		{"bad log level", []string{"demo", "--log-level", "loud"}, exitUsage, `invalid value "loud" for flag -log-level`},
		{"bad transport", []string{"demo", "--transport", "carrier-pigeon"}, exitUsage, "want gnet or netconn"},
		{"demo dir missing", []string{"demo", "--size", "4KiB", "--dir", missing}, exitFailed, "pipestream demo: "},
		{"serve without id", []string{"serve", "--config", "group.toml"}, exitUsage, "--id is required"},
		{"serve without group", []string{"serve", "--id", "p1"}, exitUsage, "--config FILE or with --member"},
		{"serve bad member", []string{"serve", "--id", "p1", "--member", "p1=127.0.0.1:1"}, exitUsage, "is not id=STREAM_ADDR,RAFT_ADDR,COMMIT_ADDR"},
		{"serve missing config", []string{"serve", "--id", "p1", "--config", missing}, exitFailed, "peer: invalid configuration"},
		{"put without file", []string{"put", "--peers", "p1=127.0.0.1:1"}, exitUsage, "which file?"},
		{"put two files", []string{"put", "a", "b", "--peers", "p1=127.0.0.1:1"}, exitUsage, "one file at a time"},
		{"put without group", []string{"put", "a"}, exitUsage, "--config FILE or --peers"},
		{"put bad peers", []string{"put", "a", "--peers", "p1"}, exitUsage, "is not id=host:port"},
		{"put bad name", []string{"put", "a", "--peers", "p1=127.0.0.1:1", "--name", "../etc/passwd"}, exitUsage, `--name: statemachine: bad file name "../etc/passwd"`},
		{"put unknown primary", []string{"put", "a", "--peers", "p1=127.0.0.1:1", "--primary", "p9"}, exitUsage, `--primary "p9" is not a peer`},
		{"put missing file", []string{"put", missing, "--peers", "p1=127.0.0.1:1"}, exitFailed, "no such file"},
		{"ls without store", []string{"ls"}, exitUsage, "give --config FILE (and --id ID), or --data-dir DIR"},
		{"ls empty dir", []string{"ls", "--data-dir", missing}, exitFailed, "no file store at"},
		{"get without name", []string{"get", "--data-dir", "."}, exitUsage, "which file?"},
		{"config bad port", []string{"config", "--port", "65500"}, exitUsage, "leaves no room"},
		{"join without id", []string{"join", "--config", "group.toml"}, exitUsage, "--id is required"},
		{"join without group", []string{"join", "--id", "p4"}, exitUsage, "--config FILE is required"},
		{"leave argument", []string{"leave", "p3", "--config", "group.toml", "--id", "p3"}, exitUsage, `unexpected argument "p3"`},
		{"leave without id", []string{"leave", "--config", "group.toml"}, exitUsage, "--id is required"},
		{"scrub argument", []string{"scrub", "extra"}, exitUsage, `unexpected argument "extra"`},
		{"serve argument", []string{"serve", "--id", "p1", "--config", "group.toml", "extra"}, exitUsage, `unexpected argument "extra"`},
		{"transfer bad timeout", []string{"transfer-leader", "--config", "group.toml", "--timeout", "0s"}, exitUsage, "--timeout must be positive"},
		{"config wildcard", []string{"config", "--host", "0.0.0.0"}, exitUsage, "--host must be an address"},
		{"config wildcard spelled out", []string{"config", "--host", "[0:0::0]"}, exitUsage, "--host must be an address"},
		{"config negative peers", []string{"config", "--peers", "-1"}, exitUsage, "--peers must be between 1 and 100"},
		{"config port too high", []string{"config", "--port", "70000"}, exitUsage, "--port 70000 is not a port from 1 to 65535"},
		{"serve stats without unit", []string{"serve", "--stats", "10"}, exitUsage, `no unit: write "10s"`},
		{"serve negative stats", []string{"serve", "--stats", "-10s"}, exitUsage, `invalid value "-10s" for flag -stats: negative`},
		{"demo negative size", []string{"demo", "--size", "-1MiB"}, exitUsage, `"-1MiB" is not a size`},
		{"serve member on a wildcard", []string{"serve", "--id", "p1", "--member", "p1=0.0.0.0:1,127.0.0.1:2,127.0.0.1:3"}, exitFailed, `peer "p1"'s StreamAddr "0.0.0.0:1" is a wildcard address`},
		{"serve members sharing an address", []string{"serve", "--id", "p1", "--member", "p1=127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--member", "p2=127.0.0.1:3,127.0.0.1:5,127.0.0.1:6"}, exitFailed,
			`127.0.0.1:3 is both peer "p1"'s CommitAddr and peer "p2"'s StreamAddr`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCmd(t, tt.args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("want exit %d and %q on stderr, got:\n%v", tt.code, tt.stderr, r)
			}
		})
	}
}

// Every command has --help, on stdout, exit 0.
func TestHelp(t *testing.T) {
	for _, c := range commands {
		t.Run(c.name, func(t *testing.T) {
			for _, args := range [][]string{{c.name, "--help"}, {c.name, "-h"}, {"help", c.name}} {
				r := runCmd(t, args...)
				r.want(t, exitOK, `(?m)^Usage: pipestream `+c.name, `(?m)^Flags:$`)
			}
		})
	}
	runCmd(t, "help").want(t, exitOK, `(?m)^Commands:$`, `go run ./cmd/pipestream demo`)
}

func TestByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"4096", 4096, true},
		{"64KiB", 64 << 10, true},
		{"8MiB", 8 << 20, true},
		{"8mib", 8 << 20, true},
		{"256 MiB", 256 << 20, true},
		{"1GiB", 1 << 30, true},
		{"2G", 2 << 30, true},
		{"10B", 10, true},
		{"", 0, false},
		{"MiB", 0, false},
		{"1.5GiB", 0, false},
		{"-1", 0, false},
		{"99999999999GiB", 0, false},
	}
	for _, tt := range tests {
		var b byteSize
		err := b.Set(tt.in)
		if (err == nil) != tt.ok || (tt.ok && int64(b) != tt.want) {
			t.Errorf("Set(%q) = %d, %v; want %d, ok %v", tt.in, b, err, tt.want, tt.ok)
		}
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1 << 10: "1 KiB", 1536: "1.5 KiB", 256 << 20: "256 MiB", 3 << 30: "3 GiB"} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// Flags may follow positional arguments, as in "put FILE --name x"; after
// "--" everything is positional.
func TestParseInterspersed(t *testing.T) {
	tests := []struct {
		args []string
		name string
		pos  []string
	}{
		{[]string{"f"}, "", []string{"f"}},
		{[]string{"f", "--name", "x"}, "x", []string{"f"}},
		{[]string{"--name", "x", "f", "g"}, "x", []string{"f", "g"}},
		{[]string{"f", "--name=x", "g"}, "x", []string{"f", "g"}},
		{[]string{"--", "--name", "x"}, "", []string{"--name", "x"}},
		{[]string{"f", "--", "-g"}, "", []string{"f", "-g"}},
	}
	for _, tt := range tests {
		fs := newFlagSet(&env{stdout: new(bytes.Buffer), stderr: new(bytes.Buffer)}, "t", "")
		name := fs.String("name", "", "")
		pos, err := fs.parse(tt.args)
		if err != nil || *name != tt.name || strings.Join(pos, " ") != strings.Join(tt.pos, " ") {
			t.Errorf("parse(%q) = %q, name %q, %v; want %q, name %q", tt.args, pos, *name, err, tt.pos, tt.name)
		}
	}
}

// config prints a group file that peer.LoadConfig reads for every peer.
func TestConfig(t *testing.T) {
	r := runCmd(t, "config", "--peers", "5", "--port", "9001")
	r.want(t, exitOK)
	path := filepath.Join(t.TempDir(), "group.toml")
	if err := os.WriteFile(path, []byte(r.stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		id := fmt.Sprintf("p%d", i+1)
		cfg, err := peer.LoadConfig(path, id)
		if err != nil {
			t.Fatal(err)
		}
		want := peer.Member{ID: id,
			StreamAddr: fmt.Sprintf("127.0.0.1:%d", 9001+i),
			RaftAddr:   fmt.Sprintf("127.0.0.1:%d", 9101+i),
			CommitAddr: fmt.Sprintf("127.0.0.1:%d", 9201+i)}
		if cfg.Peers[i] != want || cfg.DataDir != filepath.Join(filepath.Dir(path), "data", id) {
			t.Errorf("%s: %+v in %s, want %+v in data/%s", id, cfg.Peers[i], cfg.DataDir, want, id)
		}
	}
	// An IPv6 host, bracketed or not, makes addresses LoadConfig reads.
	for _, host := range []string{"::1", "[::1]"} {
		r := runCmd(t, "config", "--host", host)
		r.want(t, exitOK, `(?m)^stream_addr = "\[::1\]:7001"$`)
		path6 := filepath.Join(t.TempDir(), "group.toml")
		if err := os.WriteFile(path6, []byte(r.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := peer.LoadConfig(path6, "p1"); err != nil {
			t.Errorf("--host %s: %v", host, err)
		}
	}
	group, err := loadGroup(path)
	if err != nil || len(group.Peers) != 5 {
		t.Errorf("loadGroup: %v, %v", group.Peers, err)
	}
}

// docs/operations.md shows what config prints by default, so that the
// sample there is one the code reads.
func TestConfigSampleInDocs(t *testing.T) {
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	r := runCmd(t, "config")
	r.want(t, exitOK)
	if !strings.Contains(string(doc), "```toml\n"+r.stdout+"```\n") {
		t.Errorf("docs/operations.md does not show the group file pipestream config prints:\n%s", r.stdout)
	}
}

// A put to a group that is not there fails at once and says what to
// check.
func TestPutNoGroup(t *testing.T) {
	addr := freeAddrs(t, 1)[0]
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runCmd(t, "put", file, "--peers", "p1="+addr)
	if r.code != exitFailed || !strings.Contains(r.stderr, "is the group running?") {
		t.Errorf("want exit 1 and a hint, got:\n%v", r)
	}
}

// Three serve commands in this process, defined by --member flags, take a
// put; cancelling their context, as a signal does, shuts each down
// cleanly with exit 0.
func TestServeInProcess(t *testing.T) {
	addrs := freeAddrs(t, 9)
	var members []string
	for i := range 3 {
		members = append(members, "--member", fmt.Sprintf("p%d=%s,%s,%s", i+1, addrs[3*i], addrs[3*i+1], addrs[3*i+2]))
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	type served struct {
		code   int
		stdout *lineWriter
		stderr bytes.Buffer
	}
	peers := make([]*served, 3)
	var wg sync.WaitGroup
	for i := range peers {
		s := &served{stdout: newLineWriter()}
		peers[i] = s
		args := append([]string{"serve", "--id", fmt.Sprintf("p%d", i+1), "--log-level", "error", "--data-dir", t.TempDir()}, members...)
		wg.Go(func() { s.code = run(ctx, args, s.stdout, &s.stderr) })
	}
	for _, s := range peers {
		if _, err := s.stdout.waitFor(" ready: ", testTimeout); err != nil {
			stop()
			wg.Wait()
			t.Fatalf("%v; stderr:\n%s", err, s.stderr.String())
		}
	}

	file := filepath.Join(t.TempDir(), "hello.txt")
	if err := os.WriteFile(file, []byte("hello, group\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	peersFlag := fmt.Sprintf("p1=%s,p2=%s,p3=%s", addrs[0], addrs[3], addrs[6])
	runCmd(t, "put", file, "--peers", peersFlag, "--name", "greetings/hello.txt", "--primary", "p3").
		want(t, exitOK, `(?m)^committed greetings/hello\.txt: 13 B in .*, log index \d+, term \d+, primary p3$`)

	stop()
	wg.Wait()
	for i, s := range peers {
		if s.code != exitOK {
			t.Errorf("p%d: exit %d; stderr:\n%s", i+1, s.code, s.stderr.String())
		}
		if _, err := s.stdout.waitFor(fmt.Sprintf("p%d stopped", i+1), 0); err != nil {
			t.Error(err)
		}
	}
}

// freeAddrs returns n loopback addresses whose ports were free a moment
// ago: each was bound to port 0 and closed.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	addrs := make([]string, n)
	for i := range addrs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		addrs[i] = ln.Addr().String()
	}
	return addrs
}
