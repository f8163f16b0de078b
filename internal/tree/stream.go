package tree

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/fxamacker/cbor/v2"

	"vaultnode/internal/limit"
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
	// The same limits as readItem's, for Unmarshal and as a second fence.
	decMode, err = cbor.DecOptions{
		MaxArrayElements:  MaxChunks,
		MaxMapPairs:       MaxNodeFields,
		MaxNestedLevels:   MaxNodeDepth,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
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
// newer format is never half-read), within the node limits of nesting, map
// pairs and array elements. Its allocations are bounded by len(b), which
// the caller bounds.
func Unmarshal(b []byte, v any) error { return decMode.Unmarshal(b, v) }

// Writer encodes nodes in tree order.
type Writer struct {
	w    io.Writer
	buf  []byte // one encoded node, checked against MaxNodeBytes
	last []byte
	n    int64
}

// NewWriter writes the listing magic to w.
func NewWriter(w io.Writer) (*Writer, error) {
	b, err := encMode.Marshal(ListingMagic)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(b); err != nil {
		return nil, fmt.Errorf("write listing magic: %w", err)
	}
	return &Writer{w: w}, nil
}

// Write appends a node; nodes must come in strictly increasing tree order
// and within the limits a Reader enforces (an error wrapping
// limit.ErrExceeded says which; see CheckLimits). A reason longer than
// MaxErrLen is shortened.
func (w *Writer) Write(n *Node) error {
	if w.n > 0 && Compare(w.last, n.Path) >= 0 {
		return fmt.Errorf("write node %q: out of tree order after %q", n.Path, w.last)
	}
	n = shortenErr(n)
	if err := n.CheckLimits(); err != nil {
		return fmt.Errorf("write node %.200q: %w", n.Path, err)
	}
	w.buf = appendNode(w.buf[:0], n)
	if err := limit.Check("tree.MaxNodeBytes", "encoded node bytes", uint64(len(w.buf)), MaxNodeBytes); err != nil {
		return fmt.Errorf("write node %.200q: %w", n.Path, err)
	}
	if _, err := w.w.Write(w.buf); err != nil {
		return fmt.Errorf("write node %q: %w", n.Path, err)
	}
	if cap(w.buf) > 1<<20 { // do not keep a big node's buffer
		w.buf = nil
	}
	w.last = append(w.last[:0], n.Path...)
	w.n++
	return nil
}

// Count is the number of nodes written.
func (w *Writer) Count() int64 { return w.n }

// Reader decodes a listing. Its memory is bounded by the node limits: it
// holds one encoded node (at most MaxNodeBytes, and only the bytes the node
// really has: a declared length over a limit is refused before anything is
// read) and the node decoded from it.
type Reader struct {
	br   *bufio.Reader
	src  *countReader
	buf  []byte
	last []byte
	n    int64
	fast fastDec
	// reuse: every node is decoded into node (Reuse).
	reuse bool
	node  Node
}

// Reuse makes Next decode every node into the same Node, and its path and
// references into the storage of the node before: what Next returns, and
// every slice in it, is valid only until the next call. It is for a caller
// that keeps nothing of a node it has looked at (a commit's check): a
// fresh node for each cost a quarter of the decoding in allocations
// (docs/performance.md, item 56).
func (r *Reader) Reuse() { r.reuse = true }

// maxKeptRefs bounds the references' storage a reused node keeps (36 bytes
// each): a rare node with more gets its own.
const maxKeptRefs = 4096

// fresh returns an empty node to decode into: a new one, or the reused
// one, emptied, whose path and references' storage the decoder takes.
func (r *Reader) fresh() *Node {
	if !r.reuse {
		return new(Node)
	}
	n := &r.node
	if cap(n.Path) > cap(r.fast.path) {
		r.fast.path = n.Path[:0]
	}
	if cap(n.Chunks) > cap(r.fast.refs) && cap(n.Chunks) <= maxKeptRefs {
		r.fast.refs = n.Chunks[:0]
	}
	*n = Node{}
	return n
}

// NewReader checks the magic and returns a Reader.
func NewReader(r io.Reader) (*Reader, error) {
	src := &countReader{r: r}
	rd := &Reader{br: bufio.NewReaderSize(src, 64<<10), src: src}
	b, err := readItem(rd.br, nil, &magicLimits)
	if err != nil {
		return nil, fmt.Errorf("%w: read magic: %w", ErrListing, err)
	}
	var magic string
	if err := decMode.Unmarshal(b, &magic); err != nil {
		return nil, fmt.Errorf("%w: read magic: %w", ErrListing, err)
	}
	if magic != ListingMagic {
		return nil, fmt.Errorf("%w: magic %q, want %q (written by a newer vaultnode?)", ErrListing, magic, ListingMagic)
	}
	return rd, nil
}

// magicLimits bound the item before the first node: a short text string.
var magicLimits = itemLimits{item: 64, str: 64, array: 0, pairs: 0, depth: 0}

// NewListingReader reads the listing made of refs, whose plaintext r
// streams in order: it checks refs against the listing limits first
// (CheckRefs), and fails when r holds more or fewer bytes than the
// references declare, so the work of one listing is bounded by
// MaxListingBytes whatever the references repeat.
func NewListingReader(r io.Reader, refs []ChunkRef) (*Reader, error) {
	if err := CheckRefs(refs); err != nil {
		return nil, err
	}
	return NewReader(exactFor(r, refs))
}

// NewTailReader reads the nodes of a listing from a node boundary inside
// it, for a second decoder that takes a listing's second half (the vault's
// commit): r streams the plaintext of refs, a listing's chunks from one on,
// whose first skip bytes are skipped; there is no magic. Offset counts from
// the first of refs, skip included. Whether skip is a node boundary is the
// caller's to establish (a decoder from the listing's start must end its
// last node there); the reader checks what it decodes as NewListingReader's
// does, and fails when r holds more or fewer bytes than refs declare.
func NewTailReader(r io.Reader, refs []ChunkRef, skip int64) (*Reader, error) {
	ex := exactFor(r, refs)
	if skip < 0 || uint64(skip) >= ex.total {
		return nil, fmt.Errorf("%w: a tail from byte %d of %d", ErrListing, skip, ex.total)
	}
	src := &countReader{r: ex}
	rd := &Reader{br: bufio.NewReaderSize(src, 64<<10), src: src}
	if _, err := rd.br.Discard(int(skip)); err != nil {
		return nil, fmt.Errorf("%w: skip %d bytes: %w", ErrListing, skip, err)
	}
	return rd, nil
}

// exactFor returns r read as holding exactly the bytes refs declare.
func exactFor(r io.Reader, refs []ChunkRef) *exactReader {
	var total uint64
	for _, c := range refs {
		total += uint64(c.Len)
	}
	return &exactReader{r: r, left: total, total: total}
}

// exactReader fails when r does not hold exactly total bytes.
type exactReader struct {
	r           io.Reader
	left, total uint64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if uint64(len(p)) > e.left+1 {
		p = p[:e.left+1]
	}
	n, err := e.r.Read(p)
	if uint64(n) > e.left {
		return 0, fmt.Errorf("listing holds more than the %d bytes its chunk references declare", e.total)
	}
	e.left -= uint64(n)
	if err == io.EOF && e.left > 0 {
		return n, fmt.Errorf("listing ends after %d bytes, its chunk references declare %d: %w", e.total-e.left, e.total, io.ErrUnexpectedEOF)
	}
	return n, err
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Offset is how many bytes of the stream the reader has consumed: after
// Next, where the node it returned ends (and the next one begins).
func (r *Reader) Offset() int64 { return r.src.n - int64(r.br.Buffered()) }

// Next returns the next node or io.EOF.
func (r *Reader) Next() (*Node, error) {
	n, err := r.decode()
	if err == io.EOF {
		return nil, io.EOF
	}
	if err != nil {
		return nil, fmt.Errorf("%w: node %d: %w", ErrListing, r.n, err)
	}
	if err := n.Validate(); err != nil {
		return nil, fmt.Errorf("%w: node %d: %w", ErrListing, r.n, err)
	}
	if r.n > 0 && Compare(r.last, n.Path) >= 0 {
		return nil, fmt.Errorf("%w: node %.200q out of tree order after %.200q", ErrListing, n.Path, r.last)
	}
	r.last = append(r.last[:0], n.Path...)
	r.n++
	return n, nil
}

// decode reads the next node: straight from the read buffer when it holds
// the whole node in the fast decoder's form (decode.go), else framed by
// readItem within the node limits and decoded from that copy, by the fast
// decoder or, for any other form, by the CBOR library.
func (r *Reader) decode() (*Node, error) {
	n := r.fresh()
	if r.br.Buffered() == 0 { // fill the buffer
		if _, err := r.br.Peek(1); err != nil {
			// As readItem: io.EOF before a node's first byte ends the
			// listing. The error is returned here, not read again:
			// bufio hands it out once.
			return nil, err
		}
	}
	if b, _ := r.br.Peek(r.br.Buffered()); len(b) > 0 {
		if used, ok := r.fast.decodeNode(b, n); ok {
			r.br.Discard(used)
			return n, nil
		}
		*n = Node{}
	}
	b, err := readItem(r.br, r.buf, &nodeLimits)
	r.buf = b
	if err != nil {
		return nil, err
	}
	if cap(r.buf) > 1<<20 { // do not keep a big node's buffer
		r.buf = nil
	}
	if used, ok := r.fast.decodeNode(b, n); ok && used == len(b) {
		return n, nil
	}
	*n = Node{}
	if err := decMode.Unmarshal(b, n); err != nil {
		return nil, err
	}
	return n, nil
}

// Validate checks a node's invariants and limits.
func (n *Node) Validate() error {
	if err := n.CheckLimits(); err != nil {
		return err
	}
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
	for p := n.Path; ; {
		c, rest, more := bytes.Cut(p, []byte{'/'})
		if len(c) == 0 || (string(c) == "..") || (string(c) == "." && len(n.Path) > 1) {
			return fmt.Errorf("path %q has an empty, '.' or '..' component", n.Path)
		}
		if !more {
			break
		}
		p = rest
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
//
// Components hold no '/', so comparing them one by one is comparing the
// paths bytewise with '/' below every other byte: Compare finds the first
// byte where they differ, eight at a time, and looks at it alone. The
// read-ahead, the listing's merge and the walker's previous listing
// compare paths that share long prefixes, millions of times a backup.
func Compare(a, b []byte) int {
	if len(a) == 1 && a[0] == '.' {
		if len(b) == 1 && b[0] == '.' {
			return 0
		}
		return -1
	}
	if len(b) == 1 && b[0] == '.' {
		return 1
	}
	n := min(len(a), len(b))
	i := 0
	for i+8 <= n && binary.LittleEndian.Uint64(a[i:]) == binary.LittleEndian.Uint64(b[i:]) {
		i += 8
	}
	for i < n && a[i] == b[i] {
		i++
	}
	switch {
	case i == n: // one is the other, or holds it whole: the shorter first
		return cmp.Compare(len(a), len(b))
	case a[i] == '/': // a's component ends where b's goes on
		return -1
	case b[i] == '/':
		return 1
	case a[i] < b[i]:
		return -1
	}
	return 1
}
