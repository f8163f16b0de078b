package tree_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"

	"vaultnode/internal/chunker"
	"vaultnode/internal/limit"
	"vaultnode/internal/tree"
)

// rawListing is the magic followed by the given nodes, encoded without the
// Writer's checks, so a test can build what a hostile peer sends.
func rawListing(t testing.TB, nodes ...any) []byte {
	t.Helper()
	b, err := tree.Marshal(tree.ListingMagic)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		e, err := tree.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, e...)
	}
	return b
}

// wantLimit fails unless err is the named limit error (and a listing error).
func wantLimit(t *testing.T, err error, name string) {
	t.Helper()
	le, ok := limit.As(err)
	if !ok || le.Limit != name || !errors.Is(err, tree.ErrListing) || !tree.IsLimit(err) {
		t.Fatalf("err = %v, want the %s limit", err, name)
	}
	if !strings.Contains(err.Error(), name) {
		t.Fatalf("error %q does not name %s", err, name)
	}
}

// repeatPath is a valid path of n bytes: "a/a/.../a" or "aa/a/.../a".
func repeatPath(n int) []byte {
	if n%2 == 1 {
		return append(bytes.Repeat([]byte("a/"), n/2), 'a')
	}
	return append([]byte("aa"), bytes.Repeat([]byte("/a"), (n-2)/2)...)
}

