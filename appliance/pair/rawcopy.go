package pair

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"vaultnode/internal/pack"
)

// A raw copy stream ('D' after the handshake) carries what a copy stream
// ('C') carries, but beneath TLS: the entries copied are already sealed
// under the company's pack key, and encrypting them again with TLS (then
// decrypting them twice on the member, TLS and the tag check) was the
// largest part of a copy's CPU left. docs/protocol.md, "Raw copy
// streams", is the wire format; docs/pair.md says why it is safe.
//
// The dialer asks for 'D' through the TLS connection and waits for the
// member's 'D' back, read through it; only then both ends leave TLS and
// use the TCP connection beneath, with keys exported from the TLS session
// (one per direction). Each record of metadata (requests, entries'
// headers and tags, commits, answers) is sealed with AES-256-GCM under a
// counter nonce; entry bodies follow their record as they lie in a pack.
// A member that does not know 'D' closes the connection, and the leader
// copies over 'C' instead.
const streamRawCopy = 'D'

// Exporter labels of the raw stream's keys, one per direction.
const (
	rawLabelToMember = "EXPORTER-vaultnode pair raw copy, leader to member"
	rawLabelToLeader = "EXPORTER-vaultnode pair raw copy, member to leader"
)

// Bounds of the raw stream's decoder.
const (
	// maxFrameEntries bounds the entries of one frame (the leader cuts
	// a larger run into several frames).
	maxFrameEntries = 1 << 16
	// rawEntryMeta is what a frame's record lists of each entry: its
	// header and its body's trailing AEAD tag.
	rawEntryMeta = pack.EntryHeaderSize + tagSize
	tagSize      = 16
	// maxRawRecord bounds one sealed record's plaintext: a frame's
	// listing of maxFrameEntries entries, or a lack request.
	maxRawRecord = 1 + 1 + maxCompany + 8 + 1 + 4 + maxFrameEntries*rawEntryMeta
)

// rawRefusedFor is how long the leader copies over 'C' to a member that
// refused 'D' (a member not upgraded yet) before it asks again.
const rawRefusedFor = time.Minute

// errRawRefused: the member closed the connection rather than take 'D'.
var errRawRefused = errors.New("the member does not take raw copy streams")

// rawKeys derives the raw stream's AEADs from the TLS session: one for
// what the leader (the dialer) sends, one for what the member answers.
func rawKeys(cs tls.ConnectionState) (toMember, toLeader cipher.AEAD, err error) {
	mk := func(label string) (cipher.AEAD, error) {
		k, err := cs.ExportKeyingMaterial(label, nil, 32)
		if err != nil {
			return nil, fmt.Errorf("export the raw stream's key: %w", err)
		}
		b, err := aes.NewCipher(k)
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(b)
	}
	if toMember, err = mk(rawLabelToMember); err != nil {
		return nil, nil, err
	}
	if toLeader, err = mk(rawLabelToLeader); err != nil {
		return nil, nil, err
	}
	return toMember, toLeader, nil
}

func rawNonce(seq uint64) []byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[4:], seq)
	return n[:]
}

// recordReader hands TLS at most the rest of the current TLS record, so
// that tls.Conn never reads ahead past the record it needs: what follows
// the last record of the switch stays in r, the raw stream's reader.
type recordReader struct {
	r    *bufio.Reader
	left int // bytes of the current record's body not yet read
	hn   int // bytes of the next record's header read
	hdr  [5]byte
}

func (rr *recordReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if rr.left == 0 {
		n, err := rr.r.Read(p[:min(len(p), len(rr.hdr)-rr.hn)])
		copy(rr.hdr[rr.hn:], p[:n])
		if rr.hn += n; rr.hn == len(rr.hdr) {
			rr.hn, rr.left = 0, int(binary.BigEndian.Uint16(rr.hdr[3:]))
		}
		return n, err
	}
	n, err := rr.r.Read(p[:min(len(p), rr.left)])
	rr.left -= n
	return n, err
}

// atBoundary reports whether TLS has read whole records only.
func (rr *recordReader) atBoundary() bool { return rr.left == 0 && rr.hn == 0 }

// rawCopyConn is the member's end of a raw copy stream, as the mux hands
// it over: the TCP connection beneath the TLS session, what arrived on
// it after the switch, and the keys.
type rawCopyConn struct {
	net.Conn
	r                  *bufio.Reader
	toMember, toLeader cipher.AEAD
}

// acceptRaw answers a dialer's 'D' (read through tc) and hands over the
// connection beneath: tc has read whole records only (rr), and the
// dialer sends no raw byte before it read the answer.
func acceptRaw(tc *tls.Conn, c net.Conn, rr *recordReader) (*rawCopyConn, error) {
	if !rr.atBoundary() {
		return nil, fmt.Errorf("%w: the switch to raw is not at a TLS record's end", ErrCopyStream)
	}
	toMember, toLeader, err := rawKeys(tc.ConnectionState())
	if err != nil {
		return nil, err
	}
	if _, err := tc.Write([]byte{streamRawCopy}); err != nil {
		return nil, fmt.Errorf("answer a raw copy stream: %w", err)
	}
	return &rawCopyConn{Conn: c, r: rr.r, toMember: toMember, toLeader: toLeader}, nil
}

