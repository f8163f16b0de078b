package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"runtime"
	"slices"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"vaultnode/internal/limit"
)

// FrameHeaderSize is the size of a chunk frame's fixed part.
const FrameHeaderSize = 32 + 1 + 1 + 4 + 4

// MaxPlain bounds a chunk's plaintext on the wire (the chunker makes at most 4 MiB).
const MaxPlain = 8 << 20

// Frame status in download answers.
const (
	StatusOK      uint8 = 0
	StatusMissing uint8 = 1 // the vault has no such chunk
	StatusDamaged uint8 = 2 // the vault's copy failed verification; payload is the reason
)

// Frame kinds in uploads match pack kinds.
const (
	FrameData    uint8 = 1
	FrameListing uint8 = 2
)

// Payload codecs: at most one flag is set (docs/format.md, Compression).
const (
	// FlagZstd marks a payload that is one zstd frame.
	FlagZstd uint8 = 1
	// FlagS2 marks a payload that is one S2 block (klauspost/compress/s2,
	// the Snappy block format extended): what small chunks use.
	FlagS2 uint8 = 2
)

// KnownFlags reports whether flags names one codec this version reads
// (or none).
func KnownFlags(flags uint8) bool { return flags == 0 || flags == FlagZstd || flags == FlagS2 }

// ErrFrame is wrapped by every frame decoding error.
var ErrFrame = errors.New("malformed frame")

// Frame is one chunk on the wire. In uploads Kind is the chunk kind; in
// downloads it is the status.
type Frame struct {
	ID       [32]byte
	Kind     uint8
	Flags    uint8
	PlainLen uint32
	Payload  []byte
}

// AppendFrame encodes f after dst.
func AppendFrame(dst []byte, f *Frame) []byte {
	h := FrameHeader(f)
	return append(append(dst, h[:]...), f.Payload...)
}

// FrameHeader encodes the header of f, for writers that send the payload
// from where it lies.
func FrameHeader(f *Frame) [FrameHeaderSize]byte {
	var h [FrameHeaderSize]byte
	copy(h[:32], f.ID[:])
	h[32] = f.Kind
	h[33] = f.Flags
	binary.LittleEndian.PutUint32(h[34:], f.PlainLen)
	binary.LittleEndian.PutUint32(h[38:], uint32(len(f.Payload)))
	return h
}

// FrameReader decodes a stream of frames.
type FrameReader struct {
	r   *bufio.Reader
	buf []byte
	// left is what remains unread of the payload of the frame NextHeader
	// returned last (Read, ReadPayload); the next frame skips it.
	left int
}

// NewFrameReader reads frames from r.
func NewFrameReader(r io.Reader) *FrameReader {
	return &FrameReader{r: bufio.NewReaderSize(r, 32<<10)}
}

// NewFrameReaderBuffer reads frames from r into payload buffer buf (grown
// when a frame needs more), for callers that reuse buffers across streams;
// Buffer gives it back.
func NewFrameReaderBuffer(r io.Reader, buf []byte) *FrameReader {
	fr := NewFrameReader(r)
	fr.buf = buf
	return fr
}

// Buffer returns the payload buffer, for reuse once the reader is done.
func (fr *FrameReader) Buffer() []byte { return fr.buf[:0] }

// Reset makes fr read frames from r, keeping its buffers (a reader reused
// across downloads grows them once).
func (fr *FrameReader) Reset(r io.Reader) { fr.r.Reset(r); fr.left = 0 }

// Next returns the next frame (its payload valid until the next call), or
// io.EOF after the last one.
func (fr *FrameReader) Next() (*Frame, error) {
	f, err := fr.NextHeader()
	if err != nil {
		return nil, err
	}
	if err := fr.ReadPayload(f); err != nil {
		return nil, err
	}
	return f, nil
}

// NextHeader returns the next frame without its payload (Payload nil),
// or io.EOF after the last one; the payload's PayloadLeft bytes are then
// read whole into the frame (ReadPayload) or in pieces (Read), for a
// caller that writes a large chunk out as it arrives instead of holding
// it. What is not read is skipped by the next call.
func (fr *FrameReader) NextHeader() (*Frame, error) {
	if fr.left > 0 {
		if _, err := fr.r.Discard(fr.left); err != nil {
			return nil, fmt.Errorf("%w: truncated payload: %w", ErrFrame, err)
		}
		fr.left = 0
	}
	var h [FrameHeaderSize]byte
	n, err := io.ReadFull(fr.r, h[:])
	if err == io.EOF {
		return nil, io.EOF
	}
	if err != nil {
		return nil, fmt.Errorf("%w: truncated frame header (%d bytes): %w", ErrFrame, n, err)
	}
	f := &Frame{Kind: h[32], Flags: h[33], PlainLen: binary.LittleEndian.Uint32(h[34:])}
	copy(f.ID[:], h[:32])
	size := binary.LittleEndian.Uint32(h[38:])
	// Refused from the header, before the payload is read or allocated.
	if err := limit.Check("wire.MaxPlain", "frame plaintext length", uint64(f.PlainLen), MaxPlain); err != nil {
		return nil, fmt.Errorf("%w: chunk %x: %w", ErrFrame, f.ID[:8], err)
	}
	if err := limit.Check("wire.MaxFramePayload", "frame payload length", uint64(size), MaxFramePayload); err != nil {
		return nil, fmt.Errorf("%w: chunk %x: %w", ErrFrame, f.ID[:8], err)
	}
	if !KnownFlags(f.Flags) {
		return nil, fmt.Errorf("%w: unknown flags %#x", ErrFrame, f.Flags)
	}
	fr.left = int(size)
	return f, nil
}

