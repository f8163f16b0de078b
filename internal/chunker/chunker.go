// Package chunker cuts content into variable-size chunks with normalized
// FastCDC, so an insertion in the middle of a file changes only the chunks
// around it. The parameters and the gear table derivation are part of the
// repository format (docs/format.md, "Chunking").
package chunker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/zeebo/blake3"
)

// Format constants of repository format version 1.
const (
	MinSize = 256 << 10
	AvgSize = 1 << 20
	MaxSize = 4 << 20

	// Normalization level 2: a harder mask before the average size and an
	// easier one after it.
	maskS = uint64(0x94b5294a53f00000) // 22 bits set
	maskL = uint64(0x94a5294a52a00000) // 18 bits set
)

// Listing chunks are cut with the same rolling hash at a sixteenth of the
// sizes, so that scattered changes to a tree (edits, additions, deletions
// spread over many directories) rewrite a few small pieces of its listing
// rather than every 1 MiB piece of it. After ListingSmallChunks of them
// (about 150 MB of listing, a million or so files) the rest of the listing
// is cut like content, so that a listing of tens of millions of files still
// fits the protocol's 8,192 references (tree.MaxListingRefs). The reader of a
// listing only concatenates its chunks: these parameters affect
// deduplication, never readability.
const (
	ListingSmallChunks = 2048

	ListingMinSize = MinSize / 16
	ListingAvgSize = AvgSize / 16
	ListingMaxSize = MaxSize / 16

	// The content masks without their four lowest one-bits: 18 and 14.
	listingMaskS = uint64(0x94b5294a53000000)
	listingMaskL = uint64(0x94a5294a40000000)
)

// ZeroUnit is the least run of zeros that content chunks cut around, and
// the unit of a chunk of zeros's length (docs/format.md, "Chunking"): a
// chunk that starts with at least ZeroUnit zeros holds only zeros, as many
// whole units as the run has (at most MaxSize), and a chunk past MinSize
// ends where such a run starts. Zero-filled regions of disk images and
// preallocated files then make chunks of zeros of at most 64 lengths, which
// both ends know without reading them, rather than ending up inside chunks
// of data that are compressed, sent, checked and restored byte by byte.
const ZeroUnit = 64 << 10

// params are the sizes and masks of one kind of chunk, and whether it is
// cut around runs of zeros.
type params struct {
	min, avg, max int
	maskS, maskL  uint64
	zeroRuns      bool
}

var (
	contentParams = params{MinSize, AvgSize, MaxSize, maskS, maskL, true}
	listingParams = params{ListingMinSize, ListingAvgSize, ListingMaxSize, listingMaskS, listingMaskL, false}
	// largeListingParams cut a listing past its small chunks: the content
	// sizes, not around zeros.
	largeListingParams = params{MinSize, AvgSize, MaxSize, maskS, maskL, false}
)

// Gear is the table of 256 pseudo-random values the rolling hash uses.
type Gear [256]uint64

// NewGear derives the gear table from a 32-byte key (the company's chunker key).
func NewGear(key [32]byte) (*Gear, error) {
	h, err := blake3.NewKeyed(key[:])
	if err != nil {
		return nil, fmt.Errorf("derive gear table: %w", err)
	}
	var buf [256 * 8]byte
	if _, err := h.Digest().Read(buf[:]); err != nil {
		return nil, fmt.Errorf("derive gear table: %w", err)
	}
	g := new(Gear)
	for i := range g {
		g[i] = binary.LittleEndian.Uint64(buf[i*8:])
	}
	return g, nil
}

// Cut returns the length of the first chunk of data. When atEOF is false and
// no boundary is found before MaxSize, the caller must supply more data
// (Cut returns 0) unless len(data) >= MaxSize.
func (g *Gear) Cut(data []byte, atEOF bool) int { return g.cut(&contentParams, data, atEOF) }

