package tree

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/fxamacker/cbor/v2"
)

// ListingMagic opens every listing stream.
const ListingMagic = "vaultnode listing v1"

// ErrListing is wrapped by every listing decoding error.
var ErrListing = errors.New("malformed listing")

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	encMode, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		MaxArrayElements:  1 << 20,
		MaxMapPairs:       1 << 10,
		MaxNestedLevels:   8,
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// Marshal encodes one value with the listing's deterministic encoding.
func Marshal(v any) ([]byte, error) { return encMode.Marshal(v) }

// Unmarshal decodes one value strictly (unknown fields are errors, so a
// newer format is never half-read).
func Unmarshal(b []byte, v any) error { return decMode.Unmarshal(b, v) }

// Writer encodes nodes in tree order.
type Writer struct {
	w    io.Writer
	enc  *cbor.Encoder
	last []byte
	n    int64
}

// NewWriter writes the listing magic to w.
func NewWriter(w io.Writer) (*Writer, error) {
	enc := encMode.NewEncoder(w)
	if err := enc.Encode(ListingMagic); err != nil {
		return nil, fmt.Errorf("write listing magic: %w", err)
	}
	return &Writer{w: w, enc: enc}, nil
}

// Write appends a node; nodes must come in strictly increasing tree order.
func (w *Writer) Write(n *Node) error {
	if w.n > 0 && Compare(w.last, n.Path) >= 0 {
		return fmt.Errorf("write node %q: out of tree order after %q", n.Path, w.last)
	}
	if err := w.enc.Encode(n); err != nil {
		return fmt.Errorf("write node %q: %w", n.Path, err)
	}
	w.last = append(w.last[:0], n.Path...)
	w.n++
	return nil
}

// Count is the number of nodes written.
func (w *Writer) Count() int64 { return w.n }

// Reader decodes a listing.
type Reader struct {
	dec  *cbor.Decoder
	last []byte
	n    int64
}

// NewReader checks the magic and returns a Reader.
func NewReader(r io.Reader) (*Reader, error) {
	dec := decMode.NewDecoder(bufio.NewReaderSize(r, 64<<10))
	var magic string
	if err := dec.Decode(&magic); err != nil {
		return nil, fmt.Errorf("%w: read magic: %w", ErrListing, err)
	}
	if magic != ListingMagic {
		return nil, fmt.Errorf("%w: magic %q, want %q (written by a newer vaultnode?)", ErrListing, magic, ListingMagic)
	}
	return &Reader{dec: dec}, nil
}

// Next returns the next node or io.EOF.
func (r *Reader) Next() (*Node, error) {
	n := new(Node)
	if err := r.dec.Decode(n); err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("%w: node %d: %w", ErrListing, r.n, err)
	}
	if err := n.Validate(); err != nil {
		return nil, fmt.Errorf("%w: node %d: %w", ErrListing, r.n, err)
	}
	if r.n > 0 && Compare(r.last, n.Path) >= 0 {
		return nil, fmt.Errorf("%w: node %q out of tree order after %q", ErrListing, n.Path, r.last)
	}
	r.last = append(r.last[:0], n.Path...)
	r.n++
	return n, nil
}

// Validate checks a node's invariants.
func (n *Node) Validate() error {
	switch {
	case len(n.Path) == 0:
		return errors.New("empty path")
	case bytes.IndexByte(n.Path, 0) >= 0:
		return fmt.Errorf("path %q contains NUL", n.Path)
	case n.Path[0] == '/' || n.Path[len(n.Path)-1] == '/':
		return fmt.Errorf("path %q starts or ends with '/'", n.Path)
	case n.Type < TypeFile || n.Type > TypeDeleted:
		return fmt.Errorf("path %q: unknown type %d", n.Path, n.Type)
	}
	for _, c := range bytes.Split(n.Path, []byte{'/'}) {
		if len(c) == 0 || (string(c) == "..") || (string(c) == "." && len(n.Path) > 1) {
			return fmt.Errorf("path %q has an empty, '.' or '..' component", n.Path)
		}
	}
	var sum int64
	for _, c := range n.Chunks {
		sum += int64(c.Len)
	}
	if n.Type == TypeFile && n.Status == StatusOK && n.LinkTo == nil {
		want := n.Size
		if n.Sparse {
			want = 0
			var end int64 // extents are in order and do not overlap, so want <= Size
			for _, e := range n.Extents {
				if e.Off < end || e.Len < 0 || e.Off > n.Size || e.Len > n.Size-e.Off { // no overflow
					return fmt.Errorf("path %q: extent %d+%d overlaps, is out of order or outside size %d", n.Path, e.Off, e.Len, n.Size)
				}
				end = e.Off + e.Len
				want += e.Len
			}
		}
		if sum != want {
			return fmt.Errorf("path %q: chunks hold %d bytes, want %d", n.Path, sum, want)
		}
	}
	return nil
}

// Compare orders paths in tree order: component by component, bytewise.
// A directory sorts before its contents. The root "." sorts first.
func Compare(a, b []byte) int {
	if bytes.Equal(a, b) {
		return 0
	}
	if string(a) == "." {
		return -1
	}
	if string(b) == "." {
		return 1
	}
	for {
		ia := bytes.IndexByte(a, '/')
		ib := bytes.IndexByte(b, '/')
		ca, cb := a, b
		if ia >= 0 {
			ca = a[:ia]
		}
		if ib >= 0 {
			cb = b[:ib]
		}
		if c := bytes.Compare(ca, cb); c != 0 {
			return c
		}
		switch {
		case ia < 0 && ib < 0:
			return 0
		case ia < 0:
			return -1
		case ib < 0:
			return 1
		}
		a, b = a[ia+1:], b[ib+1:]
	}
}
