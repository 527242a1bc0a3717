package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// record is one committed.log line as statemachine.FileStore writes it,
// with the bytes its data file holds.
type record struct {
	index   uint64
	name    string
	data    string
	missing bool // the record says the peer holds no copy; data is not written
	badSum  bool // the record's SHA-256 is not the data's
}

// writeStore writes a peer's data directory by hand: files/committed.log
// with recs, oldest first, and each present record's data under
// files/data, later records overwriting earlier ones as the FileStore
// does. It returns the data directory, as serve's --data-dir.
func writeStore(t *testing.T, recs ...record) string {
	t.Helper()
	dir := t.TempDir()
	files := filepath.Join(dir, "files")
	var log []byte
	for _, r := range recs {
		sum := sha256.Sum256([]byte(r.data))
		if r.badSum {
			sum[0] ^= 1
		}
		line := map[string]any{
			"index": r.index, "term": 1, "client": hex.EncodeToString([]byte("c1")),
			"stream": r.index, "name": r.name, "length": len(r.data), "sha256": hex.EncodeToString(sum[:]),
		}
		if r.missing {
			line["missing"], line["sha256"] = true, ""
		} else {
			path := filepath.Join(files, "data", filepath.FromSlash(r.name))
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(r.data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		b, err := json.Marshal(line)
		if err != nil {
			t.Fatal(err)
		}
		log = append(append(log, b...), '\n')
	}
	if err := os.MkdirAll(files, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(files, "committed.log"), log, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// dirNames returns the names in dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// get -o FILE leaves a FILE that exists as it was unless the copy
// succeeded, and leaves no temporary file behind either way.
func TestGetKeepsExistingFile(t *testing.T) {
	store := writeStore(t,
		record{index: 1, name: "good", data: "new bytes"},
		record{index: 2, name: "corrupt", data: "bad bytes", badSum: true},
		record{index: 3, name: "gone", data: "lost", missing: true},
	)
	for _, tc := range []struct {
		name, stderr string
	}{
		{"nope", `holds no file "nope"`},
		{"corrupt", "the store recorded 9 bytes"},
		{"gone", "copy missing on this peer"},
		{"../escape", "bad file name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "out")
			if err := os.WriteFile(out, []byte("precious"), 0o600); err != nil {
				t.Fatal(err)
			}
			r := runCmd(t, "get", tc.name, "--data-dir", store, "-o", out)
			if r.code == exitOK || !strings.Contains(r.stderr, tc.stderr) {
				t.Errorf("want a failure mentioning %q, got:\n%v", tc.stderr, r)
			}
			if data, err := os.ReadFile(out); err != nil || string(data) != "precious" {
				t.Errorf("the failed get changed %s: %q, %v", out, data, err)
			}
			if names := dirNames(t, dir); !slices.Equal(names, []string{"out"}) {
				t.Errorf("get left %q in %s", names, dir)
			}
		})
	}
	t.Run("replaces", func(t *testing.T) {
		dir := t.TempDir()
		out := filepath.Join(dir, "out")
		if err := os.WriteFile(out, []byte("precious, and longer than the copy"), 0o600); err != nil {
			t.Fatal(err)
		}
		runCmd(t, "get", "good", "--data-dir", store, "-o", out).want(t, exitOK)
		if data, err := os.ReadFile(out); err != nil || string(data) != "new bytes" {
			t.Errorf("get -o over a file: %q, %v", data, err)
		}
		if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("get -o over a file changed its permissions: %v, %v", fi.Mode(), err)
		}
		if names := dirNames(t, dir); !slices.Equal(names, []string{"out"}) {
			t.Errorf("get left %q in %s", names, dir)
		}
	})
	t.Run("new file", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "new")
		runCmd(t, "get", "good", "--data-dir", store, "-o", out).want(t, exitOK)
		if data, err := os.ReadFile(out); err != nil || string(data) != "new bytes" {
			t.Errorf("get -o: %q, %v", data, err)
		}
	})
	t.Run("no such directory", func(t *testing.T) {
		dir := t.TempDir()
		r := runCmd(t, "get", "good", "--data-dir", store, "-o", filepath.Join(dir, "sub", "out"))
		if r.code != exitFailed || !strings.Contains(r.stderr, "no such file or directory") {
			t.Errorf("want exit 1, got:\n%v", r)
		}
		if names := dirNames(t, dir); len(names) != 0 {
			t.Errorf("get left %q in %s", names, dir)
		}
	})
	t.Run("directory", func(t *testing.T) {
		dir := t.TempDir()
		r := runCmd(t, "get", "good", "--data-dir", store, "-o", dir)
		if want := "pipestream get: " + dir + " is a directory\n"; r.code != exitFailed || r.stderr != want {
			t.Errorf("want exit 1 and %q, got:\n%v", want, r)
		}
		if names := dirNames(t, dir); len(names) != 0 {
			t.Errorf("get left %q in %s", names, dir)
		}
	})
	t.Run("device", func(t *testing.T) {
		runCmd(t, "get", "good", "--data-dir", store, "-o", os.DevNull).want(t, exitOK)
	})
	t.Run("stdout", func(t *testing.T) {
		r := runCmd(t, "get", "good", "--data-dir", store, "-o", "-")
		r.want(t, exitOK)
		if r.stdout != "new bytes" {
			t.Errorf("get -o - printed %q", r.stdout)
		}
	})
}

