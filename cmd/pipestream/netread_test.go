package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
)

// startServeGroup builds the binary, writes a group file in a new
// directory dir and starts its three serve processes, on other ports if
// the first ones were taken meanwhile.
func startServeGroup(t *testing.T) (bin, dir, config string, peers []*process) {
	t.Helper()
	bin, dir = buildBinary(t), t.TempDir()
	config = filepath.Join(dir, "group.toml")
	onFreePorts(t, 9, func(addrs []string) error {
		if err := os.WriteFile(config, []byte(testGroupFile(addrs)), 0o644); err != nil {
			t.Fatal(err)
		}
		var err error
		peers, err = startPeers(t, bin, config)
		return err
	})
	return bin, dir, config, peers
}

// get and ls over the network, against three serve processes: every
// peer serves the bytes put, get checks them against the peer's record,
// and a peer that is down fails only a get that asks for it.
func TestNetworkRead(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs three processes")
	}
	bin, dir, config, peers := startServeGroup(t)

	data := randomBytes(15, 1<<20+4321)
	sum := sha256.Sum256(data)
	file := writeFile(t, dir, "payload.bin", data)
	const name = "net/payload.bin"
	runBinary(t, bin, "put", file, "--config", config, "--name", name, "--quiet")
	for _, id := range []string{"p1", "p2", "p3"} {
		waitStored(t, bin, config, id, name)
	}

	// getFile runs get with args and -o, and returns what it wrote.
	getFile := func(t *testing.T, args ...string) []byte {
		t.Helper()
		out := filepath.Join(t.TempDir(), "out")
		runBinary(t, bin, append([]string{"get", name, "--config", config, "-o", out}, args...)...)
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	t.Run("each peer", func(t *testing.T) {
		for _, id := range []string{"p1", "p2", "p3"} {
			if got := getFile(t, "--id", id); !bytes.Equal(got, data) {
				t.Errorf("get --id %s gave %d bytes that differ from the %d put", id, len(got), len(data))
			}
		}
	})
	t.Run("stdout", func(t *testing.T) {
		if got := runBinary(t, bin, "get", name, "--config", config, "--transport", "netconn"); got != string(data) {
			t.Errorf("get to stdout gave %d bytes that differ from the %d put", len(got), len(data))
		}
	})
	t.Run("ls", func(t *testing.T) {
		r := runBinaryResult(t, bin, "ls", "--config", config)
		line := regexp.MustCompile(`(?m)^net/payload\.bin +` + fmt.Sprint(len(data)) + ` +\d+ +\d+ +ok +` + hex.EncodeToString(sum[:]) + `$`)
		if r.code != 0 || !strings.HasPrefix(r.stdout, "NAME ") || !line.MatchString(r.stdout) {
			t.Errorf("ls over the network:\n%v", r)
		}
		// Without --id the peers are asked in the group file's order.
		if r.stderr != "pipestream ls: catalog of peer p1\n" {
			t.Errorf("ls does not say p1 answered:\n%v", r)
		}
	})
	t.Run("unknown name", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out")
		for _, tc := range []struct {
			args []string
			want string
		}{
			{nil, "pipestream get: no peer reached holds a file \"nope\" (pipestream ls lists what a peer holds)\n"},
			{[]string{"--id", "p2"}, "pipestream get: peer p2 holds no file \"nope\" (pipestream ls lists what it holds)\n"},
		} {
			r := runBinaryResult(t, bin, append([]string{"get", "nope", "--config", config, "-o", out}, tc.args...)...)
			if r.code != exitFailed || r.stderr != tc.want {
				t.Errorf("get nope %q: want exit 1 and\n%s\ngot:\n%v", tc.args, tc.want, r)
			}
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Errorf("a failed get left %s: %v", out, err)
		}
	})
	t.Run("corrupt copy", func(t *testing.T) {
		// A byte flipped in p2's copy behind its back: p2 serves it as it
		// is, and get finds that it is not what p2 recorded.
		stored := filepath.Join(dir, "data", "p2", "files", "data", filepath.FromSlash(name))
		flipByte(t, stored, 1000)
		repaired := false
		defer func() {
			if !repaired {
				flipByte(t, stored, 1000)
			}
		}()
		out := filepath.Join(t.TempDir(), "out")
		if err := os.WriteFile(out, []byte("before"), 0o644); err != nil {
			t.Fatal(err)
		}
		r := runBinaryResult(t, bin, "get", name, "--config", config, "--id", "p2", "-o", out)
		if r.code != exitFailed || !strings.Contains(r.stderr, "peer p2 recorded "+fmt.Sprint(len(data))+" bytes with sha256 "+hex.EncodeToString(sum[:])) {
			t.Errorf("get of a corrupt copy: want exit 1 and what p2 recorded, got:\n%v", r)
		}
		if got, err := os.ReadFile(out); err != nil || string(got) != "before" {
			t.Errorf("a failed get replaced %s: %q, %v", out, got, err)
		}
		// Without --id, a get to a file that meets p2's copy reads again
		// from another peer; the get starts at p2 with probability 1/3
		// each time, or moves to it if its first peer fails.
		for range 3 {
			if got := getFile(t); !bytes.Equal(got, data) {
				t.Fatalf("get with p2's copy corrupt gave %d bytes that differ from the %d put", len(got), len(data))
			}
		}
		// scrub, beside the running peers, finds it too.
		s := runBinaryResult(t, bin, "scrub", "--config", config, "--id", "p2")
		if s.code != exitFailed || !strings.Contains(s.stdout, "bad "+name+": read ") || !strings.Contains(s.stdout, ": 1 bad, 0 intact;") {
			t.Errorf("scrub of p2:\n%v", s)
		}
		if s := runBinaryResult(t, bin, "scrub", "--config", config, "--id", "p1"); s.code != 0 || !strings.Contains(s.stdout, ": 0 bad, 1 intact;") {
			t.Errorf("scrub of p1:\n%v", s)
		}
		// SIGUSR1 makes p2 scrub now: it finds the bad copy, removes it,
		// and repairs it from another peer.
		if err := peers[1].cmd.Process.Signal(syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			s := runBinaryResult(t, bin, "scrub", "--config", config, "--id", "p2")
			if s.code == 0 && strings.Contains(s.stdout, ": 0 bad, 1 intact;") {
				repaired = true
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("p2 did not repair its copy within 30 s of SIGUSR1; scrub says:\n%v", s)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if got, err := os.ReadFile(stored); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("p2's repaired copy: %d bytes, %v; want the put's", len(got), err)
		}
	})
	t.Run("peer down", func(t *testing.T) {
		peers[0].interrupt(t)
		peers[0].wait(t)
		r := runBinaryResult(t, bin, "get", name, "--config", config, "--id", "p1", "-o", filepath.Join(t.TempDir(), "out"))
		if r.code != exitFailed || !strings.Contains(r.stderr, "connect to p1") || !strings.Contains(r.stderr, "is the group running?") {
			t.Errorf("get --id of a stopped peer: want exit 1 saying it cannot connect to p1, got:\n%v", r)
		}
		// Without --id the client starts at a random peer: three gets
		// start at p1 with probability 19/27, and each must move on.
		for range 3 {
			if got := getFile(t); !bytes.Equal(got, data) {
				t.Fatalf("get with p1 down gave %d bytes that differ from the %d put", len(got), len(data))
			}
		}
		ls := runBinaryResult(t, bin, "ls", "--config", config)
		if ls.code != 0 || ls.stderr != "pipestream ls: catalog of peer p2\n" || !strings.Contains(ls.stdout, "\n"+name+" ") {
			t.Errorf("ls with p1 down: want p2's catalog, got:\n%v", ls)
		}
		// Its data directory is still there to read.
		if got := getFile(t, "--id", "p1", "--local"); !bytes.Equal(got, data) {
			t.Errorf("get --local of stopped p1 gave %d bytes that differ from the %d put", len(got), len(data))
		}
	})
	for _, p := range peers[1:] {
		p.interrupt(t)
	}
	for _, p := range peers[1:] {
		p.wait(t)
	}
}