// PayloadLeft is how much of the payload of the frame NextHeader returned
// is still to be read.
func (fr *FrameReader) PayloadLeft() int { return fr.left }

// Read reads the payload of the frame NextHeader returned, returning
// io.EOF at its end.
func (fr *FrameReader) Read(p []byte) (int, error) {
	if fr.left == 0 {
		return 0, io.EOF
	}
	if len(p) > fr.left {
		p = p[:fr.left]
	}
	n, err := fr.r.Read(p)
	fr.left -= n
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return n, fmt.Errorf("%w: truncated payload: %w", ErrFrame, err)
	}
	return n, nil
}

// ReadPayload reads the rest of the payload of f, the frame NextHeader
// returned, into f.Payload (valid until the next frame).
func (fr *FrameReader) ReadPayload(f *Frame) error {
	size := fr.left
	// The buffer grows with the bytes that really arrive, not with the
	// declared size: a peer that declares big frames and stalls costs
	// little (at most twice what arrived). It grows to the power of two
	// above the frame's size, not to the size itself: chunk sizes vary,
	// and a reader reused across downloads grown to each frame exactly
	// grew again for nearly every larger one, copying its whole buffer
	// into fresh memory each time (docs/performance.md, item 43).
	have := 0
	for have < size {
		if cap(fr.buf) < size && have == cap(fr.buf) {
			roof := min(1<<bits.Len(uint(size-1)), MaxFramePayload)
			nb := make([]byte, have, min(roof, max(2*have, 64<<10)))
			copy(nb, fr.buf[:have])
			fr.buf = nb
		}
		end := min(size, cap(fr.buf))
		if _, err := io.ReadFull(fr.r, fr.buf[have:end]); err != nil {
			return fmt.Errorf("%w: truncated payload: %w", ErrFrame, err)
		}
		fr.left -= end - have
		have = end
	}
	f.Payload = fr.buf[:size]
	return nil
}

// Room returns b emptied, or a new empty buffer when b cannot hold n
// bytes, of the power of two above n. Chunk sizes vary: a buffer reused
// for chunk after chunk and grown to each larger one exactly is replaced,
// fresh memory each time, for nearly every one (docs/performance.md,
// items 43-46). Callers bound n (a frame's limits).
func Room(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, 0, 1<<bits.Len(uint(n-1)))
	}
	return b[:0]
}

// IDs encodes a list of chunk IDs as a request body.
func AppendIDs(dst []byte, ids [][32]byte) []byte {
	for i := range ids {
		dst = append(dst, ids[i][:]...)
	}
	return dst
}

// ParseIDs decodes a body of concatenated IDs.
func ParseIDs(b []byte, max int) ([][32]byte, error) {
	if len(b)%32 != 0 {
		return nil, fmt.Errorf("%w: body of %d bytes is not a whole number of 32-byte ids", ErrFrame, len(b))
	}
	n := len(b) / 32
	if n > max {
		name := "ids per request"
		switch max {
		case MaxLackIDs:
			name = "wire.MaxLackIDs"
		case MaxGetIDs:
			name = "wire.MaxGetIDs"
		}
		return nil, fmt.Errorf("%w: %w", ErrFrame, limit.New(name, "ids", uint64(n), uint64(max)))
	}
	ids := make([][32]byte, n)
	for i := range ids {
		copy(ids[i][:], b[i*32:])
	}
	return ids, nil
}

var (
	encOnce sync.Once
	enc     *zstd.Encoder
	dec     *zstd.Decoder
)

