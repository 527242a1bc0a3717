package datastream

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pipestream/pipestream/group"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
)

// How WaitApplied polls a peer that has not applied the entry yet: the
// first poll follows the CLOSE reply soon, later ones back off, so that a
// peer that lags for long costs a request every waitPollMax.
const (
	waitPollFirst = 5 * time.Millisecond
	waitPollMax   = 200 * time.Millisecond
)

// CommitInfos returns each peer's progress through the Raft log as the
// primary learned it right after the commit: set on a successful CLOSE's
// reply only, and without the peers the primary could not reach in time.
func (r *Reply) CommitInfos() []*pb.CommitInfo { return r.RaftClientReply.GetCommitInfos() }

// WaitApplied waits for the stream to commit and then for each of peers
// (by default every peer of the client) to apply its entry, and so to
// have linked it, or reported it missing (FileInfo.Missing); a CLOSE
// acknowledges the commit, which the followers may apply later. It
// returns the commit's error, or ctx's once it ends, naming the peers
// that had not applied.
//
// Peers whose CommitInfo in the CLOSE reply shows the entry applied are
// not asked again; see Client.WaitApplied for how the others are.
func (o *Output) WaitApplied(ctx context.Context, peers ...string) error {
	rcr, err := o.raft.Wait(ctx)
	if err != nil {
		return err
	}
	name := string(o.req.GetMessage())
	if name == "" {
		// The name a FileStore gives a stream without one.
		name = hex.EncodeToString(o.c.id) + "/" + strconv.FormatUint(o.id, 10)
	}
	return o.c.waitApplied(ctx, name, rcr.GetLogIndex(), rcr.GetCommitInfos(), peers)
}

// WaitApplied waits until each of peers (by default every peer of the
// client) has applied the committed entry at index that wrote name, or a
// later entry of name. It asks each peer for name's newest entry on a read
// connection, as Open does, polling with a backoff until the entry's index
// is at least index: Raft applies in log order, so a peer whose newest
// entry of name is at or past index has applied index.
//
// It goes by name because the client's connections are all it has: a
// peer's Raft status is served on its commit address, which a client does
// not know, while the read path answers with the entry's index. So the
// peers' state machines must serve reads (a FileStore); a peer that
// refuses (ErrForbidden) or a bad name (ErrBadHeader) ends the wait at
// once. A peer that is down or does not know the name yet is asked again
// until ctx ends.
func (c *Client) WaitApplied(ctx context.Context, name string, index uint64, peers ...string) error {
	return c.waitApplied(ctx, name, index, nil, peers)
}

func (c *Client) waitApplied(ctx context.Context, name string, index uint64, infos []*pb.CommitInfo, ids []string) error {
	if len(ids) == 0 {
		for _, p := range c.peers {
			ids = append(ids, p.ID)
		}
	}
	peers := make([]group.Member, 0, len(ids))
	for _, id := range ids {
		p, ok := c.peer(id)
		if !ok {
			return fmt.Errorf("datastream: wait for %q on %q, not a peer of the group", name, id)
		}
		peers = append(peers, p)
	}
	applied := make(map[string]bool, len(infos))
	for _, ci := range infos {
		if ci.GetAppliedIndex() >= index {
			applied[ci.GetServerId()] = true
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs = make(map[string]error, len(peers))
	)
	for _, p := range peers {
		if applied[p.ID] {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.pollApplied(ctx, p, name, index); err != nil {
				mu.Lock()
				errs[p.ID] = err
				mu.Unlock()
				if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
					cancel() // this peer will never answer: the wait is over
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) == 0 {
		return nil
	}
	var fatalErr error
	lagging := make([]string, 0, len(errs))
	for _, p := range peers {
		if err, ok := errs[p.ID]; ok {
			lagging = append(lagging, p.ID)
			if fatalErr == nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				fatalErr = err
			}
		}
	}
	if fatalErr != nil {
		return fmt.Errorf("datastream: wait for %q at index %d: %w", name, index, fatalErr)
	}
	return fmt.Errorf("datastream: wait for %q at index %d: not applied on %s: %w",
		name, index, strings.Join(lagging, ", "), errs[lagging[0]])
}

// pollApplied asks p for name's newest entry until its index reaches
// index. It returns nil then, ctx's error with the peer's last answer, or
// an error that asking again would not change.
func (c *Client) pollApplied(ctx context.Context, p group.Member, name string, index uint64) error {
	var (
		rc   *readConn
		last error
	)
	defer func() {
		if rc != nil {
			rc.close()
		}
	}()
	wait := waitPollFirst
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			if last == nil {
				return ctx.Err()
			}
			return fmt.Errorf("%w (%s last said: %v)", ctx.Err(), p.ID, last)
		case <-timer.C:
		}
		if rc == nil {
			rc, last = c.dialRead(ctx, p)
		}
		if rc != nil {
			var at uint64
			at, last = c.appliedAt(ctx, rc, name)
			switch {
			case last == nil && at >= index:
				return nil
			case last == nil:
				last = fmt.Errorf("%s holds %q at index %d", p.ID, name, at)
			case errors.Is(last, ErrForbidden) || errors.Is(last, ErrBadHeader) || errors.Is(last, ErrClosed):
				return fmt.Errorf("%s: %w", p.ID, last)
			case !errors.Is(last, ErrNotFound):
				rc.close() // a lost connection, say: dial again
				rc = nil
			}
		}
		timer.Reset(wait)
		wait = min(2*wait, waitPollMax)
	}
}

// appliedAt returns the index of name's newest entry on rc's peer. A stat
// of a name whose copy is missing there answers with ErrMissing alone, so
// the index comes from the peer's catalog then.
func (c *Client) appliedAt(ctx context.Context, rc *readConn, name string) (uint64, error) {
	call, err := rc.startRead(name, 0, 0, 0)
	if err != nil {
		return 0, err
	}
	err = call.wait(ctx, DefaultReadTimeout)
	info := call.info
	call.cancel()
	if errors.Is(err, ErrMissing) {
		return c.catalogIndex(ctx, rc, name)
	}
	if err != nil {
		return 0, err
	}
	if info == nil {
		return 0, pb.Errorf(pb.ErrorCode_INTERNAL, "%s answered a read without the file's entry", rc.peer.ID)
	}
	return info.GetIndex(), nil
}

func (c *Client) catalogIndex(ctx context.Context, rc *readConn, name string) (uint64, error) {
	call, err := rc.start(pb.DataStreamPacketHeader_STREAM_LIST, nil, 0, 0)
	if err != nil {
		return 0, err
	}
	defer call.cancel()
	if err := call.wait(ctx, DefaultReadTimeout); err != nil {
		return 0, err
	}
	for _, fi := range call.files {
		if fi.GetName() == name {
			return fi.GetIndex(), nil
		}
	}
	return 0, pb.Errorf(pb.ErrorCode_NOT_FOUND, "%q is not in %s's catalog", name, rc.peer.ID)
}
