// Package datastream is the client of pipestream's DataStream protocol
// (docs/protocol.md): it streams bytes to a primary peer, which writes them
// locally and forwards them along the stream's routing table, and commits
// the stream with one Raft entry when it is closed, so the bulk bytes never
// pass through the Raft log.
//
//	c, err := datastream.NewClient(peers)
//	defer c.Close()
//	out, err := c.Stream(ctx, []byte("name-of-the-blob"))
//	out.WriteAsync(ctx, chunk)             // as many times as needed
//	reply, err := out.Close(ctx).Wait(ctx) // reply.RaftClientReply has the log index
//
// # Writes and replies
//
// Every write returns a Future of the primary's reply, given once every
// peer has the packet. Replies come back in order. A failed packet fails
// the stream: every pending and later future gets the same error, and so
// does RaftClientReplyFuture. WriteAsync copies the caller's bytes;
// WriteBufAsync sends a pooled buffer as it is; Send does too, without a
// future, and allocates nothing; WriteFile sends a file region with
// sendfile(2) where the transport can; Writer is an io.WriteCloser for
// io.Copy. A future's Done channel, Wait and OnDone callback (on a
// goroutine of its own) all give the same result.
//
// A CLOSE's reply comes once the stream's entry is committed; its
// CommitInfos show how far each peer had applied the log. WaitApplied
// waits until every peer has applied the entry (and so linked the file),
// asking each for the name's entry on the read path.
//
// # Flow control
//
// Each stream has a window of bytes and packets in flight (WithWindow) and
// the client a budget over all its streams (WithMaxOutstanding). A write
// that does not fit waits, up to its ctx, so a writer faster than the peers
// blocks instead of growing memory.
//
// # Connections and lifetimes
//
// A Client keeps one connection per peer, dialed by the first stream to
// that peer and shared by every stream; it is safe for concurrent use. A
// stream's ctx governs it: cancelling it aborts the stream on every peer.
// A connection that drops fails its streams with ErrConnectionLost; a
// stream without a reply for the reply timeout fails with ErrReplyTimeout.
// With failover (WithFailover, on for a group of several peers) such a
// stream moves instead: it resumes on another peer of its routing table
// from the last offset every peer acknowledged, sending the packets not
// acknowledged again, and fails only when no peer is left to take it. A
// stream its failed primary committed completes as committed when the
// peer it resumes on has applied the entry.
// Client.Close fails what is open and ends every goroutine the client
// started.
//
// # Reads
//
// Open reads a committed file back from any peer, by name: the Reader is an
// io.ReadCloser (and io.WriterTo, for io.Copy) and an io.ReaderAt. It asks
// for ranges of at most a request size, with a window of them outstanding
// (WithReadWindow), so a reader that stops reading stops asking. A peer
// that fails mid-read (a lost connection, an error reply, no reply within
// WithReadTimeout) is replaced by the next (WithReadPeer), at the same
// offset and for the same committed entry, a bounded number of times
// (WithReadAttempts). A peer that has the entry but no copy answers
// ErrMissing, never an older version; an unknown name is ErrNotFound.
// List returns one peer's catalog. Each Reader has a connection of its
// own, apart from the streams'.
//
// # Errors
//
// Errors a server reports are *pb.Error values: errors.Is matches them
// against ErrUnknownStream and its siblings by code, and errors.As gives
// the code and the server's message. A failed reply that carries a
// RaftClientReply (a failed CLOSE) is a *CloseError around that error, for
// the reply's leader hint, log index and term. A routing table that cannot
// carry the stream fails Stream with ErrBadRouting before anything is
// sent. Errors the client detects itself are
// ErrClosed, ErrConnectionLost, ErrReplyTimeout and ErrTooLarge, or the
// ctx's error.
package datastream