// dialRaw opens a raw copy stream to addr: TLS, 'D', the member's 'D'
// read through TLS, then the TCP connection beneath. errRawRefused when
// the member closed the connection instead (an older version).
func dialRaw(ctx context.Context, addr string, timeout time.Duration, conf *tls.Config) (*copyConn, error) {
	tc, bc, err := dialBuffered(ctx, addr, timeout, conf, streamRawCopy, false)
	if err != nil {
		return nil, err
	}
	raw := bc.Conn
	rr := bc.r.(*recordReader)
	tc.SetReadDeadline(time.Now().Add(timeout))
	var b [1]byte
	if _, err := io.ReadFull(tc, b[:]); err != nil {
		raw.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
			return nil, fmt.Errorf("reach member %s: %w", addr, errRawRefused)
		}
		return nil, fmt.Errorf("reach member %s: %w", addr, err)
	}
	if b[0] != streamRawCopy || !rr.atBoundary() {
		raw.Close()
		return nil, fmt.Errorf("reach member %s: %w: answer %q to a raw copy stream", addr, ErrCopyStream, b[0])
	}
	toMember, toLeader, err := rawKeys(tc.ConnectionState())
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("reach member %s: %w", addr, err)
	}
	raw.SetReadDeadline(time.Time{})
	cc := &copyConn{addr: addr, conn: raw, br: rr.r, bw: bufio.NewWriterSize(raw, 256<<10)}
	cc.sw = &sealedWriter{w: cc.bw, aead: toMember}
	cc.sr = &sealedReader{r: rr.r, aead: toLeader}
	return cc, nil
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

// sealedWriter gathers metadata and writes it as sealed records:
//
//	record = len(u32: of what follows) AES-256-GCM(metadata; nonce: the
//	         record's number in this direction; additional data: len)
//
// Raw bytes (entry bodies) written after a record follow it on the wire.
type sealedWriter struct {
	w    *bufio.Writer
	aead cipher.AEAD
	seq  uint64
	meta []byte // gathered, not yet sealed
	rec  []byte
}

func (s *sealedWriter) Write(p []byte) (int, error) {
	s.meta = append(s.meta, p...)
	return len(p), nil
}

func (s *sealedWriter) WriteByte(b byte) error {
	s.meta = append(s.meta, b)
	return nil
}

func (s *sealedWriter) WriteString(p string) (int, error) {
	s.meta = append(s.meta, p...)
	return len(p), nil
}

// seal writes what was gathered as one record.
func (s *sealedWriter) seal() error {
	if len(s.meta) == 0 {
		return nil
	}
	if len(s.meta) > maxRawRecord {
		return fmt.Errorf("%w: a record of %d bytes, at most %d", ErrCopyStream, len(s.meta), maxRawRecord)
	}
	var l [4]byte
	binary.LittleEndian.PutUint32(l[:], uint32(len(s.meta)+s.aead.Overhead()))
	s.rec = s.aead.Seal(append(s.rec[:0], l[:]...), rawNonce(s.seq), s.meta, l[:])
	s.seq++
	s.meta = s.meta[:0]
	_, err := s.w.Write(s.rec)
	return err
}

// Flush seals what was gathered and sends everything written.
func (s *sealedWriter) Flush() error {
	if err := s.seal(); err != nil {
		return err
	}
	return s.w.Flush()
}

// sealedReader reads the metadata of sealed records, each opened and
// checked to be the next of its direction; raw bytes between records are
// read from r by the caller, after a record read to its end.
type sealedReader struct {
	r    *bufio.Reader
	aead cipher.AEAD
	seq  uint64
	buf  []byte
	meta []byte // opened, not yet read
}

func (s *sealedReader) next() error {
	var l [4]byte
	if _, err := io.ReadFull(s.r, l[:]); err != nil {
		return err
	}
	n := int(binary.LittleEndian.Uint32(l[:]))
	if n < s.aead.Overhead() || n > maxRawRecord+s.aead.Overhead() {
		return fmt.Errorf("%w: a sealed record of %d bytes (%d to %d)", ErrCopyStream, n, s.aead.Overhead(), maxRawRecord+s.aead.Overhead())
	}
	if cap(s.buf) < n {
		s.buf = make([]byte, n)
	}
	s.buf = s.buf[:n]
	if _, err := io.ReadFull(s.r, s.buf); err != nil {
		return err
	}
	out, err := s.aead.Open(s.buf[:0], rawNonce(s.seq), s.buf, l[:])
	if err != nil {
		return fmt.Errorf("%w: record %d does not authenticate (altered, reordered, replayed or dropped on the way)", ErrCopyStream, s.seq)
	}
	s.seq++
	s.meta = out
	return nil
}

func (s *sealedReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for len(s.meta) == 0 {
		if err := s.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, s.meta)
	s.meta = s.meta[n:]
	return n, nil
}

