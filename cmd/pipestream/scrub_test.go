package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// scrub rereads every copy against its record: intact copies exit 0, and
// one flipped byte, a short copy or a lost one is named and exits 1.
func TestScrub(t *testing.T) {
	recs := []record{
		{index: 1, name: "a", data: "alpha"},
		{index: 2, name: "dir/b", data: "bravo bravo"},
		{index: 3, name: "gone", data: "x", missing: true},
	}
	t.Run("intact", func(t *testing.T) {
		store := writeStore(t, recs...)
		r := runCmd(t, "scrub", "--data-dir", store)
		want := "scrubbed 2 copies (16 B) in " + filepath.Join(store, "files") + ": 0 bad, 2 intact; 1 entries recorded missing\n"
		if r.code != exitOK || r.stdout != want || r.stderr != "" {
			t.Errorf("want exit 0 and\n%s\ngot:\n%v", want, r)
		}
	})
	for _, tc := range []struct {
		what   string
		damage func(t *testing.T, path string)
		want   string
	}{
		{"flipped byte", func(t *testing.T, path string) { flipByte(t, path, 3) }, "bad dir/b: read 11 bytes with sha256 "},
		{"cut short", func(t *testing.T, path string) {
			if err := os.Truncate(path, 4); err != nil {
				t.Fatal(err)
			}
		}, "bad dir/b: read 4 bytes with sha256 "},
		{"removed", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, "bad dir/b: no file on disk; the log records 11 bytes at log index 2\n"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			store := writeStore(t, recs...)
			tc.damage(t, filepath.Join(store, "files", "data", "dir", "b"))
			before := snapshotDir(t, store)
			r := runCmd(t, "scrub", "--data-dir", store)
			if r.code != exitFailed || !strings.HasPrefix(r.stdout, tc.want) ||
				!strings.HasSuffix(r.stdout, ": 1 bad, 1 intact; 1 entries recorded missing\n") ||
				r.stderr != "pipestream scrub: 1 of 2 copies bad\n" {
				t.Errorf("want exit 1, %q first and the summary, got:\n%v", tc.want, r)
			}
			if after := snapshotDir(t, store); after != before {
				t.Errorf("scrub changed the data directory:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
	t.Run("usage", func(t *testing.T) {
		for _, args := range [][]string{
			{"scrub"},
			{"scrub", "--config", "g.toml"},
			{"scrub", "--data-dir", ".", "--id", "p1"},
			{"scrub", "--data-dir", ".", "extra"},
		} {
			if r := runCmd(t, args...); r.code != exitUsage {
				t.Errorf("%q: want exit 2, got:\n%v", args, r)
			}
		}
	})
}

// snapshotDir describes every file under dir: path, size and contents.
func snapshotDir(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		b.WriteString(path + " " + string(data) + "\n")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// Reading locally needs a peer: --local without --id is a usage error,
// and --local with --config and --id reads data_dir/ID.
func TestLocalFlags(t *testing.T) {
	store := writeStore(t, record{index: 1, name: "f", data: "local bytes"})
	// A group file whose peer p1 keeps its data in store.
	config := filepath.Join(t.TempDir(), "group.toml")
	group := "data_dir = " + quoteTOML(filepath.Dir(store)) + "\n" +
		"[[peers]]\nid = \"" + filepath.Base(store) + "\"\nstream_addr = \"127.0.0.1:1\"\nraft_addr = \"127.0.0.1:2\"\ncommit_addr = \"127.0.0.1:3\"\n"
	if err := os.WriteFile(config, []byte(group), 0o644); err != nil {
		t.Fatal(err)
	}
	id := filepath.Base(store)
	runCmd(t, "get", "f", "--config", config, "--id", id, "--local").want(t, exitOK, `^local bytes$`)
	runCmd(t, "ls", "--config", config, "--id", id, "--local").want(t, exitOK, `(?m)^f +11 +1 +1 +ok +`)
	runCmd(t, "scrub", "--config", config, "--id", id).want(t, exitOK, `0 bad, 1 intact`)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ls", "--config", config, "--local"}, "--local reads one peer's data directory: which? give --id ID"},
		{[]string{"get", "f", "--data-dir", store, "--local", "--id", id}, "--data-dir goes without --config and --id"},
		{[]string{"get", "f", "--config", config, "--id", "p9"}, `--id "p9" is not a peer of ` + config},
	} {
		if r := runCmd(t, tc.args...); r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%q: want exit 2 and %q, got:\n%v", tc.args, tc.want, r)
		}
	}
}

// quoteTOML quotes s as a TOML literal string.
func quoteTOML(s string) string { return "'" + s + "'" }
