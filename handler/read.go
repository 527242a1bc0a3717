package handler

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"weak"

	"google.golang.org/protobuf/proto"

	"github.com/pipestream/pipestream/buffer"
	"github.com/pipestream/pipestream/codec/dscodec"
	"github.com/pipestream/pipestream/internal/serial"
	"github.com/pipestream/pipestream/pipeline"
	pb "github.com/pipestream/pipestream/proto/pipestreamv1"
	"github.com/pipestream/pipestream/statemachine"
	"github.com/pipestream/pipestream/transport"
)

// StageRead is the name of the stage that serves STREAM_READ and
// STREAM_LIST, right after StageFrame.
const StageRead = "read"

// Read limits, per connection.
const (
	// MaxReadLength bounds the length of one STREAM_READ; a longer one is
	// refused with LIMIT_EXCEEDED.
	MaxReadLength = 4 << 20
	// MaxConnReadBytes bounds the bytes of the reads one connection has
	// asked for and the server has not yet handed to the socket. A client
	// keeps within it by its window; a read past it is refused with
	// LIMIT_EXCEEDED, so a reader that stops reading costs the server at
	// most this much. It is below the transport's outbound bound, so reads
	// within it never overflow the connection's queue.
	MaxConnReadBytes = 32 << 20
	// readChunk is the most file bytes one reply carries.
	readChunk = 1 << 20
	// listChunk is about the most ListReply bytes one reply carries.
	listChunk = 256 << 10
)

// ReadServer is the stage that serves committed files (STREAM_READ) and the
// catalog (STREAM_LIST) from a state machine that is a statemachine.Reader.
// A connection whose first frame is one of those is a read connection: it
// carries reads only, and this stage answers every frame on it. On any
// other connection the stage passes every frame on untouched.
//
// Reads run on a serial executor of the connection, never on the event
// loop: the file is opened there and its bytes go to the socket as
// transport.FileRegion messages, sent with sendfile(2) where the transport
// can, so no read holds a whole file in memory. Each reply's prefix and its
// file region are written under one lock, the only writer of the
// connection.
type ReadServer struct {
	streams *Streams
	gauge   *atomic.Int64 // the server's read bytes in flight

	mode int // owned by the event loop
	hdr  pb.DataStreamPacketHeader

	pl       *pipeline.Pipeline
	exec     *serial.Queue[readTask]
	wmu      sync.Mutex // keeps each reply's prefix and body together
	inflight atomic.Int64
	closed   atomic.Bool
	// cache is the file the last read opened, owned by the executor: the
	// reads that follow it, for the same entry, use it without opening
	// the file again.
	cache *sharedHandle
}

const (
	modeUnknown = iota
	modeRead
	modeOther
)

type readTask struct {
	ph   *pb.DataStreamPacketHeader // a copy, for the replies to echo
	req  *pb.ReadRequest            // nil for a LIST
	size int64                      // bytes admitted for it
	end  bool                       // the connection ended: let go of the cache
}

// NewReadServer returns the read stage of one connection of the server
// whose stream table is s.
func NewReadServer(s *Streams) *ReadServer {
	return &ReadServer{streams: s, gauge: readGauge(s)}
}

// InFlight returns the bytes this connection's reads have been admitted for
// and not yet handed to the socket.
func (r *ReadServer) InFlight() int64 { return r.inflight.Load() }

// ReadBytesInFlight returns the bytes of reads the server has admitted, over
// all its connections, and not yet handed to the socket. Each connection's
// share is at most MaxConnReadBytes.
func (s *Streams) ReadBytesInFlight() int64 { return readGauge(s).Load() }

// readGauges holds each Streams' read gauge. The key is weak and the entry
// is removed once its Streams is collected, so the table does not grow
// with the servers a process ever ran.
var readGauges sync.Map // weak.Pointer[Streams] -> *atomic.Int64

func readGauge(s *Streams) *atomic.Int64 {
	k := weak.Make(s)
	if g, ok := readGauges.Load(k); ok {
		return g.(*atomic.Int64)
	}
	g, loaded := readGauges.LoadOrStore(k, new(atomic.Int64))
	if !loaded {
		runtime.AddCleanup(s, func(k weak.Pointer[Streams]) { readGauges.Delete(k) }, k)
	}
	return g.(*atomic.Int64)
}

func isReadType(t pb.DataStreamPacketHeader_Type) bool {
	return t == pb.DataStreamPacketHeader_STREAM_READ || t == pb.DataStreamPacketHeader_STREAM_LIST
}

