package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"vaultnode/internal/pack"
)

// Span is a stretch of a pack that holds no readable entry.
type Span struct {
	Offset int64 // where the bad bytes start
	Next   int64 // where the next valid entry header starts, or the end scanned
	// Torn: nothing valid follows and the entry at Offset is incomplete
	// or its header is invalid: the remains of an append cut short.
	Torn bool
	Err  error
}

// walker reads a pack file's entries between two offsets, resynchronizing
// on the next valid entry header after damaged bytes, so that one bad
// entry never hides the good ones behind it.
type walker struct {
	f    io.ReaderAt
	name string // for messages
	body []byte
}

// walk calls entry for each entry with a valid header and a complete body
// in [from, end) and gap for each span between them that holds none. The
// body is read (and passed) only when readBody is set; it is valid until
// the next call.
func (w *walker) walk(ctx context.Context, from, end int64, readBody bool,
	entry func(off int64, h *pack.EntryHeader, body []byte) error, gap func(Span) error) error {
	off := from
	var hb [pack.EntryHeaderSize]byte
	for off < end {
		if err := ctx.Err(); err != nil {
			return err
		}
		if off+pack.EntryHeaderSize > end {
			return gap(w.span(off, end, fmt.Errorf("%w: truncated header (%d bytes)", pack.ErrCorrupt, end-off)))
		}
		if _, err := w.f.ReadAt(hb[:], off); err != nil {
			return fmt.Errorf("read pack %s at %d: %w", w.name, off, eofErr(err))
		}
		h, err := pack.ParseEntryHeader(hb[:])
		if err == nil && off+pack.EntryHeaderSize+int64(h.BodyLen) > end {
			err = fmt.Errorf("%w: truncated body (%d of %d bytes)", pack.ErrCorrupt, end-off-pack.EntryHeaderSize, h.BodyLen)
		}
		if err != nil {
			sp := w.span(off, end, err)
			if err := gap(sp); err != nil || sp.Torn {
				return err
			}
			off = sp.Next
			continue
		}
		var body []byte
		if readBody {
			if cap(w.body) < int(h.BodyLen) {
				w.body = make([]byte, h.BodyLen)
			}
			body = w.body[:h.BodyLen]
			if _, err := w.f.ReadAt(body, off+pack.EntryHeaderSize); err != nil {
				return fmt.Errorf("read pack %s at %d: %w", w.name, off, eofErr(err))
			}
		}
		if err := entry(off, &h, body); err != nil {
			return err
		}
		off += pack.EntryHeaderSize + int64(h.BodyLen)
	}
	return nil
}

// span describes the bad bytes at off: up to the next valid header, or
// torn to end when none follows.
func (w *walker) span(off, end int64, cause error) Span {
	next, err := w.findHeader(off+1, end)
	if err != nil {
		return Span{Offset: off, Next: end, Err: errors.Join(cause, err)}
	}
	if next < 0 {
		return Span{Offset: off, Next: end, Torn: true, Err: cause}
	}
	return Span{Offset: off, Next: next, Err: cause}
}

// findHeader returns the offset of the first valid entry header in
// [from, end) whose body also ends before end, or -1.
func (w *walker) findHeader(from, end int64) (int64, error) {
	const window = 1 << 20
	buf := make([]byte, window+pack.EntryHeaderSize)
	magic := []byte("VNE1")
	for pos := from; pos+pack.EntryHeaderSize <= end; pos += window {
		n := min(int64(len(buf)), end-pos)
		b := buf[:n]
		if _, err := w.f.ReadAt(b, pos); err != nil {
			return 0, fmt.Errorf("read pack %s at %d: %w", w.name, pos, eofErr(err))
		}
		for i := 0; i < window && i+pack.EntryHeaderSize <= len(b); {
			j := bytes.Index(b[i:], magic)
			if j < 0 {
				break
			}
			i += j
			if i >= window || i+pack.EntryHeaderSize > len(b) {
				break // seen again in the next window
			}
			if h, err := pack.ParseEntryHeader(b[i : i+pack.EntryHeaderSize]); err == nil &&
				pos+int64(i)+pack.EntryHeaderSize+int64(h.BodyLen) <= end {
				return pos + int64(i), nil
			}
			i++
		}
	}
	return -1, nil
}

func eofErr(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// ScanPack reads pack p's entries up to its committed length (or its end,
// when the file is shorter), calling entry with each entry whose header is
// valid and gap with each stretch of bytes that holds none. It returns the
// pack's file header and size.
func (s *Store) ScanPack(ctx context.Context, p PackInfo, entry func(off int64, h *pack.EntryHeader, body []byte) error,
	gap func(Span) error) (pack.FileHeader, int64, error) {
	f, err := s.packs.Open(ctx, p.Number)
	if err != nil {
		return pack.FileHeader{}, 0, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return pack.FileHeader{}, 0, fmt.Errorf("stat pack: %w", err)
	}
	hb := make([]byte, pack.FileHeaderSize)
	if _, err := f.ReadAt(hb, 0); err != nil {
		return pack.FileHeader{}, size, fmt.Errorf("read pack header: %w", eofErr(err))
	}
	h, err := pack.ParseFileHeader(hb)
	if err != nil {
		return h, size, err
	}
	w := &walker{f: f, name: p.Path}
	return h, size, w.walk(ctx, pack.FileHeaderSize, min(p.Committed, size), true, entry, gap)
}
