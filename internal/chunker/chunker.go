// Package chunker cuts content into variable-size chunks with normalized
// FastCDC, so an insertion in the middle of a file changes only the chunks
// around it. The parameters and the gear table derivation are part of the
// repository format (docs/format.md, "Chunking").
package chunker

import (
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
func (g *Gear) Cut(data []byte, atEOF bool) int {
	n := len(data)
	if n <= MinSize {
		if atEOF {
			return n
		}
		return 0
	}
	if n > MaxSize {
		n = MaxSize
	}
	normal := AvgSize
	if n < normal {
		normal = n
	}
	var fp uint64
	i := MinSize
	for ; i < normal; i++ {
		fp = (fp << 1) + g[data[i]]
		if fp&maskS == 0 {
			return i + 1
		}
	}
	for ; i < n; i++ {
		fp = (fp << 1) + g[data[i]]
		if fp&maskL == 0 {
			return i + 1
		}
	}
	if n == MaxSize || atEOF {
		return n
	}
	return 0
}

// Chunker reads a stream and returns its chunks one at a time.
type Chunker struct {
	gear *Gear
	r    io.Reader
	buf  []byte
	beg  int // start of unconsumed data
	end  int // end of valid data
	eof  bool
}

// New returns a Chunker reading r. buf, if longer than MaxSize, is used as
// the working buffer so callers can pool it; with less than 2*MaxSize the
// chunker moves more data to refill it (fine for slow, small streams). A
// nil buf gets 2*MaxSize.
func New(g *Gear, r io.Reader, buf []byte) *Chunker {
	if len(buf) <= MaxSize {
		buf = make([]byte, 2*MaxSize)
	}
	return &Chunker{gear: g, r: r, buf: buf}
}

// Next returns the next chunk. The slice is valid until the next call. At
// the end of the stream it returns io.EOF.
func (c *Chunker) Next() ([]byte, error) {
	for {
		if c.end-c.beg >= MaxSize || c.eof {
			if c.end == c.beg {
				return nil, io.EOF
			}
			n := c.gear.Cut(c.buf[c.beg:c.end], c.eof)
			chunk := c.buf[c.beg : c.beg+n]
			c.beg += n
			return chunk, nil
		}
		// Refill: move what is left to the front, then read.
		if c.beg > 0 {
			c.end = copy(c.buf, c.buf[c.beg:c.end])
			c.beg = 0
		}
		for c.end < len(c.buf) && !c.eof {
			m, err := c.r.Read(c.buf[c.end:])
			c.end += m
			if errors.Is(err, io.EOF) {
				c.eof = true
			} else if err != nil {
				return nil, fmt.Errorf("read: %w", err)
			} else if m == 0 {
				continue
			}
			if c.end-c.beg >= MaxSize {
				break
			}
		}
	}
}
