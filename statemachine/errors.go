package statemachine

import "errors"

// Errors returned by Memory and FileStore; callers test them with errors.Is.
var (
	// ErrChannelClosed is returned by a DataChannel's Write or Sync after
	// Close or CleanUp, and by Close after CleanUp.
	ErrChannelClosed = errors.New("statemachine: data channel closed")

	// ErrDuplicateStream is returned by OpenStream for a stream that is
	// already open on this peer.
	ErrDuplicateStream = errors.New("statemachine: stream already open")

	// ErrLengthMismatch is returned by Link when the channel holds a
	// different number of bytes than the committed entry names. The data is
	// discarded rather than linked: it is not what the group committed.
	ErrLengthMismatch = errors.New("statemachine: stream length does not match entry")

	// ErrChecksumMismatch is returned when data does not have the CRC32C
	// its entry names. The data is not linked.
	ErrChecksumMismatch = errors.New("statemachine: checksum mismatch")

	// ErrBadName is returned by FileStore.OpenStream and CleanName for a file
	// name that cannot be stored safely under the store's data directory.
	ErrBadName = errors.New("statemachine: bad file name")

	// ErrMissing is returned by FileStore.Open for a name whose newest
	// committed entry has no copy on this peer. It is never served in the
	// place of an older version.
	ErrMissing = errors.New("statemachine: copy missing on this peer")

	// ErrLinkDeferred is returned by Link when the entry's data is here but
	// its link could not be recorded (for example, the disk is full). The
	// data is kept and the copy reported missing until a retry succeeds;
	// the entry is committed all the same.
	ErrLinkDeferred = errors.New("statemachine: link deferred")
)
