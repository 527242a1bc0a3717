package statemachine_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pipestream/pipestream/statemachine"
)

func TestFileStoreBadNames(t *testing.T) {
	long := strings.Repeat("x", 256)
	for _, name := range []string{
		"/etc/passwd",
		`\windows`,
		"..",
		"../escape",
		"a/../../escape",
		"a/../b", // ".." is refused even where it would stay inside
		`a\..\b`,
		".",
		"./",
		"a\x00b",
		"line\nbreak",
		"esc\x1b[31m",
		"del\x7f",
		"c1\u0085",
		"bad\xffutf8",
		long,
		"dir/" + long,
		strings.Repeat("a/", 513),
	} {
		t.Run(fmt.Sprintf("%.20q", name), func(t *testing.T) {
			if got, err := statemachine.CleanName(name); !errors.Is(err, statemachine.ErrBadName) {
				t.Fatalf("CleanName = %q, %v; want ErrBadName", got, err)
			}
			dir := t.TempDir()
			s := openStore(t, dir, nil)
			ch, err := s.OpenStream(context.Background(), key(1), request(key(1), name))
			if !errors.Is(err, statemachine.ErrBadName) {
				t.Fatalf("OpenStream = %v, %v; want ErrBadName", ch, err)
			}
			wantEmpty(t, filepath.Join(dir, "tmp"), "after a refused stream")
		})
	}
}

func TestCleanName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a", "a"},
		{"a/b/c.txt", "a/b/c.txt"},
		{"./a", "a"},
		{"a//b/", "a/b"},
		{"a/./b", "a/b"},
		{"..a", "..a"},
		{"a..", "a.."},
		{".hidden", ".hidden"},
		{"spaces and ünïcode", "spaces and ünïcode"},
	} {
		if got, err := statemachine.CleanName(tc.in); err != nil || got != tc.want {
			t.Errorf("CleanName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestFileStoreNameConflicts(t *testing.T) {
	s := openStore(t, t.TempDir(), nil)
	mustLink(t, s, entry(1, key(1), "file", 1), write(t, s, key(1), "file", "x"))
	mustLink(t, s, entry(2, key(2), "dir/f", 1), write(t, s, key(2), "dir/f", "x"))
	for _, name := range []string{"file/below", "dir"} {
		if _, err := s.OpenStream(context.Background(), key(3), request(key(3), name)); !errors.Is(err, statemachine.ErrBadName) {
			t.Errorf("OpenStream(%q) = %v, want ErrBadName", name, err)
		}
	}
}
