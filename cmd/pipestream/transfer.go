package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/pipestream/pipestream/datastream"
)

// chunk is how much of a file one WriteFile call sends between updates of
// the progress bar: a few packets, so that the bar moves smoothly without
// a call per packet.
const chunk = 4 * datastream.DefaultPacketSize

// committed is the outcome of a put.
type committed struct {
	bytes       int64
	elapsed     time.Duration // from opening the stream to the commit's reply
	index, term uint64        // the stream's Raft entry
	primary     string
}

// rate returns the throughput, such as "164.1 MiB/s".
func (c committed) rate() string {
	return formatBytes(int64(float64(c.bytes)/max(c.elapsed.Seconds(), 1e-9))) + "/s"
}

// summary describes the put in one line.
func (c committed) summary(name string) string {
	return fmt.Sprintf("committed %s: %s in %s (%s), log index %d, term %d, primary %s",
		name, formatBytes(c.bytes), c.elapsed.Round(time.Millisecond), c.rate(), c.index, c.term, c.primary)
}

// putFile streams the first size bytes of f to the group as name, through
// primary, and waits until the stream is committed. The bar counts the
// bytes every peer has acknowledged.
func putFile(ctx context.Context, c *datastream.Client, f *os.File, size int64, name, primary string, bar *progress) (committed, error) {
	res := committed{primary: primary}
	start := time.Now()
	var opts []datastream.StreamOption
	if primary != "" {
		opts = append(opts, datastream.WithPrimary(primary))
	}
	out, err := c.Stream(ctx, []byte(name), opts...)
	if err != nil {
		return res, err
	}
	res.primary = out.Request().GetServerId()
	// Chunks sent and not yet acknowledged, oldest first. Replies come in
	// order, and a chunk's future is its last packet's.
	type sent struct {
		f *datastream.Future[*datastream.Reply]
		n int64
	}
	var pending []sent
	credit := func(s sent) error {
		if _, err := s.f.Wait(ctx); err != nil {
			return err
		}
		bar.add(s.n)
		return nil
	}
	for off := int64(0); off < size; {
		n := min(chunk, size-off)
		pending = append(pending, sent{out.WriteFile(ctx, f, off, n), n})
		off += n
		for len(pending) > 0 && isDone(pending[0].f) {
			if err := credit(pending[0]); err != nil {
				return res, err
			}
			pending = pending[1:]
		}
		if err := out.Err(); err != nil {
			return res, err
		}
	}
	for _, s := range pending {
		if err := credit(s); err != nil {
			return res, err
		}
	}
	reply, err := out.Close(ctx).Wait(ctx)
	if err != nil {
		return res, err
	}
	res.elapsed = time.Since(start)
	rcr := reply.RaftClientReply
	if !rcr.GetSuccess() {
		return res, fmt.Errorf("not committed: %s %s", rcr.GetErrorCode(), rcr.GetErrorMessage())
	}
	res.bytes = int64(reply.BytesWritten())
	if res.bytes != size {
		return res, fmt.Errorf("the group wrote %d bytes, the file has %d", res.bytes, size)
	}
	// After a failover the stream was committed by another peer.
	res.index, res.term, res.primary = rcr.GetLogIndex(), rcr.GetTerm(), reply.Server
	return res, nil
}

// hint adds what to check to an error a put failed with, when the error
// is one that a group not (yet) running gives.
func hint(err error) error {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w (is the group running? start it with pipestream serve)", err)
	case errors.Is(err, datastream.ErrSuccessorFailed):
		return fmt.Errorf("%w (is every peer up and ready? each serve prints a ready line)", err)
	case errors.Is(err, datastream.ErrNotLeader):
		return fmt.Errorf("%w (the group has no leader: is a majority of its peers up?)", err)
	case errors.Is(err, datastream.ErrBadRouting) && strings.Contains(err.Error(), "not in the group"):
		return fmt.Errorf("%w (has a peer joined or left? the group file must list the members: pipestream status shows them)", err)
	}
	return err
}

// isDone reports whether f has completed, without waiting.
func isDone[T any](f *datastream.Future[T]) bool {
	select {
	case <-f.Done():
		return true
	default:
		return false
	}
}
