package pair

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/store"
	"vaultnode/internal/pack"
)

// Copies between members (an upload's streamed copy, a copy made again at
// the commit, a catch-up, lack) go over a raw TLS stream of their own
// ('C' after the handshake), length-framed, rather than HTTP/2: HTTP/2's
// framing, flow control and the copies between its buffers took about a
// fifth of a copy's CPU on both members. docs/protocol.md, "Copies between
// members", is the wire format; this file is both ends of it.
//
// A connection carries one request at a time, then the next:
//
//	request  = op company(1 + n bytes) sweep(u64)  op: 'E' entries, 'L' lack
//	entries  = { 'e' len(u32) whole sealed entries | 'c' } 'q'
//	lack     = count(u32) ids(32 bytes each)
//	answer   = 'k' [stored(u32) | bitmap] | 'x' len(u16) message
//
// Each 'c' asks the member to commit (sync and index) what came since the
// last one and answer it; the leader sends on meanwhile, so a catch-up
// streams without a round trip per commit. A connection cut before a 'c'
// was answered leaves nothing of that part on the member.
const streamCopy = 'C'

const (
	copyOpEntries = 'E'
	copyOpLack    = 'L'

	frameEntries = 'e'
	frameCommit  = 'c'
	frameEnd     = 'q'

	answerOK    = 'k'
	answerError = 'x'
)

// Bounds of the copy stream's decoder.
const (
	// MaxCopyFrame bounds one entries frame: a whole entry of the
	// largest chunk fits, and a catch-up's run of entries read at once.
	MaxCopyFrame = 16 << 20
	// MaxCopyCommit bounds what one commit of a copy may carry.
	MaxCopyCommit = MaxEntriesBody
	maxCompany    = 64
	maxAnswerMsg  = 4096
)

// ErrCopyStream is a copy stream that broke its format or a bound.
var ErrCopyStream = errors.New("bad copy stream")

// copyAnswerTimeout bounds the wait for a member's answer to a commit (it
// syncs up to MaxCopyCommit) or a lack question. A dead member is noticed
// sooner by the connection's keepalives and TCP_USER_TIMEOUT.
const copyAnswerTimeout = 2 * time.Minute

// copyIdle is how long a member keeps a copy connection that carries no
// request; the leader reuses one idle for at most half of it.
const copyIdle = 2 * time.Minute

// copyConn is the leader's end of one copy connection: a copy stream
// ('C': conn is the TLS connection) or a raw one ('D': conn is the TCP
// connection beneath, sw and sr seal and open its records).
type copyConn struct {
	addr string
	conn net.Conn      // closes, deadlines
	raw  *bufConn      // 'C': under conn, its writes go out at flush
	bw   *bufio.Writer // 'C': over conn; 'D': the raw writes
	br   *bufio.Reader // 'C': over conn; 'D': the raw reads
	sw   *sealedWriter // 'D'
	sr   *sealedReader // 'D'
	used time.Time

	hs     []int // addRaw's scratch
	bodies [][]byte
}

// meta is where a request's bytes (not entry bodies) are written.
func (cc *copyConn) meta() interface {
	io.Writer
	io.ByteWriter
} {
	if cc.sw != nil {
		return cc.sw
	}
	return cc.bw
}

// answers is where the member's answers are read.
func (cc *copyConn) answers() interface {
	io.Reader
	io.ByteReader
} {
	if cc.sr != nil {
		return cc.sr
	}
	return cc.br
}

// copyPool keeps idle copy connections per member address.
type copyPool struct {
	conf *tls.Config
	// raw: dial raw copy streams ('D'), falling back to 'C' for a
	// member that refuses them (an older version) for rawRefusedFor.
	raw bool
	mu  sync.Mutex
	// noRaw holds when each member that refused 'D' is asked again.
	noRaw map[string]time.Time
	idle  map[string][]*copyConn
}

func newCopyPool(conf *tls.Config) *copyPool {
	return &copyPool{conf: conf, raw: true, noRaw: map[string]time.Time{}, idle: map[string][]*copyConn{}}
}