// A record marked missing says this peer holds no copy of its entry: ls
// shows it, and get refuses it rather than serve an older version that
// the data directory may still hold under the name.
func TestMissingCopies(t *testing.T) {
	store := writeStore(t,
		record{index: 1, name: "b", data: "bee"},
		record{index: 3, name: "a", data: "old a"},
		record{index: 5, name: "a", data: "newer a", missing: true}, // a newer entry, not held
		record{index: 4, name: "c", data: "fixed", missing: true},
		record{index: 4, name: "c", data: "fixed"},                // the same entry, repaired
		record{index: 7, name: "d", data: "seven", missing: true}, // ...
		record{index: 6, name: "d", data: "older d"},              // an older entry's record, appended after it
	)
	ls := runCmd(t, "ls", "--data-dir", store)
	ls.want(t, exitOK,
		`^NAME +BYTES +INDEX +TERM +STATUS +SHA256\n`,
		`(?m)^b +3 +1 +1 +ok +`+sha("bee")+`$`,
		`(?m)^c +5 +4 +1 +ok +`+sha("fixed")+`$`,
		`(?m)^a +7 +5 +1 +missing +-$`,
		`(?m)^d +5 +7 +1 +missing +-$`,
	)
	if n := strings.Count(ls.stdout, "\n"); n != 5 {
		t.Errorf("ls printed %d lines, want a header and 4 files:\n%s", n, ls.stdout)
	}
	for name, want := range map[string]string{"b": "bee", "c": "fixed"} {
		g := runCmd(t, "get", name, "--data-dir", store)
		g.want(t, exitOK)
		if g.stdout != want {
			t.Errorf("get %s printed %q, want %q", name, g.stdout, want)
		}
	}
	for name, index := range map[string]string{"a": "5", "d": "7"} {
		g := runCmd(t, "get", name, "--data-dir", store)
		want := "pipestream get: " + name + ": copy missing on this peer (log index " + index + ", term 1); get it from another peer\n"
		if g.code != exitFailed || g.stdout != "" || g.stderr != want {
			t.Errorf("get %s: want exit 1, nothing on stdout and %q on stderr, got:\n%v", name, want, g)
		}
	}
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// ls prints one line per file whatever its name: a name with anything
// not printable (or that starts with a quote) is quoted, Go style.
func TestLsQuotesNames(t *testing.T) {
	names := []string{"plain name", "new\nline", "tab\there", `"quoted"`, "é/ü", "bell\a", "nbsp\u00a0x"}
	var recs []record
	for i, n := range names {
		recs = append(recs, record{index: uint64(i + 1), name: n, data: "x"})
	}
	r := runCmd(t, "ls", "--data-dir", writeStore(t, recs...))
	r.want(t, exitOK)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != len(names)+1 {
		t.Fatalf("ls printed %d lines for %d files:\n%s", len(lines), len(names), r.stdout)
	}
	for i, want := range []string{"plain name", `"new\nline"`, `"tab\there"`, `"\"quoted\""`, "é/ü", `"bell\a"`, `"nbsp\u00a0x"`} {
		if !regexp.MustCompile(`^` + regexp.QuoteMeta(want) + ` +1 +` + strconv.Itoa(i+1) + ` +1 +ok +[0-9a-f]{64}$`).MatchString(lines[i+1]) {
			t.Errorf("line %d: %q, want the name shown as %s", i+1, lines[i+1], want)
		}
	}
}

// put refuses a name that would break ls's lines, before connecting.
func TestPutRefusesControlCharacters(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a\nb", "a\tb", "a\x7fb", "a\u0085b", "a\xffb"} {
		r := runCmd(t, "put", file, "--peers", "p1=127.0.0.1:1", "--name", name)
		if r.code != exitUsage || !strings.Contains(r.stderr, "pipestream put: --name "+strconv.Quote(name)+" ") {
			t.Errorf("--name %q: want exit 2 and the name quoted, got:\n%v", name, r)
		}
	}
	odd := filepath.Join(dir, "odd\nname")
	if err := os.WriteFile(odd, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runCmd(t, "put", odd, "--peers", "p1=127.0.0.1:1")
	want := "pipestream put: the file's name \"odd\\nname\" has a control character, which would break the lines ls prints; store it under another with --name\n" +
		"Run \"pipestream put --help\" for usage.\n"
	if r.code != exitUsage || r.stderr != want {
		t.Errorf("want exit 2 and\n%s\ngot:\n%v", want, r)
	}
}

// Every failure prints one line, "pipestream CMD: reason", with no prefix
// repeated, whatever package the reason comes from.
func TestErrorOutput(t *testing.T) {
	store := writeStore(t, record{index: 1, name: "f", data: "x"})
	missing := filepath.Join(t.TempDir(), "missing")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"get", "nope", "--data-dir", store}, exitFailed,
			"pipestream get: " + filepath.Join(store, "files") + " holds no file \"nope\" (pipestream ls lists what it holds)\n"},
		{[]string{"ls", "--data-dir", missing}, exitFailed,
			"pipestream ls: no file store at " + filepath.Join(missing, "files") + ": no such file or directory\n"},
		{[]string{"serve", "--id", "p1", "--config", missing}, exitFailed,
			"pipestream serve: peer: invalid configuration: open " + missing + ": no such file or directory\n"},
		{[]string{"get", "--data-dir", store}, exitUsage,
			"pipestream get: which file? pipestream get NAME\nRun \"pipestream get --help\" for usage.\n"},
		// Without --id: should the flag be taken, serve fails at once all the same.
		{[]string{"serve", "--stats", "30"}, exitUsage,
			"pipestream serve: invalid value \"30\" for flag -stats: no unit: write \"30s\", \"30ms\" or another duration\nRun \"pipestream serve --help\" for usage.\n"},
		{[]string{"serve", "--stats", "-1s"}, exitUsage,
			"pipestream serve: invalid value \"-1s\" for flag -stats: negative\nRun \"pipestream serve --help\" for usage.\n"},
		{[]string{"config", "--port", "-5"}, exitUsage,
			"pipestream config: --port -5 is not a port from 1 to 65535\nRun \"pipestream config --help\" for usage.\n"},
	} {
		r := runCmd(t, tc.args...)
		if r.code != tc.code || r.stderr != tc.want {
			t.Errorf("%q: want exit %d and\n%s\ngot:\n%v", tc.args, tc.code, tc.want, r)
		}
	}
	// The server's errors say "pipestream: CODE: ..." on their own.
	var stderr strings.Builder
	e := &env{stdout: new(strings.Builder), stderr: &stderr}
	code := e.exit(context.Background(), "put", hint(pb.Errorf(pb.ErrorCode_SUCCESSOR_FAILED, "p2 is down")))
	want := "pipestream put: SUCCESSOR_FAILED: p2 is down (is every peer up and ready? each serve prints a ready line)\n"
	if code != exitFailed || stderr.String() != want {
		t.Errorf("exit %d, printed %q; want exit 1 and %q", code, stderr.String(), want)
	}
}
