package crashpoint_test

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/pipestream/pipestream/internal/crashpoint"
)

// TestHelperProcess is the process the tests arm: it hits "a" three times
// and "b" once, printing each hit it survives.
func TestHelperProcess(t *testing.T) {
	if os.Getenv("CRASHPOINT_HELPER") == "" {
		t.Skip("run by the other tests")
	}
	for i, p := range []string{"a", "b", "a", "a"} {
		crashpoint.HitOn(p, []string{"x", "y", "y", "x"}[i])
		os.Stdout.WriteString(p)
	}
	os.Exit(0)
}

func TestHit(t *testing.T) {
	for _, tc := range []struct{ env, out string }{
		{"", "abaa"}, // unarmed: every hit survives
		{"a", ""},
		{"a:2", "ab"},
		{"b", "a"},
		{"a:9", "abaa"},  // never reached
		{"c", "abaa"},    // another point
		{"a:x", ""},      // a bad count means the first hit
		{"a@y", "ab"},    // the first hit of a for subject y
		{"a@x:2", "aba"}, // the second for x
		{"b@x", "abaa"},  // b is never hit for x
	} {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestHelperProcess$")
		cmd.Env = append(os.Environ(), "CRASHPOINT_HELPER=1", crashpoint.Env+"="+tc.env)
		out, err := cmd.Output()
		killed := false
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			ws, ok := ee.Sys().(syscall.WaitStatus)
			killed = ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
		} else if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(out)); got != tc.out || killed != (tc.out != "abaa") {
			t.Errorf("%s=%q: printed %q, killed %v; want %q", crashpoint.Env, tc.env, got, killed, tc.out)
		}
	}
}