func (g *Gear) cut(p *params, data []byte, atEOF bool) int {
	n, _ := g.cutFrom(p, data, atEOF, scanState{})
	return n
}

// scanState is how far a cut that found no boundary in the data it had
// got (the hash's value after data[at-1]; at 0: nothing scanned), so that
// a call with more of the same chunk's data resumes there.
type scanState struct {
	at int
	fp uint64
}

// cutFrom is cut resuming from s (of an earlier call on a prefix of data);
// when it returns 0 it also returns the state to resume from.
//
// With zeroRuns: a chunk that starts with ZeroUnit zeros or more is the
// run's whole units (at most max); otherwise the chunk also ends at the
// first place past min where ZeroUnit zeros start (and that end at max at
// the latest). The run's length decides the first, and ZeroUnit bytes
// after a place the second: while the data ends in zeros that may go on,
// neither is decided there.
func (g *Gear) cutFrom(p *params, data []byte, atEOF bool, s scanState) (int, scanState) {
	n := len(data)
	if n <= p.min {
		if atEOF {
			return n, scanState{}
		}
		return 0, scanState{}
	}
	if n > p.max {
		n = p.max
	}
	// full: nothing past data[:n] can change this chunk's end.
	full := n == p.max || atEOF
	if z, undecided := p.leadingZeros(data[:n], full); undecided || z > 0 {
		return z, scanState{}
	}
	normal := min(p.avg, n)
	i, fp := p.min, uint64(0)
	if s.at > i && s.at <= n {
		i, fp = s.at, s.fp
	}
	// The gear hash is rolled up to end: the data's end, or the first
	// place a zero run starts (zeroCut), or where trailing zeros that may
	// still make one start.
	end, zeroCut := n, false
	if p.zeroRuns {
		end, zeroCut = zeroRunFrom(data[:n], i, full)
	}
	var at int
	if i < normal && i < end {
		at, fp = g.scan(data, i, min(normal, end), fp, p.maskS)
		i = min(normal, end)
	}
	if at == 0 && i < end {
		at, fp = g.scan(data, i, end, fp, p.maskL)
		i = end
	}
	switch {
	case at > 0:
		return at, scanState{}
	case zeroCut:
		return end, scanState{}
	case end == n && full:
		return n, scanState{}
	}
	return 0, scanState{at: end, fp: fp}
}

// endsAt reports whether cut(p, data, atEOF) is l, for data whose first l
// bytes are a chunk that some pass cut at l, so that the rolling hash finds
// no boundary in them before l (it started afresh at their start, and each
// pass stops at the first one). What else decides the cut is checked: the
// hash at l, the zero runs in the chunk, and the zero rule at and before l,
// which looks at up to ZeroUnit bytes past l. data must reach l+ZeroUnit
// bytes and more than p.min, or p.max, or the end of the stream (atEOF);
// with less it may say false where more data would say true.
func (g *Gear) endsAt(p *params, data []byte, atEOF bool, l int) bool {
	n := len(data)
	if n <= p.min {
		return atEOF && l == n
	}
	if n > p.max {
		n = p.max
	}
	if l <= 0 || l > n {
		return false
	}
	full := n == p.max || atEOF
	if z, undecided := p.leadingZeros(data[:n], full); undecided || z > 0 {
		return z > 0 && l == z
	}
	end, zeroCut := n, false
	if p.zeroRuns {
		end, zeroCut = zeroRunFrom(data[:n], p.min, full)
	}
	switch {
	case end < l:
		return false // a run of zeros starts before l (or may yet)
	case l > p.min && g.boundaryAt(p, data, l):
		return true // the hash cuts first (or where a run starts)
	case zeroCut:
		return end == l
	}
	return full && end == n && l == n
}

// boundaryAt reports whether the rolling hash, started at p.min, has a
// boundary after data[l-1]: its value there depends on the zeroWindow
// bytes before l only.
func (g *Gear) boundaryAt(p *params, data []byte, l int) bool {
	var fp uint64
	for _, c := range data[max(p.min, l-zeroWindow):l] {
		fp = fp<<1 + g[c]
	}
	mask := p.maskL
	if l-1 < p.avg {
		mask = p.maskS
	}
	return fp&mask == 0
}

