package main

// The lab's client: this test binary, run again as a process in the lab's
// client host, so that its connections cross the lab's network as a real
// client's do. It makes the crash checker's puts (streamPut, so that the
// outcomes are classified as everywhere else) and reads, asked for over
// stdin, and reports on stdout; the test keeps the history.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipestream/pipestream/datastream"
)

// labClientEnv, set to a group file, makes this test binary the lab's
// client of that group (see TestMain).
const labClientEnv = "PIPESTREAM_LAB_CLIENT"

// labRequest is one line of the client's stdin.
type labRequest struct {
	ID   int    `json:"id"`
	Op   string `json:"op"` // "put" or "get"
	Name string `json:"name"`
	// Peer is a put's primary, or the peer a get reads from.
	Peer string `json:"peer"`
	// A put's bytes are randomBytes(Seed, Size).
	Seed uint64 `json:"seed"`
	Size int    `json:"size"`
	// Offset: the client says "event ID offset" once this many bytes of
	// the put are handed to the stream (and "close", "reply" as those
	// happen); Drain is putEvents.drain.
	Offset  int           `json:"offset"`
	Drain   bool          `json:"drain"`
	Timeout time.Duration `json:"timeout"`
}

// labResult is a "result" line of the client's stdout.
type labResult struct {
	ID  int        `json:"id"`
	Put *putRecord `json:"put,omitempty"`
	// A get's: the SHA-256 of what it read, or why it failed.
	SHA256 string `json:"sha256,omitempty"`
	Err    string `json:"err,omitempty"`
}

// labClientMain is the client process: one goroutine per request, until
// stdin ends.
func labClientMain(config string) int {
	cfg, err := loadGroup(config)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c, err := datastream.NewClient(cfg.Peers, datastream.WithReplyTimeout(5*time.Second),
		datastream.WithDialTimeout(2*time.Second), datastream.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	var wg sync.WaitGroup
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var req labRequest
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), req.Timeout)
			defer cancel()
			res := labResult{ID: req.ID}
			switch req.Op {
			case "put":
				ev := newPutEvents(req.Offset)
				ev.drain = req.Drain
				done := make(chan struct{})
				var seen sync.WaitGroup
				for name, ch := range map[string]chan struct{}{"offset": ev.atOffset, "close": ev.closeSent, "reply": ev.closeReply} {
					seen.Go(func() {
						select {
						case <-ch:
							say("event %d %s", req.ID, name)
						case <-done:
						}
					})
				}
				res.Put = streamPut(ctx, new(history), c, req.Name, req.Peer, randomBytes(req.Seed, req.Size), ev)
				close(done)
				seen.Wait()
			case "get":
				sum, err := readSum(ctx, c, req.Name, req.Peer)
				res.SHA256 = sum
				if err != nil {
					res.Err = err.Error()
				}
			}
			line, _ := json.Marshal(res)
			say("result %s", line)
		})
	}
	wg.Wait()
	return 0
}