// ChannelRead implements pipeline.ReadHandler.
func (r *ReadServer) ChannelRead(ctx *pipeline.Context, msg any) {
	frame, ok := msg.(*buffer.Buf)
	if !ok || r.mode == modeOther {
		ctx.FireChannelRead(msg)
		return
	}
	if r.mode == modeUnknown {
		_, err := dscodec.DecodePacketInto(frame.Bytes(), r.streams.cfg.MaxHeader, &r.hdr)
		if err != nil || !isReadType(r.hdr.GetType()) {
			r.mode = modeOther
			ctx.FireChannelRead(msg)
			return
		}
		r.mode = modeRead
		r.pl = ctx.Pipeline()
		r.exec = serial.New(r.run, &r.streams.wg)
	}
	defer frame.Release()
	t, e := r.admit(frame.Bytes())
	if e != nil {
		r.fail(t.ph, e)
		return
	}
	r.exec.Submit(t)
}

// admit decodes a request on a read connection and counts it against the
// connection's limit.
func (r *ReadServer) admit(frame []byte) (readTask, *pb.Error) {
	var t readTask
	off, err := dscodec.DecodePacketInto(frame, r.streams.cfg.MaxHeader, &r.hdr)
	if err != nil {
		return t, errorf(pb.ErrorCode_BAD_HEADER, "%v", err)
	}
	h := &r.hdr
	t.ph = &pb.DataStreamPacketHeader{
		ClientId: append([]byte(nil), h.GetClientId()...), Type: h.GetType(), StreamId: h.GetStreamId(),
		StreamOffset: h.GetStreamOffset(), DataLength: h.GetDataLength(), Options: h.GetOptions(), Crc32C: h.GetCrc32C(),
	}
	if !isReadType(h.GetType()) {
		return t, errorf(pb.ErrorCode_FORBIDDEN, "a read connection carries STREAM_READ and STREAM_LIST only, not %v", h.GetType())
	}
	if h.GetOptions() != 0 {
		return t, errorf(pb.ErrorCode_BAD_HEADER, "options %#x on a %v", h.GetOptions(), h.GetType())
	}
	if _, ok := r.streams.cfg.StateMachine.(statemachine.Reader); !ok {
		return t, errorf(pb.ErrorCode_FORBIDDEN, "this peer's state machine does not serve reads")
	}
	if h.GetType() == pb.DataStreamPacketHeader_STREAM_LIST {
		if off != len(frame) {
			return t, errorf(pb.ErrorCode_BAD_HEADER, "STREAM_LIST with a body")
		}
		return t, nil
	}
	req, err := DecodeReadRequest(frame[off:])
	if err != nil {
		return t, errorf(pb.ErrorCode_BAD_HEADER, "%v", err)
	}
	if req.GetLength() > MaxReadLength {
		return t, errorf(pb.ErrorCode_LIMIT_EXCEEDED, "read of %d bytes exceeds the limit of %d", req.GetLength(), MaxReadLength)
	}
	n := int64(req.GetLength())
	if have := r.inflight.Load(); have+n > MaxConnReadBytes {
		return t, errorf(pb.ErrorCode_LIMIT_EXCEEDED, "connection has %d read bytes unsent, its limit is %d", have, MaxConnReadBytes)
	}
	t.req, t.size = req, n
	r.account(n)
	return t, nil
}

// DecodeReadRequest parses the body of a STREAM_READ and checks its name.
func DecodeReadRequest(body []byte) (*pb.ReadRequest, error) {
	req := new(pb.ReadRequest)
	if err := proto.Unmarshal(body, req); err != nil {
		return nil, errors.New("handler: read request does not decode: " + err.Error())
	}
	name, err := statemachine.CleanName(req.GetName())
	if err != nil {
		return nil, err
	}
	req.Name = name
	return req, nil
}

func (r *ReadServer) account(n int64) {
	r.inflight.Add(n)
	r.gauge.Add(n)
}

// ChannelInactive stops the connection's reads: those queued end without
// touching the disk.
func (r *ReadServer) ChannelInactive(ctx *pipeline.Context) {
	r.closed.Store(true)
	if r.exec != nil {
		r.exec.Submit(readTask{end: true})
		r.exec.Close()
	}
	ctx.FireChannelInactive()
}