// leadingZeros applies the zero rule to a chunk at data's start (data
// clipped to p.max; full: nothing past it can change the chunk): with
// zeroRuns, a chunk that starts with ZeroUnit zeros or more is the run's
// whole units. It returns that length, 0 when the rule does not apply, or
// undecided when data is all zeros and more of them may follow. cutFrom
// and endsAt both follow it.
func (p *params) leadingZeros(data []byte, full bool) (n int, undecided bool) {
	if !p.zeroRuns || data[0] != 0 {
		return 0, false
	}
	z := zeroPrefix(data)
	switch {
	case z == len(data) && !full:
		return 0, true
	case z >= ZeroUnit:
		return z - z%ZeroUnit, false
	}
	return 0, false
}

// zeroPrefix is how many bytes of b from its start are zeros.
func zeroPrefix(b []byte) int {
	n := 0
	for n < len(b) {
		k := min(len(b)-n, len(zeroBlock))
		if bytes.Equal(b[n:n+k], zeroBlock[:k]) {
			n += k
			continue
		}
		for b[n] == 0 {
			n++
		}
		break
	}
	return n
}

// zeroRunFrom looks in data from from on for the first place where
// ZeroUnit zeros start: it returns that place and true. Otherwise it
// returns len(data), or, unless full, where trailing zeros start (fewer
// than ZeroUnit, which more data may make a run), and false.
//
// Any ZeroUnit zeros hold the byte at a multiple of ZeroUnit past from,
// less one: only those bytes are looked at until one is zero, so data
// without long zero runs costs a byte in 64 KiB.
func zeroRunFrom(data []byte, from int, full bool) (int, bool) {
	k := from + ZeroUnit - 1
	for k < len(data) {
		if data[k] != 0 {
			k += ZeroUnit
			continue
		}
		beg := k
		for beg > from && data[beg-1] == 0 {
			beg--
		}
		end := beg + zeroPrefix(data[beg:min(len(data), beg+ZeroUnit)])
		if end-beg == ZeroUnit {
			return beg, true
		}
		if end == len(data) {
			break // trailing zeros
		}
		k = end + ZeroUnit // data[end] is not zero
	}
	if full {
		return len(data), false
	}
	t := len(data)
	for t > from && data[t-1] == 0 {
		t--
	}
	return t, false
}

// scanBlock is how many bytes each of scan's two chains hashes between
// checks of which found a boundary first.
const scanBlock = 16 << 10

// scan rolls the gear hash over data[lo:hi], fp being its value after
// data[lo-1] (0 at a chunk's minimum size), and returns the index after
// the first byte at which fp&mask is 0 (0: none) and fp after data[hi-1].
//
// The hash after byte i is the sum of g[data[i-j]]<<j for j = 0..63 (older
// bytes are shifted out), so it can be computed afresh from the 64 bytes
// before any position past lo+63. scan runs two chains at once, over two
// adjacent blocks, the second started from its 64 bytes before: the
// processor overlaps their additions, which one chain serializes, and the
// boundaries are the ones a single chain finds (the chunker's test pins
// them).
//
// A range of zeros longer than the hash's window is rolled over only for
// its first 64 bytes: from the 64th zero on, the hash no longer depends on
// what came before and stays one value, which either made the 64th a
// boundary or makes none in the rest of the range. Zero-filled regions of
// disk images and preallocated files (gigabytes of them) cost the cut
// nothing then.
func (g *Gear) scan(data []byte, lo, hi int, fp, mask uint64) (int, uint64) {
	if hi-lo > 2*zeroWindow && data[lo] == 0 && IsZero(data[lo:hi]) {
		hi = lo + zeroWindow
	}
	for hi-lo >= 2*scanBlock {
		a := data[lo : lo+scanBlock]
		b := data[lo+scanBlock : lo+2*scanBlock]
		var fb uint64
		for _, c := range data[lo+scanBlock-64 : lo+scanBlock] {
			fb = fb<<1 + g[c]
		}
		fa := fp
		for k := 0; k < len(a) && k < len(b); k++ {
			fa = fa<<1 + g[a[k]]
			if fa&mask == 0 {
				return lo + k + 1, 0
			}
			fb = fb<<1 + g[b[k]]
			if fb&mask == 0 {
				// The first chain may still find an earlier one.
				for j := k + 1; j < len(a); j++ {
					fa = fa<<1 + g[a[j]]
					if fa&mask == 0 {
						return lo + j + 1, 0
					}
				}
				return lo + scanBlock + k + 1, 0
			}
		}
		fp = fb
		lo += 2 * scanBlock
	}
	for i, c := range data[lo:hi] {
		fp = fp<<1 + g[c]
		if fp&mask == 0 {
			return lo + i + 1, 0
		}
	}
	return 0, fp
}