// get returns an idle connection to addr that is still open, or a new one.
func (p *copyPool) get(ctx context.Context, addr string) (*copyConn, error) {
	for {
		p.mu.Lock()
		cs := p.idle[addr]
		var cc *copyConn
		if n := len(cs); n > 0 {
			cc, p.idle[addr] = cs[n-1], cs[:n-1]
		}
		p.mu.Unlock()
		if cc == nil {
			break
		}
		if cc.alive() {
			return cc, nil
		}
		cc.conn.Close()
	}
	p.mu.Lock()
	raw := p.raw && time.Now().After(p.noRaw[addr])
	p.mu.Unlock()
	if raw {
		cc, err := dialRaw(ctx, addr, 5*time.Second, p.conf)
		if err == nil {
			return cc, nil
		}
		if !errors.Is(err, errRawRefused) {
			return nil, fmt.Errorf("%w: %w", errUnreachable, err)
		}
		p.mu.Lock()
		p.noRaw[addr] = time.Now().Add(rawRefusedFor)
		p.mu.Unlock()
	}
	c, bc, err := dialBuffered(ctx, addr, 5*time.Second, p.conf, streamCopy, true)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errUnreachable, err)
	}
	return &copyConn{addr: addr, conn: c, raw: bc, bw: bufio.NewWriterSize(c, 64<<10), br: bufio.NewReaderSize(c, 4096)}, nil
}

// alive reports whether an idle connection was not closed by the member
// meanwhile (a restart): nothing may be waiting to be read on it.
func (cc *copyConn) alive() bool {
	if time.Since(cc.used) > copyIdle/2 {
		return false
	}
	cc.conn.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err := cc.br.Peek(1)
	cc.conn.SetReadDeadline(time.Time{})
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// put keeps a connection whose request ended cleanly for the next one.
func (p *copyPool) put(cc *copyConn) {
	cc.used = time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle[cc.addr]) >= 4 {
		cc.conn.Close()
		return
	}
	p.idle[cc.addr] = append(p.idle[cc.addr], cc)
}

func (p *copyPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, cs := range p.idle {
		for _, cc := range cs {
			cc.conn.Close()
		}
	}
	p.idle = map[string][]*copyConn{}
}

// flush sends everything written.
func (cc *copyConn) flush() error {
	if cc.sw != nil {
		return cc.sw.Flush()
	}
	if err := cc.bw.Flush(); err != nil {
		return err
	}
	return cc.raw.Flush()
}

// writeRequest starts a request on the connection.
func (cc *copyConn) writeRequest(op byte, company string, sweep uint64) error {
	var b [1 + 1 + maxCompany + 8]byte
	b[0], b[1] = op, byte(len(company))
	n := 2 + copy(b[2:], company)
	binary.LittleEndian.PutUint64(b[n:], sweep)
	_, err := cc.meta().Write(b[:n+8])
	return err
}