// flipByte inverts the byte at off of the file at path, in place.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// Why get found nothing to read, as the peers answered Open.
func TestOpenError(t *testing.T) {
	refused := fmt.Errorf("%w: connect to p3: %w", datastream.ErrConnectionLost, syscall.ECONNREFUSED)
	for _, tc := range []struct {
		err  error
		id   string
		want string
	}{
		{fmt.Errorf("datastream: open %q: %w", "f", datastream.ErrMissing), "p2",
			"f: peer p2 holds no copy of its newest entry (ls shows it missing); get it from another peer with --id, or leave out --id to read from any"},
		// One peer has no copy, another is down: the copy is missing.
		{errors.Join(datastream.ErrMissing, refused), "", "f: no peer reached holds a copy of its newest entry ("},
		{datastream.ErrNotFound, "p1", `peer p1 holds no file "f" (pipestream ls lists what it holds)`},
		{errors.Join(refused, datastream.ErrNotFound), "", `no peer reached holds a file "f" (pipestream ls lists what a peer holds)`},
		{refused, "p3", "(is the group running? start it with pipestream serve)"},
	} {
		got := openError(tc.err, "f", tc.id)
		if !strings.Contains(got.Error(), tc.want) {
			t.Errorf("openError(%v, %q) = %q; want it to say %q", tc.err, tc.id, got, tc.want)
		}
	}
}

// A group that does not run: ls and get fail at once, in this process,
// saying so, and leave no goroutine or connection behind (TestMain).
func TestNetworkReadNoGroup(t *testing.T) {
	config := filepath.Join(t.TempDir(), "group.toml")
	group := "[[peers]]\nid = \"p1\"\nstream_addr = \"127.0.0.1:1\"\nraft_addr = \"127.0.0.1:2\"\ncommit_addr = \"127.0.0.1:3\"\n"
	if err := os.WriteFile(config, []byte(group), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"ls", "--config", config},
		{"ls", "--config", config, "--id", "p1", "--transport", "netconn"},
		{"get", "f", "--config", config},
		{"get", "f", "--config", config, "--id", "p1", "-o", filepath.Join(t.TempDir(), "out")},
	} {
		r := runCmd(t, args...)
		if r.code != exitFailed || r.stdout != "" || !strings.Contains(r.stderr, "connect to p1") ||
			!strings.HasSuffix(r.stderr, "(is the group running? start it with pipestream serve)\n") {
			t.Errorf("%q: want exit 1 saying p1 is not reachable, got:\n%v", args, r)
		}
	}
}