// run serves one request on the executor.
func (r *ReadServer) run(t readTask) {
	if t.end {
		if r.cache != nil {
			r.cache.release()
			r.cache = nil
		}
		return
	}
	if t.req == nil || t.req.GetIndex() == 0 {
		// A read that names its version gets that version or NOT_FOUND
		// wherever it goes; one that does not would get this peer's
		// newest, which may be older than the group's.
		if e := r.behind(); e != nil {
			r.fail(t.ph, e)
			r.account(-t.size)
			return
		}
	}
	if t.req == nil {
		r.list(t)
		return
	}
	sent := r.read(t)
	r.account(sent - t.size) // what was admitted and never queued
}

// write queues a frame, and a body for it if not nil, as one. A write that
// fails leaves the connection unusable, as writeReply does.
func (r *ReadServer) write(frame *buffer.Buf, body any) bool {
	r.wmu.Lock()
	err := r.pl.Write(frame)
	if body != nil {
		if err == nil {
			err = r.pl.Write(body)
		} else {
			pipeline.Release(body)
		}
	}
	r.wmu.Unlock()
	if err != nil {
		_ = r.pl.Close()
		return false
	}
	return true
}

// fail answers the request with header ph with e, its final reply.
func (r *ReadServer) fail(ph *pb.DataStreamPacketHeader, e *pb.Error) {
	h := &pb.DataStreamReplyHeader{
		PacketHeader: ph, ErrorCode: e.Code, ErrorMessage: e.Message,
		ServerId: r.streams.cfg.ID, Last: true,
	}
	frame, err := dscodec.EncodePacket(h, nil)
	if err != nil {
		_ = r.pl.Close()
		return
	}
	if r.write(frame, nil) {
		_ = r.pl.Flush()
	}
}

// read sends the request's bytes and returns how many it queued.
func (r *ReadServer) read(t readTask) (sent int64) {
	if r.closed.Load() {
		return 0
	}
	req := t.req
	h, err := r.open(req)
	if err != nil {
		r.fail(t.ph, readError(err))
		return 0
	}
	hd := h.h
	info := hd.Info()
	switch {
	case req.GetIndex() != 0 && req.GetIndex() != info.Index:
		r.fail(t.ph, errorf(pb.ErrorCode_NOT_FOUND, "%q is at index %d here, not %d", info.Name, info.Index, req.GetIndex()))
		return 0
	case req.GetOffset() > info.Length:
		r.fail(t.ph, errorf(pb.ErrorCode_OUT_OF_RANGE, "offset %d is beyond %q's %d bytes", req.GetOffset(), info.Name, info.Length))
		return 0
	}
	end := req.GetOffset() + min(req.GetLength(), info.Length-req.GetOffset())
	// A file region is only worth it where the transport sends it with
	// sendfile; elsewhere it would read the file inside write, under wmu,
	// which the event loop takes to answer errors. Read it here instead.
	var f interface{ File() *os.File }
	if fh, ok := hd.(statemachine.FileHandle); ok && r.sendsFiles() {
		f = fh
	}
	fi := FileInfoOf(info)
	for off := req.GetOffset(); ; {
		if r.closed.Load() {
			return sent
		}
		n := int64(min(readChunk, end-off))
		rh := &pb.DataStreamReplyHeader{
			PacketHeader: t.ph, Success: true, ServerId: r.streams.cfg.ID,
			ReadOffset: off, Last: off+uint64(n) == end, File: fi,
		}
		fi = nil // the first reply only
		prefix, err := dscodec.EncodePacketPrefix(rh, int(n))
		if err != nil {
			r.fail(t.ph, errorf(pb.ErrorCode_INTERNAL, "encode read reply: %v", err))
			return sent
		}
		var body any
		if n > 0 {
			if f != nil {
				h.retain()
				body = &transport.FileRegion{File: f.File(), Offset: int64(off), Count: n, OnRelease: func() {
					r.account(-n)
					h.release()
				}}
			} else {
				b := buffer.Get(int(n))
				// io.ReaderAt may report io.EOF with the last byte: only a
				// short read fails.
				if m, err := hd.ReadAt(b.Bytes(), int64(off)); m < int(n) {
					b.Release()
					prefix.Release()
					if err == nil || errors.Is(err, io.EOF) {
						err = io.ErrUnexpectedEOF
					}
					r.fail(t.ph, errorf(pb.ErrorCode_STATE_MACHINE, "read %q at %d of its %d bytes: %v", info.Name, off, info.Length, err))
					return sent
				}
				body = b
			}
		}
		ok := r.write(prefix, body)
		if f == nil && n > 0 {
			r.account(-n) // the buffer is the outbound queue's now
		}
		sent += n
		if !ok {
			return sent
		}
		_ = r.pl.Flush()
		off += uint64(n)
		if off == end {
			return sent
		}
	}
}