// zeroWindow is the bytes the gear hash depends on: fp after byte i is the
// sum of g[data[i-j]]<<j for j below 64.
const zeroWindow = 64

// zeroBlock is compared against by IsZero.
var zeroBlock [64 << 10]byte

// IsZero reports whether b holds only zero bytes. It reads as far as the
// first byte that is not, so data that is not zeros costs it nothing.
func IsZero(b []byte) bool {
	if len(b) > 0 && b[0] != 0 {
		return false
	}
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// Chunker reads a stream and returns its chunks one at a time.
type Chunker struct {
	gear *Gear
	p    *params
	// small counts down the listing chunks still cut small (NewListing).
	small int
	r     io.Reader
	buf   []byte
	beg   int // start of unconsumed data
	end   int // end of valid data
	eof   bool
	// scanned is how far the chunk at beg was scanned without a boundary
	// before the buffer was refilled.
	scanned scanState
	// hold, when set, is called before the buffer is overwritten (Hold).
	hold func()
}

// Hold makes the chunker call fn before it overwrites the chunks it has
// returned (moving what is left to its buffer's front): a caller that still
// uses them elsewhere (hashes them on another goroutine) waits there, and
// the chunks stay valid until then instead of until the next call.
func (c *Chunker) Hold(fn func()) { c.hold = fn }

// New returns a Chunker reading r. buf, if longer than MaxSize, is used as
// the working buffer so callers can pool it; with less than 2*MaxSize the
// chunker moves more data to refill it (fine for slow, small streams). A
// nil buf gets 2*MaxSize.
func New(g *Gear, r io.Reader, buf []byte) *Chunker {
	if len(buf) <= MaxSize {
		buf = make([]byte, 2*MaxSize)
	}
	return &Chunker{gear: g, p: &contentParams, r: r, buf: buf}
}

// NewListing returns a Chunker for a listing stream (ListingMinSize..
// ListingMaxSize); buf as for New, against ListingMaxSize.
func NewListing(g *Gear, r io.Reader, buf []byte) *Chunker {
	if len(buf) <= ListingMaxSize {
		buf = make([]byte, 2*ListingMaxSize)
	}
	return &Chunker{gear: g, p: &listingParams, small: ListingSmallChunks, r: r, buf: buf}
}

// toContent switches a listing chunker to the content sizes, with a buffer
// large enough for them. The chunk just returned stays valid: the old
// buffer is not reused.
func (c *Chunker) toContent() {
	c.p = &largeListingParams
	if len(c.buf) <= MaxSize {
		nb := make([]byte, 2*MaxSize)
		c.end = copy(nb, c.buf[c.beg:c.end])
		c.beg = 0
		c.buf = nb
	}
}

// Next returns the next chunk. The slice is valid until the next call. At
// the end of the stream it returns io.EOF.
func (c *Chunker) Next() ([]byte, error) {
	for {
		if c.end-c.beg >= c.p.max || c.eof {
			if c.end == c.beg {
				return nil, io.EOF
			}
			n, _ := c.gear.cutFrom(c.p, c.buf[c.beg:c.end], c.eof, c.scanned)
			return c.take(n), nil
		}
		// Less than a largest chunk is left. cut scans in order and stops
		// at the first boundary, with the same masks whatever the data's
		// length, so a boundary within what is left is the one a full
		// window would give: cut there, and move only a tail without one
		// to the buffer's front (moving everything left after each largest
		// chunk's worth of room copied about as much as was read).
		if c.end-c.beg > c.p.min {
			n, s := c.gear.cutFrom(c.p, c.buf[c.beg:c.end], false, c.scanned)
			if n > 0 {
				return c.take(n), nil
			}
			c.scanned = s // refilled below: resume there
		}
		// Refill: move what is left to the front, then read.
		if err := c.refill(); err != nil {
			return nil, err
		}
	}
}

// NextKnown returns the next n bytes (at most MaxSize) as a chunk without
// looking for a boundary in them, for a caller that expects a chunk of a
// known length there (a file's unchanged chunk) and checks its id itself;
// and whether Next would return the same chunk, if they are the bytes of a
// chunk some pass cut at n (the rolling hash is tested at n only, the rules
// for zero runs in full: endsAt). When the stream ends before n bytes it
// returns io.ErrUnexpectedEOF and consumes nothing. The slice is valid as
// Next's is.
func (c *Chunker) NextKnown(n int) ([]byte, bool, error) {
	if n <= 0 || n > MaxSize || n+ZeroUnit > len(c.buf) {
		return nil, false, fmt.Errorf("chunker: NextKnown(%d) outside 1..%d", n, min(MaxSize, len(c.buf)-ZeroUnit))
	}
	// The zero rule looks up to ZeroUnit bytes past n; nothing is cut
	// with MinSize bytes or fewer but at the end, nor decided by what lies
	// past MaxSize.
	need := min(max(n+ZeroUnit, c.p.min+1), c.p.max)
	for c.end-c.beg < need && !c.eof {
		if err := c.refill(); err != nil {
			return nil, false, err
		}
	}
	if c.end-c.beg < n {
		return nil, false, io.ErrUnexpectedEOF
	}
	ends := c.gear.endsAt(c.p, c.buf[c.beg:c.end], c.eof, n)
	return c.take(n), ends, nil
}

// Unread puts back the chunk of n bytes just returned by Next or NextKnown,
// so that the next call starts at it again. Only that chunk: nothing else
// may have been called since.
func (c *Chunker) Unread(n int) {
	if n > c.beg {
		panic("chunker: Unread of more than was returned")
	}
	c.beg -= n
	c.scanned = scanState{}
}

// refill moves what is left to the buffer's front and reads until a
// largest chunk's worth is there or the stream ends.
func (c *Chunker) refill() error {
	if c.beg > 0 {
		if c.hold != nil {
			c.hold()
		}
		c.end = copy(c.buf, c.buf[c.beg:c.end])
		c.beg = 0
	}
	for c.end < len(c.buf) && !c.eof {
		m, err := c.r.Read(c.buf[c.end:])
		c.end += m
		if errors.Is(err, io.EOF) {
			c.eof = true
		} else if err != nil {
			return fmt.Errorf("read: %w", err)
		} else if m == 0 {
			continue
		}
		if c.end-c.beg >= c.p.max {
			break
		}
	}
	return nil
}

// take returns the next n bytes as a chunk.
func (c *Chunker) take(n int) []byte {
	chunk := c.buf[c.beg : c.beg+n]
	c.beg += n
	c.scanned = scanState{}
	if c.p == &listingParams {
		if c.small--; c.small <= 0 {
			c.toContent()
		}
	}
	return chunk
}