// readAnswer reads one answer; its payload (the stored count or a lack
// bitmap, n bytes) into dst.
func (cc *copyConn) readAnswer(dst []byte) error {
	cc.conn.SetReadDeadline(time.Now().Add(copyAnswerTimeout))
	defer cc.conn.SetReadDeadline(time.Time{})
	br := cc.answers()
	t, err := br.ReadByte()
	if err != nil {
		return fmt.Errorf("read the member's answer: %w", err)
	}
	switch t {
	case answerOK:
		if _, err := io.ReadFull(br, dst); err != nil {
			return fmt.Errorf("read the member's answer: %w", err)
		}
		return nil
	case answerError:
		var l [2]byte
		if _, err := io.ReadFull(br, l[:]); err != nil {
			return fmt.Errorf("read the member's answer: %w", err)
		}
		n := binary.LittleEndian.Uint16(l[:])
		if n > maxAnswerMsg {
			return fmt.Errorf("%w: an error answer of %d bytes, over %d", ErrCopyStream, n, maxAnswerMsg)
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(br, msg); err != nil {
			return fmt.Errorf("read the member's answer: %w", err)
		}
		return &memberError{msg: string(msg)}
	default:
		return fmt.Errorf("%w: answer type %q", ErrCopyStream, t)
	}
}

// memberError is an error the member answered.
type memberError struct{ msg string }

func (e *memberError) Error() string { return "the member refused the copy: " + e.msg }

// entriesReq is one entries request in progress on the leader.
type entriesReq struct {
	pool    *copyPool
	cc      *copyConn
	stop    func() bool // the context's watch
	pending int         // commits sent, not yet answered
	err     error       // the first failure; the connection is not reused
	member  string
}

// openEntries starts an entries request to the member at addr.
func (p *copyPool) openEntries(ctx context.Context, member, addr, company string, sweep uint64) (*entriesReq, error) {
	cc, err := p.get(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("copy entries to %s: %w", member, err)
	}
	q := &entriesReq{pool: p, cc: cc, member: member}
	q.stop = context.AfterFunc(ctx, func() { cc.conn.Close() })
	if err := cc.writeRequest(copyOpEntries, company, sweep); err != nil {
		q.fail(err)
		return nil, q.err
	}
	return q, nil
}

func (q *entriesReq) fail(err error) error {
	if q.err == nil {
		var me *memberError
		if !errors.As(err, &me) {
			// The member may have answered why before it closed.
			q.cc.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if rerr := q.cc.readAnswer(make([]byte, 4)); errors.As(rerr, &me) {
				err = me
			} else {
				err = fmt.Errorf("%w: %w", errUnreachable, err)
			}
		}
		q.err = fmt.Errorf("copy entries to %s: %w", q.member, err)
		q.cc.conn.Close()
	}
	return q.err
}

// add sends whole sealed entries as one frame.
func (q *entriesReq) add(entries []byte) (int, error) {
	if q.err != nil {
		return 0, q.err
	}
	if q.cc.sw != nil {
		n, err := q.cc.addRaw(entries)
		if err != nil {
			return 0, q.fail(err)
		}
		return n, nil
	}
	n := 0
	for at := 0; at < len(entries); n++ {
		_, end, err := nextEntry(entries, at)
		if err != nil {
			return 0, q.fail(fmt.Errorf("copy an entry: %w", err))
		}
		at = end
	}
	var h [5]byte
	h[0] = frameEntries
	binary.LittleEndian.PutUint32(h[1:], uint32(len(entries)))
	if _, err := q.cc.bw.Write(h[:]); err != nil {
		return 0, q.fail(err)
	}
	if _, err := q.cc.bw.Write(entries); err != nil {
		return 0, q.fail(err)
	}
	return n, nil
}

// nextEntry parses the sealed entry at buf[at:] and returns its header
// and where it ends; an entry whose body runs past buf is ErrCopyStream.
func nextEntry(buf []byte, at int) (pack.EntryHeader, int, error) {
	h, err := pack.ParseEntryHeader(buf[at:])
	if err != nil {
		return h, 0, err
	}
	end := at + pack.EntryHeaderSize + int(h.BodyLen)
	if end > len(buf) {
		return h, 0, fmt.Errorf("%w: entry %x runs past its buffer", ErrCopyStream, h.ID[:8])
	}
	return h, end, nil
}

// commit asks the member to commit what it got since the last commit;
// the answer is read by wait.
func (q *entriesReq) commit() error {
	if q.err != nil {
		return q.err
	}
	if err := q.cc.meta().WriteByte(frameCommit); err != nil {
		return q.fail(err)
	}
	if err := q.cc.flush(); err != nil {
		return q.fail(err)
	}
	q.pending++
	return nil
}

// wait reads the answer to the oldest unanswered commit.
func (q *entriesReq) wait() error {
	if q.err != nil {
		return q.err
	}
	if q.pending == 0 {
		return nil
	}
	var n [4]byte
	if err := q.cc.readAnswer(n[:]); err != nil {
		return q.fail(err)
	}
	q.pending--
	return nil
}

// end waits for every commit's answer and ends the request; the
// connection serves the next one.
func (q *entriesReq) end() error {
	for q.pending > 0 {
		if err := q.wait(); err != nil {
			q.close()
			return err
		}
	}
	if q.err == nil {
		if err := q.cc.meta().WriteByte(frameEnd); err != nil {
			q.fail(err)
		} else if err := q.cc.flush(); err != nil {
			q.fail(err)
		}
	}
	err := q.err
	q.close()
	return err
}

// abort cuts the request: the member keeps nothing it had not committed.
func (q *entriesReq) abort() {
	if q.err == nil {
		q.err = errAborted
		q.cc.conn.Close()
	}
	q.close()
}

func (q *entriesReq) close() {
	if !q.stop() && q.err == nil {
		q.err = context.Canceled // the watch closed the connection
	}
	if q.err == nil {
		q.pool.put(q.cc)
		q.err = errors.New("request ended")
		return
	}
	q.cc.conn.Close()
}

// lack asks the member at addr which of ids it lacks: a bitmap, bit i set
// when it lacks ids[i].
func (p *copyPool) lack(ctx context.Context, member, addr, company string, sweep uint64, ids []byte) ([]byte, error) {
	cc, err := p.get(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("ask %s what it lacks: %w", member, err)
	}
	stop := context.AfterFunc(ctx, func() { cc.conn.Close() })
	bm := make([]byte, (len(ids)/32+7)/8)
	err = cc.writeRequest(copyOpLack, company, sweep)
	if err == nil {
		var n [4]byte
		binary.LittleEndian.PutUint32(n[:], uint32(len(ids)/32))
		cc.meta().Write(n[:])
		cc.meta().Write(ids)
		err = cc.flush()
	}
	if err == nil {
		err = cc.readAnswer(bm)
	}
	if !stop() && err == nil {
		err = context.Canceled
	}
	if err != nil {
		cc.conn.Close()
		return nil, fmt.Errorf("ask %s what it lacks: %w", member, err)
	}
	p.put(cc)
	return bm, nil
}

// ServeCopy serves the copy requests of one connection from the leader
// until it ends.
func (r *Replicator) ServeCopy(c net.Conn) {
	defer c.Close()
	w := newMemberWire(c)
	for {
		// Between requests a connection idles at most copyIdle (the
		// leader reuses one idle for less).
		w.c.SetReadDeadline(time.Now().Add(copyIdle))
		op, err := w.meta.ReadByte()
		w.c.SetReadDeadline(time.Time{})
		if err != nil && !errors.Is(err, ErrCopyStream) {
			return // the leader closed it, or cut a request short
		}
		var company string
		var sweep uint64
		if err == nil {
			company, sweep, err = readRequestHead(w.meta)
		}
		if err == nil && !r.stored.Load() {
			err = errors.New("this member is starting: its store is not open yet")
		}
		if err == nil {
			err = r.waitSweep(sweep)
		}
		if err == nil {
			switch op {
			case copyOpEntries:
				err = r.serveEntriesStream(w, company)
			case copyOpLack:
				err = r.serveLackStream(w, company)
			default:
				err = fmt.Errorf("%w: unknown request %q", ErrCopyStream, op)
			}
		}
		if err == nil {
			continue
		}
		if errors.Is(err, errCutShort) {
			return
		}
		r.log.Warn("copy from the leader refused", zap.String("company", company), zap.Error(err))
		writeError(w.out, err)
		// Read on a little, so the leader's writes in flight do not
		// reset the connection before it read why.
		w.c.SetReadDeadline(time.Now().Add(2 * time.Second))
		io.Copy(io.Discard, io.LimitReader(w.in, 2*MaxCopyFrame))
		return
	}
}

// memberWire is the member's end of a copy stream ('C') or a raw copy
// stream ('D').
type memberWire struct {
	c    net.Conn      // deadlines; a frame's bulk is read from it past in's buffer
	in   *bufio.Reader // what arrives on c: decrypted ('C') or raw ('D')
	meta metaReader    // in, or the sealed records read off it
	out  answerWriter  // the answers
	sr   *sealedReader // 'D'
	rf   rawFrame      // 'D': the frame being read
}

type metaReader interface {
	io.Reader
	io.ByteReader
}

type answerWriter interface {
	io.Writer
	Flush() error
}

func newMemberWire(c net.Conn) *memberWire {
	if rc, ok := c.(*rawCopyConn); ok {
		w := &memberWire{c: rc.Conn, in: rc.r}
		w.sr = &sealedReader{r: rc.r, aead: rc.toMember}
		w.meta = w.sr
		w.out = &sealedWriter{w: bufio.NewWriterSize(rc.Conn, 4096), aead: rc.toLeader}
		return w
	}
	br := bufio.NewReaderSize(c, 256<<10)
	return &memberWire{c: c, in: br, meta: br, out: bufio.NewWriterSize(c, 4096)}
}

// frameHead reads an entries frame's head: the size of its entries.
func (w *memberWire) frameHead() (int, error) {
	if w.sr != nil {
		return w.rf.head(w.sr)
	}
	var lb [4]byte
	if _, err := io.ReadFull(w.in, lb[:]); err != nil {
		return 0, err
	}
	l := binary.LittleEndian.Uint32(lb[:])
	if l > MaxCopyFrame {
		return 0, fmt.Errorf("%w: a frame of %d bytes, at most %d", ErrCopyStream, l, MaxCopyFrame)
	}
	return int(l), nil
}

// frameBody reads the entries of the frame whose head was read.
func (w *memberWire) frameBody(frame []byte) error {
	if w.sr != nil {
		return w.rf.body(w.in, w.c, frame)
	}
	return readFrame(w.in, w.c, frame)
}

// errCutShort: the leader closed the connection in the middle of a
// request (an aborted upload): nothing to answer.
var errCutShort = errors.New("copy cut short by the leader")

// cutOr is a read that failed: a record that breaks the stream's format
// is refused (answered), any other failure is the leader gone.
func cutOr(err error) error {
	if errors.Is(err, ErrCopyStream) {
		return err
	}
	return errCutShort
}

func readRequestHead(br metaReader) (string, uint64, error) {
	n, err := br.ReadByte()
	if err != nil {
		return "", 0, cutOr(err)
	}
	if n == 0 || n > maxCompany {
		return "", 0, fmt.Errorf("%w: company name of %d bytes (1 to %d)", ErrCopyStream, n, maxCompany)
	}
	b := make([]byte, int(n)+8)
	if _, err := io.ReadFull(br, b); err != nil {
		return "", 0, cutOr(err)
	}
	company := string(b[:n])
	if err := catalog.ValidCompanyName(company); err != nil {
		return "", 0, fmt.Errorf("%w: %w", ErrCopyStream, err)
	}
	return company, binary.LittleEndian.Uint64(b[n:]), nil
}

// waitSweep applies the log up to the leader's last sweep before a copy
// or a lack answer (HeaderSweep says why).
func (r *Replicator) waitSweep(i uint64) error {
	if i == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.node.WaitApplied(ctx, i); err != nil {
		return fmt.Errorf("this member has not yet applied the leader's last sweep: %w", err)
	}
	return nil
}

func writeError(bw answerWriter, err error) {
	msg := err.Error()
	if len(msg) > maxAnswerMsg {
		msg = msg[:maxAnswerMsg]
	}
	var h [3]byte
	h[0] = answerError
	binary.LittleEndian.PutUint16(h[1:], uint16(len(msg)))
	bw.Write(h[:])
	bw.Write([]byte(msg))
	bw.Flush()
}

// serveLackStream answers which of the ids that follow this member lacks.
func (r *Replicator) serveLackStream(w *memberWire, company string) error {
	br, bw := w.meta, w.out
	var nb [4]byte
	if _, err := io.ReadFull(br, nb[:]); err != nil {
		return cutOr(err)
	}
	n := binary.LittleEndian.Uint32(nb[:])
	if n > MaxLackIDs {
		return fmt.Errorf("%w: lack of %d ids, at most %d", ErrCopyStream, n, MaxLackIDs)
	}
	ids := make([][32]byte, n)
	for i := range ids {
		if _, err := io.ReadFull(br, ids[i][:]); err != nil {
			return cutOr(err)
		}
	}
	has, err := r.st.Has(company, ids)
	if err != nil {
		return err
	}
	bm := make([]byte, 1+(len(ids)+7)/8)
	bm[0] = answerOK
	for i, h := range has {
		if !h {
			bm[1+i/8] |= 1 << (i % 8)
		}
	}
	bw.Write(bm)
	return bw.Flush()
}

// serveEntriesStream stores the entries the leader copies, committing
// at each 'c' (on a goroutine of its own, while the next part arrives)
// and answering each commit in order.
//
// The leader is trusted to send what it stored, not to be right: each
// entry's header is checked (its CRC and bounds) and its AEAD tag
// authenticated with the company's pack key, which covers the header's
// id, kind, flags and lengths too, before it is written. A leader that
// sends garbage, or an entry whose header it altered, is refused; only a
// leader holding the company's key can seal an entry (whose content then
// may still not hash to its id: verify on the member finds that).
//
// A failure in the store or commit stage interrupts the read (c's read
// deadline) and is answered: the leader may have sent its last commit and
// be waiting for the answer, sending nothing more.
func (r *Replicator) serveEntriesStream(w *memberWire, company string) error {
	c, bw := w.c, w.out
	if r.node.IsLeader() {
		return errors.New("this member leads: it takes no copies")
	}
	open := r.opener.Load()
	if open == nil {
		return errors.New("this member cannot check copies yet (no keys)")
	}
	aead, err := (*open)(company)
	if err != nil {
		return fmt.Errorf("check copies of company %s: %w", company, err)
	}
	// Three stages, each on its own goroutine: this one reads frames
	// off the connection (and TLS decrypts them), the store stage checks
	// (on every core, entryChecker) and writes a frame's entries, the
	// commit stage syncs and answers.
	// Two frame buffers: one is read while the other is stored.
	var failed atomic.Pointer[error]
	fail := func(err error) {
		if err != nil && failed.CompareAndSwap(nil, &err) {
			c.SetReadDeadline(time.Now()) // the reader may wait for bytes that never come
		}
	}
	free := make(chan []byte, 2)
	for range 2 {
		var b []byte
		if p, ok := frameBufs.Get().(*[]byte); ok {
			b = *p
		}
		free <- b
	}
	frames := make(chan copyFrame, 1)
	stored := make(chan struct{})
	go func() { // owner: serveEntriesStream (closes frames, waits for stored)
		defer close(stored)
		r.storeFrames(company, aead, frames, free, bw, &failed, fail)
	}()
	stop := func() error {
		close(frames)
		<-stored
		// The frame buffers serve the next request (one being read
		// when the read failed is left to the collector).
		for len(free) > 0 {
			b := <-free
			if b != nil {
				frameBufs.Put(&b)
			}
		}
		if p := failed.Load(); p != nil {
			return *p
		}
		return nil
	}
	// cut is a read that failed: the leader went, or a stage failed and
	// interrupted the read (its error is the answer).
	// A record that breaks the format (raw: one that does not
	// authenticate, a body whose tag is not the one listed) is refused.
	cut := func(err error) error {
		if errors.Is(err, ErrCopyStream) {
			fail(err)
		}
		if err := stop(); err != nil {
			return err
		}
		return errCutShort
	}
	var size int64
	for {
		if failed.Load() != nil {
			return stop()
		}
		t, err := w.meta.ReadByte()
		if err != nil {
			return cut(err)
		}
		switch t {
		case frameEntries:
			l, err := w.frameHead()
			if err != nil {
				return cut(err)
			}
			if size += int64(l); size > MaxCopyCommit {
				fail(fmt.Errorf("%w: more than %d bytes before a commit", ErrCopyStream, int64(MaxCopyCommit)))
				return stop()
			}
			frame := <-free
			if cap(frame) < int(l) {
				frame = make([]byte, l)
			}
			frame = frame[:l]
			if err := w.frameBody(frame); err != nil {
				free <- frame
				return cut(err)
			}
			frames <- copyFrame{kind: frameEntries, data: frame}
		case frameCommit:
			frames <- copyFrame{kind: frameCommit}
			size = 0
		case frameEnd:
			frames <- copyFrame{kind: frameEnd}
			return stop()
		default:
			fail(fmt.Errorf("%w: frame type %q", ErrCopyStream, t))
			return stop()
		}
	}
}

// frameBufs holds the frame buffers of entries requests between them
// (two were made for each upload's copy).
var frameBufs sync.Pool

// readFrame reads len(frame) bytes: what br holds, then the rest from c
// straight into frame. Through br, the part of each frame past its last
// 256 KiB was copied twice (into br's buffer, then into frame).
func readFrame(br *bufio.Reader, c io.Reader, frame []byte) error {
	n := min(br.Buffered(), len(frame))
	if n > 0 {
		if _, err := io.ReadFull(br, frame[:n]); err != nil {
			return err
		}
	}
	_, err := io.ReadFull(c, frame[n:])
	return err
}

type copyFrame struct {
	kind byte
	data []byte
}

// storeFrames checks and writes the entries of each frame, and hands each
// commit to a goroutine of its own that syncs and answers in order.
func (r *Replicator) storeFrames(company string, aead *pack.Sealer, frames <-chan copyFrame, free chan<- []byte,
	bw answerWriter, failed *atomic.Pointer[error], fail func(error)) {
	commits := make(chan *store.Appender)
	committed := make(chan struct{})
	go func() { // owner: storeFrames (closes commits, waits for committed)
		defer close(committed)
		for app := range commits {
			if failed.Load() != nil {
				if app != nil {
					app.Abort()
				}
				continue
			}
			var n int
			if app != nil {
				n = app.Len()
				if err := app.Commit(); err != nil {
					fail(err)
					continue
				}
			}
			var a [5]byte
			a[0] = answerOK
			binary.LittleEndian.PutUint32(a[1:], uint32(n))
			bw.Write(a[:])
			fail(bw.Flush())
		}
	}()
	chk := newEntryChecker(aead)
	defer chk.stop()
	// The next part's appender is prepared ahead: taking a new pack
	// syncs its header and directory (a fifth of a catch-up's time at
	// load 20 when the store stage did it at the part's first entry).
	next := r.prepareAppender(company)
	defer func() {
		if next == nil {
			return
		}
		if p := <-next; p.app != nil {
			p.app.Abort()
		}
	}()
	var (
		app  *store.Appender
		ids  [][32]byte
		hs   []pack.EntryHeader
		offs []int
	)
	for f := range frames {
		if failed.Load() != nil {
			if f.data != nil {
				free <- f.data
			}
			continue
		}
		switch f.kind {
		case frameCommit:
			commits <- app
			if app != nil {
				app = nil
				next = r.prepareAppender(company)
			}
			continue
		case frameEnd:
			if app != nil {
				fail(fmt.Errorf("%w: entries after the last commit", ErrCopyStream))
			}
			continue
		}
		frame := f.data
		ids, hs, offs = ids[:0], hs[:0], offs[:0]
		err := func() error {
			for off := 0; off < len(frame); {
				h, end, err := nextEntry(frame, off)
				if err != nil {
					return fmt.Errorf("copied entry: %w", err)
				}
				ids, hs, offs = append(ids, h.ID), append(hs, h), append(offs, off)
				off = end
			}
			if err := chk.check(frame, hs, offs); err != nil {
				return fmt.Errorf("copied entry: %w", err)
			}
			has, err := r.st.Has(company, ids)
			if err != nil {
				return err
			}
			for i, h := range hs {
				if has[i] {
					continue
				}
				if app == nil {
					p := <-next
					next = nil
					if p.err != nil {
						return p.err
					}
					app = p.app
				}
				if err := app.Add(h, frame[offs[i]:offs[i]+pack.EntryHeaderSize+int(h.BodyLen)]); err != nil {
					return err
				}
			}
			return nil
		}()
		free <- frame
		fail(err)
	}
	close(commits)
	<-committed
	if app != nil {
		app.Abort()
	}
}

type preparedAppender struct {
	app *store.Appender
	err error
}

// prepareAppender starts an appender of copies whose pack is taken on a
// goroutine of its own; the caller receives from the channel once, then
// owns the appender (Commit or Abort).
func (r *Replicator) prepareAppender(company string) <-chan preparedAppender {
	ch := make(chan preparedAppender, 1)
	go func() { // owner: the caller, which receives once
		app, err := r.st.Append(company)
		if err == nil {
			app.Copied()
			if err = app.Reserve(); err != nil {
				app.Abort()
				app = nil
			}
		}
		ch <- preparedAppender{app, err}
	}()
	return ch
}

// entryChecker authenticates the entries of a frame on every core: the
// store stage and up to checkHelpers goroutines take entries in turn, so
// the frame being read off the connection waits less for the one being
// checked (the open was about half of the store stage's time). Every
// entry is still opened whole and its tag checked; only the core that
// does it changes. Memory: one plain buffer per helper, up to the
// largest entry.
type entryChecker struct {
	aead  *pack.Sealer
	plain []byte // the store stage's buffer
	jobs  chan *checkJob
	done  sync.WaitGroup
}

// checkHelpers bounds the goroutines that help the store stage check.
const checkHelpers = 3

type checkJob struct {
	frame []byte
	hs    []pack.EntryHeader
	offs  []int
	next  atomic.Int64
	errs  []error
	wg    sync.WaitGroup
}

func newEntryChecker(aead *pack.Sealer) *entryChecker {
	c := &entryChecker{aead: aead, jobs: make(chan *checkJob)}
	n := min(runtime.GOMAXPROCS(0)-1, checkHelpers)
	for range n {
		c.done.Add(1)
		go func() { // owner: the entryChecker (stop closes jobs, waits)
			defer c.done.Done()
			var plain []byte
			for j := range c.jobs {
				plain = c.run(j, plain)
				j.wg.Done()
			}
		}()
	}
	return c
}

// run opens the job's entries it takes until none is left.
func (c *entryChecker) run(j *checkJob, plain []byte) []byte {
	for {
		i := int(j.next.Add(1) - 1)
		if i >= len(j.hs) {
			return plain
		}
		h := &j.hs[i]
		at := j.offs[i] + pack.EntryHeaderSize
		var err error
		if plain, err = pack.OpenBody(plain[:0], c.aead, h, j.frame[at:at+int(h.BodyLen)]); err != nil {
			j.errs[i] = err
		}
	}
}

// check authenticates the entries hs (at offs in frame); the first
// failure in frame order.
func (c *entryChecker) check(frame []byte, hs []pack.EntryHeader, offs []int) error {
	j := &checkJob{frame: frame, hs: hs, offs: offs, errs: make([]error, len(hs))}
	// Helpers that are idle join in; one busy with nothing is not waited for.
	for range min(len(hs)-1, checkHelpers) {
		j.wg.Add(1)
		select {
		case c.jobs <- j:
			continue
		default:
			j.wg.Done()
		}
		break
	}
	c.plain = c.run(j, c.plain)
	j.wg.Wait()
	for _, err := range j.errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *entryChecker) stop() {
	close(c.jobs)
	c.done.Wait()
}