// Each limit: a node just at the limit decodes (Writer writes it), one just
// over is refused by the Reader and by the Writer, naming the limit.
func TestNodeLimits(t *testing.T) {
	str := func(n int) string { return strings.Repeat("x", n) }
	chunks := func(n int) []tree.ChunkRef { return make([]tree.ChunkRef, n) }
	extents := func(n int) []tree.Extent {
		e := make([]tree.Extent, n)
		for i := range e {
			e[i] = tree.Extent{Off: int64(2 * i), Len: 1}
		}
		return e
	}
	sparse := func(n int) tree.Node {
		c := []tree.ChunkRef{{Len: uint32(n)}}
		return tree.Node{Path: []byte("f"), Type: tree.TypeFile, Size: int64(2 * n), Sparse: true, Extents: extents(n), Chunks: c}
	}
	xattrs := func(n int) []tree.Xattr {
		x := make([]tree.Xattr, n)
		for i := range x {
			x[i] = tree.Xattr{Name: "user.x"}
		}
		return x
	}
	tests := []struct {
		limit    string
		at, over func() tree.Node
		reader   string // the limit the Reader names, when not limit
	}{
		{"tree.MaxPathLen",
			func() tree.Node { return tree.Node{Path: repeatPath(tree.MaxPathLen), Type: tree.TypeDir} },
			func() tree.Node { return tree.Node{Path: repeatPath(tree.MaxPathLen + 1), Type: tree.TypeDir} }, ""},
		{"tree.MaxPathLen",
			func() tree.Node {
				return tree.Node{Path: []byte("l"), Type: tree.TypeFile, LinkTo: repeatPath(tree.MaxPathLen)}
			},
			func() tree.Node {
				return tree.Node{Path: []byte("l"), Type: tree.TypeFile, LinkTo: repeatPath(tree.MaxPathLen + 1)}
			}, ""},
		{"tree.MaxTargetLen",
			func() tree.Node {
				return tree.Node{Path: []byte("s"), Type: tree.TypeSymlink, Target: []byte(str(tree.MaxTargetLen))}
			},
			func() tree.Node {
				return tree.Node{Path: []byte("s"), Type: tree.TypeSymlink, Target: []byte(str(tree.MaxTargetLen + 1))}
			}, ""},
		{"tree.MaxOwnerLen",
			func() tree.Node { return tree.Node{Path: []byte("d"), Type: tree.TypeDir, User: str(tree.MaxOwnerLen)} },
			func() tree.Node {
				return tree.Node{Path: []byte("d"), Type: tree.TypeDir, User: str(tree.MaxOwnerLen + 1)}
			}, ""},
		{"tree.MaxOwnerLen",
			func() tree.Node {
				return tree.Node{Path: []byte("d"), Type: tree.TypeDir, Group: str(tree.MaxOwnerLen)}
			},
			func() tree.Node {
				return tree.Node{Path: []byte("d"), Type: tree.TypeDir, Group: str(tree.MaxOwnerLen + 1)}
			}, ""},
		{"tree.MaxErrLen",
			func() tree.Node {
				return tree.Node{Path: []byte("f"), Type: tree.TypeFile, Status: tree.StatusUnreadable, Err: str(tree.MaxErrLen)}
			},
			func() tree.Node {
				return tree.Node{Path: []byte("f"), Type: tree.TypeFile, Status: tree.StatusUnreadable, Err: str(tree.MaxErrLen + 1)}
			}, ""},
		{"tree.MaxXattrs",
			func() tree.Node {
				return tree.Node{Path: []byte("d"), Type: tree.TypeDir, Xattrs: xattrs(tree.MaxXattrs)}
			},
			func() tree.Node {
				return tree.Node{Path: []byte("d"), Type: tree.TypeDir, Xattrs: xattrs(tree.MaxXattrs + 1)}
			}, ""},
		{"tree.MaxXattrNameLen",
			func() tree.Node {
				return tree.Node{Path: []byte("d"), Type: tree.TypeDir, Xattrs: []tree.Xattr{{Name: "user." + str(tree.MaxXattrNameLen-5)}}}
			},
			func() tree.Node {
				return tree.Node{Path: []byte("d"), Type: tree.TypeDir, Xattrs: []tree.Xattr{{Name: "user." + str(tree.MaxXattrNameLen-4)}}}
			}, ""},
		{"tree.MaxXattrValueLen",
			func() tree.Node {
				return tree.Node{Path: []byte("d"), Type: tree.TypeDir, Xattrs: []tree.Xattr{{Name: "user.x", Value: make([]byte, tree.MaxXattrValueLen)}}}
			},
			func() tree.Node {
				return tree.Node{Path: []byte("d"), Type: tree.TypeDir, Xattrs: []tree.Xattr{{Name: "user.x", Value: make([]byte, tree.MaxXattrValueLen+1)}}}
			},
			// Refused from its head by the bound of every string, which is
			// the same.
			"tree.MaxStringLen"},
		{"tree.MaxChunks",
			func() tree.Node {
				return tree.Node{Path: []byte("f"), Type: tree.TypeFile, Status: tree.StatusUnreadable, Chunks: chunks(tree.MaxChunks)}
			},
			func() tree.Node {
				return tree.Node{Path: []byte("f"), Type: tree.TypeFile, Status: tree.StatusUnreadable, Chunks: chunks(tree.MaxChunks + 1)}
			}, ""},
		{"tree.MaxExtents",
			func() tree.Node { return sparse(tree.MaxExtents) },
			func() tree.Node { return sparse(tree.MaxExtents + 1) }, ""},
	}
	for _, tt := range tests {
		at, over := tt.at(), tt.over()
		if err := at.Validate(); err != nil {
			t.Fatalf("%s: at the limit: %v", tt.limit, err)
		}
		got, err := decode(encode(t, []tree.Node{at}))
		if err != nil || len(got) != 1 {
			t.Fatalf("%s: at the limit: %v", tt.limit, err)
		}
		_, err = decode(rawListing(t, over))
		if tt.reader != "" {
			wantLimit(t, err, tt.reader)
		} else {
			wantLimit(t, err, tt.limit)
		}
		var buf bytes.Buffer
		w, _ := tree.NewWriter(&buf)
		err = w.Write(&over)
		if tt.limit == "tree.MaxErrLen" {
			// The Writer shortens a long reason instead.
			if err != nil {
				t.Fatalf("write a long reason: %v", err)
			}
			got, err := decode(buf.Bytes())
			if err != nil || len(got[0].Err) > tree.MaxErrLen || !strings.HasSuffix(got[0].Err, "...") {
				t.Fatalf("long reason written as %d bytes: %v", len(got[0].Err), err)
			}
			continue
		}
		if le, ok := limit.As(err); !ok || le.Limit != tt.limit {
			t.Fatalf("%s: Writer: err = %v", tt.limit, err)
		}
	}
}