func codecs() {
	encOnce.Do(func() {
		var err error
		// One encoder per thread: EncodeAll takes an encoder from the
		// Encoder's pool and waits while all are in use, so with one the
		// agent's compressors took turns (docs/performance.md, "One zstd
		// encoder for all compressors"). No xxhash of the frame: every
		// chunk is checked against its keyed BLAKE3 id, and decoders skip
		// it (IgnoreChecksum below); a frame without one is standard zstd.
		enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
			zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false))
		if err != nil {
			panic("zstd encoder: " + err.Error())
		}
		dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxPlain*2), zstd.WithDecoderMaxWindow(MaxPlain),
			// Every chunk's plaintext is checked against its id (a keyed
			// BLAKE3 hash) once decompressed; the frame's xxhash would
			// check it a second time.
			zstd.IgnoreChecksum(true))
		if err != nil {
			panic("zstd decoder: " + err.Error())
		}
	})
}

// Compression policy (docs/format.md, Compression). A chunk whose
// compressed form does not save minSaving of its plaintext is sent raw.
const (
	// smallChunk: below this, S2 (a few microseconds a chunk) instead of
	// zstd, whose fixed cost per frame (entropy tables) is about 10 µs,
	// more than the whole rest of a small file's backup.
	smallChunk = 16 << 10
	// sampleLen and samples: a larger chunk is first probed with S2 on
	// this many slices of sampleLen spread over it; when they do not
	// compress, the chunk is taken as incompressible (photos, video,
	// archives, encrypted data) and zstd is not tried at all.
	sampleLen = 4 << 10
	samples   = 4
)

// saves reports whether a payload of n bytes is worth sending instead of
// plain bytes: at least 3 % smaller.
func saves(n, plain int) bool { return n < plain-plain/33 }

// Compress returns the payload to send for plain, appended to dst[:0], and
// its flag: an S2 block for a chunk under 16 KiB, else a zstd frame (the
// fastest level) unless samples of the chunk do not compress; plain itself
// and 0 when compression does not save at least 3 %.
func Compress(dst, plain []byte) ([]byte, uint8) {
	if len(plain) < smallChunk {
		out := s2.Encode(dst[:cap(dst)], plain)
		if saves(len(out), len(plain)) {
			return out, FlagS2
		}
		return plain, 0
	}
	if !compressible(plain) {
		return plain, 0
	}
	codecs()
	out := enc.EncodeAll(plain, dst[:0])
	if saves(len(out), len(plain)) {
		return out, FlagZstd
	}
	return plain, 0
}

// compressible probes samples of plain (at least smallChunk long) with S2.
func compressible(plain []byte) bool {
	buf := make([]byte, s2.MaxEncodedLen(sampleLen))
	step := (len(plain) - sampleLen) / (samples - 1)
	in, out := 0, 0
	for i := range samples {
		s := plain[i*step : i*step+sampleLen]
		in += len(s)
		out += len(s2.Encode(buf, s))
	}
	return saves(out, in)
}

// Decompress returns the plaintext of a payload, appended to dst. It fails
// when the result is not exactly plainLen bytes.
//
// Its memory is bounded: plainLen is at most MaxPlain, and the zstd decoder
// refuses a frame whose window is over MaxPlain or whose output would be
// over 2 x MaxPlain.
func Decompress(dst []byte, flags uint8, payload []byte, plainLen uint32) ([]byte, error) {
	if err := limit.Check("wire.MaxPlain", "chunk plaintext length", uint64(plainLen), MaxPlain); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFrame, err)
	}
	switch flags {
	case 0:
		if uint32(len(payload)) != plainLen {
			return nil, fmt.Errorf("%w: plain payload of %d bytes, header says %d", ErrFrame, len(payload), plainLen)
		}
		return append(dst, payload...), nil
	case FlagS2:
		// The block states its length first: checked before anything
		// is allocated.
		n, err := s2.DecodedLen(payload)
		if err != nil {
			return nil, fmt.Errorf("%w: s2: %w", ErrFrame, err)
		}
		if uint32(n) != plainLen || n < 0 {
			return nil, fmt.Errorf("%w: s2 block of %d bytes, header says %d", ErrFrame, n, plainLen)
		}
		out := slices.Grow(dst, n)[:len(dst)+n]
		got, err := s2.Decode(out[len(dst):], payload)
		if err != nil {
			return nil, fmt.Errorf("%w: s2: %w", ErrFrame, err)
		}
		if len(got) != n {
			return nil, fmt.Errorf("%w: s2 block decoded to %d bytes, header says %d", ErrFrame, len(got), plainLen)
		}
		return out, nil
	case FlagZstd:
	default:
		return nil, fmt.Errorf("%w: unknown flags %#x", ErrFrame, flags)
	}
	codecs()
	out, err := dec.DecodeAll(payload, dst)
	if err != nil {
		return nil, fmt.Errorf("%w: zstd: %w", ErrFrame, err)
	}
	if uint32(len(out)-len(dst)) != plainLen {
		return nil, fmt.Errorf("%w: decompressed to %d bytes, header says %d", ErrFrame, len(out)-len(dst), plainLen)
	}
	return out, nil
}