// readSum reads name from peer and returns the SHA-256 of what it read.
func readSum(ctx context.Context, c *datastream.Client, name, peer string) (string, error) {
	r, err := c.Open(ctx, name, datastream.WithReadPeer(peer), datastream.WithReadAttempts(1))
	if err != nil {
		return "", err
	}
	defer r.Close()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// labClient is the test's side of the client process.
type labClient struct {
	t      *testing.T
	cmd    *exec.Cmd
	in     io.WriteCloser
	stderr *lineWriter
	exited chan struct{} // the process's stdout ended

	mu    sync.Mutex
	next  int
	calls map[int]*labCall
}

type labCall struct {
	ev  *putEvents // a put's; nil for a get
	res chan labResult
}

// startLabClient starts the client of config in cmd, this test binary run
// in a host, and stops it at the test's end.
func startLabClient(t *testing.T, cmd *exec.Cmd, config string) *labClient {
	t.Helper()
	lc := &labClient{t: t, cmd: cmd, stderr: newLineWriter(), exited: make(chan struct{}), calls: map[int]*labCall{}}
	cmd.Env = append(os.Environ(), labClientEnv+"="+config)
	cmd.Stderr = lc.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if lc.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go lc.read(out)
	t.Cleanup(func() {
		lc.in.Close() // the client finishes what it has and exits
		select {
		case <-lc.exited:
		case <-time.After(testTimeout):
			_ = cmd.Process.Kill()
			<-lc.exited
		}
		_ = cmd.Wait()
	})
	return lc
}

// read dispatches the client's lines to the calls waiting for them.
func (lc *labClient) read(out io.Reader) {
	defer close(lc.exited)
	sc := bufio.NewScanner(out)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		switch {
		case len(f) == 3 && f[0] == "event":
			var id int
			fmt.Sscan(f[1], &id)
			lc.mu.Lock()
			call := lc.calls[id]
			lc.mu.Unlock()
			if call != nil && call.ev != nil {
				switch f[2] {
				case "offset":
					call.ev.at(call.ev.offset)
				case "close":
					call.ev.closed()
				case "reply":
					call.ev.replied()
				}
			}
		case strings.HasPrefix(line, "result "):
			var res labResult
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "result ")), &res); err != nil {
				continue
			}
			lc.mu.Lock()
			call := lc.calls[res.ID]
			delete(lc.calls, res.ID)
			lc.mu.Unlock()
			if call != nil {
				call.res <- res
			}
		}
	}
}

// call sends req and waits for its result, up to req.Timeout and a margin.
func (lc *labClient) call(req labRequest, ev *putEvents) (labResult, error) {
	res := make(chan labResult, 1)
	lc.mu.Lock()
	lc.next++
	req.ID = lc.next
	lc.calls[req.ID] = &labCall{ev: ev, res: res}
	line, _ := json.Marshal(req)
	_, err := lc.in.Write(append(line, '\n'))
	lc.mu.Unlock()
	if err != nil {
		return labResult{}, fmt.Errorf("lab client: %w", err)
	}
	select {
	case r := <-res:
		return r, nil
	case <-lc.exited:
		return labResult{}, fmt.Errorf("lab client exited\n--- stderr\n%s", lc.stderr.String())
	case <-time.After(req.Timeout + 10*time.Second):
		return labResult{}, fmt.Errorf("lab client: no result for %s %s within %v", req.Op, req.Name, req.Timeout)
	}
}

// put streams randomBytes(seed, size) as name through primary, from the
// client host, and records the outcome in h; ev, if not nil, hears of the
// put's progress as streamPut's caller would.
func (lc *labClient) put(ctx context.Context, h *history, name, primary string, seed uint64, size int, ev *putEvents) *putRecord {
	timeout := 30 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	req := labRequest{Op: "put", Name: name, Peer: primary, Seed: seed, Size: size, Timeout: timeout}
	if ev != nil {
		req.Offset, req.Drain = ev.offset, ev.drain
	}
	r, err := lc.call(req, ev)
	if err != nil || r.Put == nil {
		// What became of the put is unknown: it may have committed.
		data := randomBytes(seed, size)
		rec := &putRecord{Name: name, Size: size, SHA256: sha256.Sum256(data), Primary: primary, Outcome: outIndeterminate, Err: fmt.Sprint(err)}
		h.add(rec)
		lc.t.Errorf("%v", err)
		return rec
	}
	h.add(r.Put)
	return r.Put
}

// get reads name from peer, from the client host, and returns the
// SHA-256 of what it read, or the error the read ended with.
func (lc *labClient) get(name, peer string) (string, error) {
	r, err := lc.call(labRequest{Op: "get", Name: name, Peer: peer, Timeout: 20 * time.Second}, nil)
	if err != nil {
		return "", err
	}
	if r.Err != "" {
		return "", fmt.Errorf("%s", r.Err)
	}
	return r.SHA256, nil
}

// getCaughtUp is get run again while the peer refuses the read as not
// caught up with its group (whileNotCaughtUp), which a lab's faults make
// it do often. A refusal past the deadline is returned as the error.
func (lc *labClient) getCaughtUp(name, peer string) (sum string, err error) {
	whileNotCaughtUp(func() string {
		if sum, err = lc.get(name, peer); err != nil {
			return err.Error()
		}
		return ""
	})
	return sum, err
}