// A node of exactly MaxNodeBytes decodes; one byte more is refused.
func TestNodeBytesLimit(t *testing.T) {
	n := tree.Node{Path: []byte("d"), Type: tree.TypeDir}
	size := func() int {
		b, err := tree.Marshal(&n)
		if err != nil {
			t.Fatal(err)
		}
		return len(b)
	}
	// Fill with xattrs of 60,000 bytes, then make the last one's length
	// (kept between 256 and 65,535, so its head stays 3 bytes) take the
	// node to MaxNodeBytes exactly.
	s0 := size()
	n.Xattrs = []tree.Xattr{{Name: "user.x", Value: make([]byte, 60000)}}
	per := size() - s0
	k := (tree.MaxNodeBytes - s0) / per
	for range k - 1 {
		n.Xattrs = append(n.Xattrs, n.Xattrs[0])
	}
	n.Xattrs = append(n.Xattrs, tree.Xattr{Name: "user.y", Value: make([]byte, 1000)})
	last := &n.Xattrs[len(n.Xattrs)-1]
	last.Value = make([]byte, len(last.Value)+tree.MaxNodeBytes-size())
	if size() != tree.MaxNodeBytes {
		t.Fatalf("node of %d bytes, want %d", size(), tree.MaxNodeBytes)
	}
	if _, err := decode(encode(t, []tree.Node{n})); err != nil {
		t.Fatalf("node of MaxNodeBytes: %v", err)
	}
	last.Value = append(last.Value, 0)
	_, err := decode(rawListing(t, n))
	wantLimit(t, err, "tree.MaxNodeBytes")
	w, _ := tree.NewWriter(io.Discard)
	if le, ok := limit.As(w.Write(&n)); !ok || le.Limit != "tree.MaxNodeBytes" {
		t.Fatalf("Writer: err = %v", w.Write(&n))
	}
}