func (s *sealedReader) ReadByte() (byte, error) {
	for len(s.meta) == 0 {
		if err := s.next(); err != nil {
			return 0, err
		}
	}
	b := s.meta[0]
	s.meta = s.meta[1:]
	return b, nil
}

// addRaw sends whole sealed entries as raw frames: each frame's record
// lists its entries' headers and tags (sealed), the bodies follow as
// they are. It returns how many entries it sent.
func (cc *copyConn) addRaw(entries []byte) (int, error) {
	sent := 0
	for len(entries) > 0 {
		cc.hs = cc.hs[:0]
		cc.bodies = cc.bodies[:0]
		at, total := 0, 0
		for at < len(entries) && len(cc.hs) < maxFrameEntries {
			_, end, err := nextEntry(entries, at)
			if err != nil {
				return 0, fmt.Errorf("copy an entry: %w", err)
			}
			cc.hs = append(cc.hs, at)
			cc.bodies = append(cc.bodies, entries[at+pack.EntryHeaderSize:end])
			total += end - at
			at = end
		}
		var h [5]byte
		h[0] = frameEntries
		binary.LittleEndian.PutUint32(h[1:], uint32(len(cc.hs)))
		cc.sw.Write(h[:])
		for i, off := range cc.hs {
			body := cc.bodies[i]
			cc.sw.Write(entries[off : off+pack.EntryHeaderSize])
			cc.sw.Write(body[len(body)-tagSize:])
		}
		if err := cc.sw.seal(); err != nil {
			return 0, err
		}
		if total >= 64<<10 {
			// Large bodies go to the socket as they are, not through
			// the buffer (one copy fewer).
			if err := cc.bw.Flush(); err != nil {
				return 0, err
			}
			bufs := net.Buffers(cc.bodies)
			if _, err := bufs.WriteTo(cc.conn); err != nil {
				return 0, err
			}
		} else {
			for _, b := range cc.bodies {
				if _, err := cc.bw.Write(b); err != nil {
					return 0, err
				}
			}
		}
		sent += len(cc.hs)
		entries = entries[at:]
	}
	return sent, nil
}

// rawFrame is the member's reading of one raw entries frame: the headers
// and tags its record lists (read by head), then the bodies (body).
type rawFrame struct {
	meta []byte
	hs   []pack.EntryHeader
}

// head reads a frame's listing from the sealed stream and returns the
// size of its whole entries (headers and bodies).
func (f *rawFrame) head(sr *sealedReader) (int, error) {
	var nb [4]byte
	if _, err := io.ReadFull(sr, nb[:]); err != nil {
		return 0, err
	}
	n := binary.LittleEndian.Uint32(nb[:])
	if n == 0 || n > maxFrameEntries {
		return 0, fmt.Errorf("%w: a frame of %d entries, at most %d", ErrCopyStream, n, maxFrameEntries)
	}
	if len(sr.meta) != int(n)*rawEntryMeta {
		return 0, fmt.Errorf("%w: a frame of %d entries whose record lists %d bytes of them, not %d: its bodies do not follow",
			ErrCopyStream, n, len(sr.meta), int(n)*rawEntryMeta)
	}
	f.meta = append(f.meta[:0], sr.meta...)
	sr.meta = sr.meta[:0]
	f.hs = f.hs[:0]
	total := 0
	for i := range int(n) {
		h, err := pack.ParseEntryHeader(f.meta[i*rawEntryMeta:])
		if err != nil {
			return 0, fmt.Errorf("copied entry: %w", err)
		}
		f.hs = append(f.hs, h)
		if total += pack.EntryHeaderSize + int(h.BodyLen); total > MaxCopyFrame {
			return 0, fmt.Errorf("%w: a frame of more than %d bytes, at most %d", ErrCopyStream, total, MaxCopyFrame)
		}
	}
	return total, nil
}

// errTagMismatch: a body's trailing tag is not the one its frame's
// sealed record lists.
var errTagMismatch = errors.New("an entry's body is not the one its sealed header lists (its tag differs)")

// body reads the frame's entries into frame (as long as head said):
// each header as listed, each body raw from r (c past r's buffer), and
// checks each body's tag against the listing.
func (f *rawFrame) body(r *bufio.Reader, c io.Reader, frame []byte) error {
	off := 0
	for i := range f.hs {
		h := &f.hs[i]
		m := f.meta[i*rawEntryMeta:]
		copy(frame[off:], m[:pack.EntryHeaderSize])
		body := frame[off+pack.EntryHeaderSize : off+pack.EntryHeaderSize+int(h.BodyLen)]
		if err := readFrame(r, c, body); err != nil {
			return err
		}
		if !bytes.Equal(body[len(body)-tagSize:], m[pack.EntryHeaderSize:rawEntryMeta]) {
			return fmt.Errorf("%w: entry %x: %w", ErrCopyStream, h.ID[:8], errTagMismatch)
		}
		off += pack.EntryHeaderSize + int(h.BodyLen)
	}
	return nil
}