// open returns the handle of the file req reads: the cached one if req
// names its entry, else a new one, which replaces it in the cache. A read
// that names no index always opens the name's newest entry.
func (r *ReadServer) open(req *pb.ReadRequest) (*sharedHandle, error) {
	if c := r.cache; c != nil && req.GetIndex() != 0 {
		if info := c.h.Info(); info.Index == req.GetIndex() && info.Name == req.GetName() {
			return c, nil
		}
	}
	hd, err := r.streams.cfg.StateMachine.(statemachine.Reader).OpenRead(req.GetName())
	if err != nil {
		return nil, err
	}
	if r.cache != nil {
		r.cache.release()
	}
	r.cache = newSharedHandle(hd)
	return r.cache, nil
}

// sendsFiles reports whether the connection sends file regions with
// sendfile(2).
func (r *ReadServer) sendsFiles() bool {
	ch, ok := r.pl.Transport().(transport.Channel)
	return ok && transport.SendsFileRegions(ch)
}

// behind returns NOT_CAUGHT_UP while this peer's committer says its state
// machine may lag its group (statemachine.Freshness), and nil otherwise.
func (r *ReadServer) behind() *pb.Error {
	if f, ok := r.streams.commitHook().(statemachine.Freshness); ok && !f.Fresh() {
		return errorf(pb.ErrorCode_NOT_CAUGHT_UP, "%s has not caught up with its group; it could serve an older version", r.streams.cfg.ID)
	}
	return nil
}

// readError maps a state machine's OpenRead failure to its wire code.
func readError(err error) *pb.Error {
	switch {
	case errors.Is(err, statemachine.ErrMissing):
		return errorf(pb.ErrorCode_MISSING, "%v", err)
	case errors.Is(err, fs.ErrNotExist):
		return errorf(pb.ErrorCode_NOT_FOUND, "%v", err)
	case errors.Is(err, statemachine.ErrBadName):
		return errorf(pb.ErrorCode_BAD_HEADER, "%v", err)
	}
	return errorf(pb.ErrorCode_STATE_MACHINE, "%v", err)
}

// FileInfoOf is the wire form of a stored file's entry.
func FileInfoOf(sf statemachine.StoredFile) *pb.FileInfo {
	fi := &pb.FileInfo{
		Name: sf.Name, Length: sf.Length, Index: sf.Index, Term: sf.Term, Missing: sf.Missing,
		ClientId: []byte(sf.Key.ClientID), StreamId: sf.Key.StreamID,
	}
	if !sf.Missing {
		fi.Sha256 = append([]byte(nil), sf.SHA256[:]...)
	}
	return fi
}

// list sends the catalog in replies of about listChunk bytes each.
func (r *ReadServer) list(t readTask) {
	if r.closed.Load() {
		return
	}
	files := r.streams.cfg.StateMachine.(statemachine.Reader).List()
	for i := 0; ; {
		part := &pb.ListReply{}
		size := 0
		for ; i < len(files) && size < listChunk; i++ {
			fi := FileInfoOf(files[i])
			part.Files = append(part.Files, fi)
			size += proto.Size(fi) + 4
		}
		body, err := proto.Marshal(part)
		if err != nil {
			r.fail(t.ph, errorf(pb.ErrorCode_INTERNAL, "encode list: %v", err))
			return
		}
		rh := &pb.DataStreamReplyHeader{PacketHeader: t.ph, Success: true, ServerId: r.streams.cfg.ID, Last: i == len(files)}
		frame, err := dscodec.EncodePacket(rh, body)
		if err != nil {
			r.fail(t.ph, errorf(pb.ErrorCode_INTERNAL, "encode list reply: %v", err))
			return
		}
		if !r.write(frame, nil) || rh.Last {
			_ = r.pl.Flush()
			return
		}
	}
}

// sharedHandle closes a read handle once the read and every file region
// it queued are done with it.
type sharedHandle struct {
	h    statemachine.ReadHandle
	refs atomic.Int32
}

func newSharedHandle(h statemachine.ReadHandle) *sharedHandle {
	s := &sharedHandle{h: h}
	s.refs.Store(1)
	return s
}

func (s *sharedHandle) retain() { s.refs.Add(1) }

func (s *sharedHandle) release() {
	if s.refs.Add(-1) == 0 {
		_ = s.h.Close()
	}
}