// cborHead encodes a CBOR head with an 8-byte argument.
func cborHead(major byte, arg uint64) []byte {
	b := []byte{major<<5 | 27, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint64(b[1:], arg)
	return b
}

// zeros is an endless stream of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// allocated returns the bytes fn allocated.
func allocated(fn func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// Declared lengths and counts far over the limits are refused from the
// head, before the bytes behind them are read or allocated, even when the
// stream does hold them (here up to 64 MiB of zeros: the attack of issue 10
// repeated one zero chunk after a head declaring a huge string).
func TestHostileHeadsAllocateLittle(t *testing.T) {
	magic := rawListing(t)
	deep := bytes.Repeat([]byte{0x81}, 100000)
	tests := []struct {
		name, limit string
		head        []byte
	}{
		{"4 GiB path", "tree.MaxPathLen", append([]byte{0xa1, 0x01}, cborHead(2, 4<<30)...)},
		{"4 GiB reason", "tree.MaxErrLen", append([]byte{0xa1, 0x18, 26}, cborHead(3, 4<<30)...)},
		{"4 GiB string, unknown field", "tree.MaxStringLen", append([]byte{0xa1, 0x18, 99}, cborHead(2, 4<<30)...)},
		{"4 GiB string as a key", "tree.MaxStringLen", append([]byte{0xa1}, cborHead(2, 4<<30)...)},
		{"4 GiB string in an xattr", "tree.MaxStringLen", append([]byte{0xa1, 0x13, 0x81, 0xa1, 0x02}, cborHead(2, 4<<30)...)},
		{"2^31 chunks", "tree.MaxChunks", append([]byte{0xa1, 0x17}, cborHead(4, 1<<31)...)},
		{"2^31 array elsewhere", "tree.MaxChunks", append([]byte{0xa1, 0x18, 99}, cborHead(4, 1<<31)...)},
		{"2^31 xattrs", "tree.MaxXattrs", append([]byte{0xa1, 0x13}, cborHead(4, 1<<31)...)},
		{"2^40 map pairs", "tree.MaxNodeFields", cborHead(5, 1<<40)},
		{"2^63 elements", "tree.MaxChunks", append([]byte{0xa1, 0x17}, cborHead(4, 1<<63)...)},
		{"deep nesting", "tree.MaxNodeDepth", deep},
		// An array of 2^19 byte strings of 64 KiB - 1: every head is
		// within the limits, the node is not.
		{"node never ends", "tree.MaxNodeBytes", []byte{0xa1, 0x17, 0x9a, 0x00, 0x08, 0x00, 0x00}},
	}
	for _, tt := range tests {
		mk := func() io.Reader {
			var rest io.Reader = zeros{}
			if tt.limit == "tree.MaxNodeBytes" {
				rest = &bigStrings{}
			}
			return io.MultiReader(bytes.NewReader(magic), bytes.NewReader(tt.head), io.LimitReader(rest, 64<<20))
		}
		var err error
		got := allocated(func() {
			var rd *tree.Reader
			if rd, err = tree.NewReader(mk()); err == nil {
				_, err = rd.Next()
			}
		})
		wantLimit(t, err, tt.limit)
		max := uint64(256 << 10) // the stream buffer, the stack, the error
		if tt.limit == "tree.MaxNodeBytes" {
			max = 3 * tree.MaxNodeBytes // the node's bytes as their buffer doubles
		}
		if got > max {
			t.Errorf("%s: allocated %d bytes, want at most %d", tt.name, got, max)
		}
		t.Logf("%s: refused with %d bytes allocated", tt.name, got)
	}
}

// bigStrings streams CBOR byte strings of 65,535 zero bytes, endlessly.
type bigStrings struct{ off int }

func (b *bigStrings) Read(p []byte) (int, error) {
	for i := range p {
		switch b.off {
		case 0:
			p[i] = 0x59
		case 1, 2:
			p[i] = 0xff
		default:
			p[i] = 0
		}
		b.off = (b.off + 1) % (3 + 0xffff)
	}
	return len(p), nil
}

func TestListingRefs(t *testing.T) {
	if tree.MaxListingChunk != chunker.MaxSize {
		t.Fatalf("MaxListingChunk = %d, the chunker cuts up to %d", tree.MaxListingChunk, chunker.MaxSize)
	}
	refs := func(n int, l uint32) []tree.ChunkRef {
		r := make([]tree.ChunkRef, n)
		for i := range r {
			r[i] = tree.ChunkRef{ID: [32]byte{1}, Len: l} // the same chunk again and again
		}
		return r
	}
	if err := tree.CheckRefs(refs(tree.MaxListingRefs, tree.MaxListingBytes/tree.MaxListingRefs)); err != nil {
		t.Fatalf("at the limits: %v", err)
	}
	for _, tt := range []struct {
		limit string
		refs  []tree.ChunkRef
	}{
		{"tree.MaxListingRefs", refs(tree.MaxListingRefs+1, 1)},
		{"tree.MaxListingChunk", refs(1, tree.MaxListingChunk+1)},
		{"tree.MaxListingBytes", append(refs(tree.MaxListingRefs-1, tree.MaxListingBytes/tree.MaxListingRefs), tree.ChunkRef{Len: tree.MaxListingBytes/tree.MaxListingRefs + 1})},
		// The attack of issue 10: one 8 MiB chunk referenced 8,000 times.
		{"tree.MaxListingChunk", refs(8000, 8<<20)},
	} {
		wantLimit(t, tree.CheckRefs(tt.refs), tt.limit)
		_, err := tree.NewListingReader(zeros{}, tt.refs)
		wantLimit(t, err, tt.limit)
	}
	if err := tree.CheckRefs(refs(1, 0)); err == nil || !errors.Is(err, tree.ErrListing) {
		t.Fatalf("empty chunk: %v", err)
	}
}

// The listing's bytes must be exactly what its references declare.
func TestListingReaderLength(t *testing.T) {
	b := encode(t, sampleNodes())
	half := uint32(len(b) / 2)
	exact := []tree.ChunkRef{{Len: half}, {Len: uint32(len(b)) - half}}
	read := func(b []byte, refs []tree.ChunkRef) error {
		rd, err := tree.NewListingReader(bytes.NewReader(b), refs)
		for err == nil {
			_, err = rd.Next()
		}
		if err == io.EOF {
			return nil
		}
		return err
	}
	if err := read(b, exact); err != nil {
		t.Fatalf("exact: %v", err)
	}
	short := []tree.ChunkRef{{Len: half}, {Len: uint32(len(b)) - half - 1}}
	if err := read(b, short); err == nil || !errors.Is(err, tree.ErrListing) {
		t.Fatalf("more bytes than declared: %v", err)
	}
	long := []tree.ChunkRef{{Len: half}, {Len: uint32(len(b)) - half + 1}}
	if err := read(b, long); err == nil || !errors.Is(err, tree.ErrListing) {
		t.Fatalf("fewer bytes than declared: %v", err)
	}
}
