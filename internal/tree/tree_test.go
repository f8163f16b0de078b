package tree_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"vaultnode/internal/tree"
)

func TestCompare(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{".", ".", 0},
		{".", "a", -1},
		{"a", ".", 1},
		{"a", "a", 0},
		{"a", "b", -1},
		{"a", "a/b", -1},      // a directory before its contents
		{"a/b", "a.b", -1},    // component order, not byte order ('/' > '.')
		{"a/z", "a-b", -1},    // '-' < '/' bytewise, but a's contents follow a
		{"a/b/c", "a/b", 1},   // contents after their directory
		{"a/b/c", "a/bc", -1}, // b < bc
		{"ab", "a/b", 1},      // a < ab
		{"home/ann", "home", 1},
		{"\xff", "\x01", 1}, // bytewise, not UTF-8
		{"a/\x00", "a", 1},
	}
	for _, tt := range tests {
		if got := tree.Compare([]byte(tt.a), []byte(tt.b)); sign(got) != tt.want {
			t.Errorf("Compare(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func sign(x int) int {
	switch {
	case x < 0:
		return -1
	case x > 0:
		return 1
	}
	return 0
}

// randPath makes paths over a small alphabet that includes bytes on both
// sides of '/', so component and byte order disagree often.
func randPath(r *rand.Rand) []byte {
	const alpha = "-.0/Aa\xff"
	n := 1 + r.IntN(3)
	var p []byte
	for i := 0; i < n; i++ {
		if i > 0 {
			p = append(p, '/')
		}
		m := 1 + r.IntN(3)
		for j := 0; j < m; j++ {
			c := alpha[r.IntN(len(alpha))]
			if c == '/' {
				c = '+'
			}
			p = append(p, c)
		}
		if c := p[bytes.LastIndexByte(p, '/')+1:]; string(c) == "." || string(c) == ".." {
			p = append(p, 'x') // no "." or ".." components: Validate refuses them
		}
	}
	if r.IntN(20) == 0 {
		return []byte(".")
	}
	return p
}

// compareByComponents is tree order as its definition says, component by
// component: the reference Compare's byte scan must agree with.
func compareByComponents(a, b []byte) int {
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
		ia, ib := bytes.IndexByte(a, '/'), bytes.IndexByte(b, '/')
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

// TestCompareAgreesWithComponents: Compare's scan of bytes orders every
// pair of paths as comparing their components one by one does, on short
// paths over bytes on both sides of '/' and on long ones that differ late.
func TestCompareAgreesWithComponents(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	long := func() []byte {
		p := []byte("github.com/envoyproxy/go-control-plane/envoy@v1.32.4/config/")
		return append(p, randPath(r)...)
	}
	for i := 0; i < 300000; i++ {
		a, b := randPath(r), randPath(r)
		if i%2 == 1 {
			a, b = long(), long()
		}
		if got, want := sign(tree.Compare(a, b)), sign(compareByComponents(a, b)); got != want {
			t.Fatalf("Compare(%q, %q) = %d, by components %d", a, b, got, want)
		}
	}
}

// TestCompareProperties checks that Compare is a total order: antisymmetric,
// transitive, consistent with equality, with every directory before its
// contents and the root first.
func TestCompareProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	ps := make([][]byte, 3000)
	for i := range ps {
		ps[i] = randPath(r)
	}
	for i := 0; i < 200000; i++ {
		a, b, c := ps[r.IntN(len(ps))], ps[r.IntN(len(ps))], ps[r.IntN(len(ps))]
		ab, ba := tree.Compare(a, b), tree.Compare(b, a)
		if sign(ab) != -sign(ba) {
			t.Fatalf("not antisymmetric: Compare(%q,%q)=%d, reverse %d", a, b, ab, ba)
		}
		if (ab == 0) != bytes.Equal(a, b) {
			t.Fatalf("Compare(%q,%q)=%d disagrees with equality", a, b, ab)
		}
		if ab < 0 && tree.Compare(b, c) < 0 && tree.Compare(a, c) >= 0 {
			t.Fatalf("not transitive: %q < %q < %q but not %q < %q", a, b, c, a, c)
		}
		if string(a) != "." && tree.Compare([]byte("."), a) >= 0 {
			t.Fatalf("root does not sort before %q", a)
		}
	}
	// Sorting and then checking every adjacent pair and every directory
	// prefix: a directory comes before everything inside it, and nothing
	// outside it sits between the two.
	slices.SortFunc(ps, tree.Compare)
	ps = slices.CompactFunc(ps, func(a, b []byte) bool { return bytes.Equal(a, b) })
	pos := map[string]int{}
	for i, p := range ps {
		pos[string(p)] = i
	}
	for i, p := range ps {
		for j := bytes.LastIndexByte(p, '/'); j > 0; j = bytes.LastIndexByte(p[:j], '/') {
			dir := p[:j]
			if k, ok := pos[string(dir)]; ok {
				if k >= i {
					t.Fatalf("directory %q sorts after its content %q", dir, p)
				}
				for m := k + 1; m < i; m++ {
					if !bytes.HasPrefix(ps[m], append(append([]byte(nil), dir...), '/')) {
						t.Fatalf("%q sorts between directory %q and its content %q", ps[m], dir, p)
					}
				}
			}
		}
	}
	// The order is a depth-first walk with names sorted bytewise.
	walk := depthFirst(ps)
	if !slices.EqualFunc(walk, ps, bytes.Equal) {
		t.Fatal("tree order is not the order of a depth-first walk with sorted names")
	}
}

// depthFirst orders paths as a walk would: children sorted by name, each
// directory's subtree right after it.
func depthFirst(ps [][]byte) [][]byte {
	type node struct {
		self     []byte
		children map[string]*node
	}
	root := &node{children: map[string]*node{}}
	var rootSelf []byte
	for _, p := range ps {
		if string(p) == "." {
			rootSelf = p
			continue
		}
		n := root
		for _, c := range bytes.Split(p, []byte("/")) {
			ch := n.children[string(c)]
			if ch == nil {
				ch = &node{children: map[string]*node{}}
				n.children[string(c)] = ch
			}
			n = ch
		}
		n.self = p
	}
	var out [][]byte
	if rootSelf != nil {
		out = append(out, rootSelf)
	}
	var visit func(n *node)
	visit = func(n *node) {
		names := make([]string, 0, len(n.children))
		for k := range n.children {
			names = append(names, k)
		}
		sort.Strings(names) // bytewise
		for _, k := range names {
			ch := n.children[k]
			if ch.self != nil {
				out = append(out, ch.self)
			}
			visit(ch)
		}
	}
	visit(root)
	return out
}

func FuzzCompare(f *testing.F) {
	f.Add([]byte("a/b"), []byte("a.b"), []byte("a"))
	f.Add([]byte("."), []byte("x"), []byte("x/y"))
	f.Fuzz(func(t *testing.T, a, b, c []byte) {
		ab := tree.Compare(a, b)
		if sign(ab) != -sign(tree.Compare(b, a)) {
			t.Fatalf("not antisymmetric on %q %q", a, b)
		}
		if (ab == 0) != bytes.Equal(a, b) {
			t.Fatalf("Compare(%q,%q)=%d disagrees with equality", a, b, ab)
		}
		if ab < 0 && tree.Compare(b, c) < 0 && tree.Compare(a, c) >= 0 {
			t.Fatalf("not transitive: %q %q %q", a, b, c)
		}
	})
}

func sampleNodes() []tree.Node {
	id := func(b byte) [32]byte { return [32]byte{b, b, b} }
	return []tree.Node{
		{Path: []byte("."), Type: tree.TypeDir, Mode: 0o755, Mtime: tree.Timespec{Sec: 1700000000, Nsec: 5}},
		{Path: []byte("bin"), Type: tree.TypeSymlink, Mode: 0o777, Target: []byte("usr/bin")},
		{Path: []byte("dev"), Type: tree.TypeDir, Mode: 0o755, MountPoint: true},
		{Path: []byte("dev/null"), Type: tree.TypeChar, Mode: 0o666, Rdev: 0x103},
		{Path: []byte("gone"), Type: tree.TypeDeleted},
		{Path: []byte("home"), Type: tree.TypeDir, Mode: 0o755, UID: 0, GID: 0, User: "root", Group: "root"},
		{Path: []byte("home/ann"), Type: tree.TypeDir, Mode: 0o700, UID: 1000, GID: 1000, User: "ann", Group: "ann",
			Xattrs: []tree.Xattr{{Name: "system.posix_acl_access", Value: []byte{2, 0, 0, 0}}, {Name: "user.tag", Value: []byte("x")}}},
		{Path: []byte("home/ann/big.img"), Type: tree.TypeFile, Mode: 0o600, Size: 1 << 30, Sparse: true,
			Extents: []tree.Extent{{Off: 0, Len: 4096}, {Off: 1 << 29, Len: 8192}},
			Chunks:  []tree.ChunkRef{{ID: id(1), Len: 12288}}},
		{Path: []byte("home/ann/doc.txt"), Type: tree.TypeFile, Mode: 0o644, Size: 300, Nlink: 2, Dev: 2049, Ino: 77,
			Mtime: tree.Timespec{Sec: 1700000001}, Ctime: tree.Timespec{Sec: 1700000002, Nsec: 3}, Btime: tree.Timespec{Sec: 1},
			Atime: tree.Timespec{Sec: 1700000003}, Flags: 0x10,
			Chunks: []tree.ChunkRef{{ID: id(2), Len: 100}, {ID: id(3), Len: 200}}},
		{Path: []byte("home/ann/doc2.txt"), Type: tree.TypeFile, Mode: 0o644, Size: 300, LinkTo: []byte("home/ann/doc.txt")},
		{Path: []byte("home/ann/empty"), Type: tree.TypeFile, Mode: 0o644},
		{Path: []byte("home/ann/fifo"), Type: tree.TypeFIFO, Mode: 0o600},
		{Path: []byte("home/ann/gone.tmp"), Type: tree.TypeFile, Status: tree.StatusUnreadable, Err: "permission denied"},
		{Path: []byte("home/ann/log"), Type: tree.TypeFile, Size: 50, Status: tree.StatusInconsistent, Err: "changed while read"},
		{Path: []byte("home/ann/na\xefve\xff"), Type: tree.TypeFile, Size: 1, Chunks: []tree.ChunkRef{{ID: id(4), Len: 1}}},
		{Path: []byte("home/ann/sock"), Type: tree.TypeSocket},
		{Path: []byte("home/ann.bak"), Type: tree.TypeBlock, Rdev: 0x801},
	}
}

func encode(t testing.TB, nodes []tree.Node) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := tree.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for i := range nodes {
		if err := w.Write(&nodes[i]); err != nil {
			t.Fatal(err)
		}
	}
	if w.Count() != int64(len(nodes)) {
		t.Fatalf("Count = %d", w.Count())
	}
	return buf.Bytes()
}

func decode(b []byte) ([]tree.Node, error) {
	rd, err := tree.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	var out []tree.Node
	for {
		n, err := rd.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, *n)
	}
}

func TestListingRoundTrip(t *testing.T) {
	nodes := sampleNodes()
	b := encode(t, nodes)
	got, err := decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(nodes, got); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
	// Deterministic: the same nodes always encode to the same bytes.
	if !bytes.Equal(b, encode(t, sampleNodes())) {
		t.Fatal("encoding is not deterministic")
	}
	// An empty listing is the magic alone.
	if got, err := decode(encode(t, nil)); err != nil || len(got) != 0 {
		t.Fatalf("empty listing: %v %v", got, err)
	}
}

func TestWriterOrder(t *testing.T) {
	var buf bytes.Buffer
	w, _ := tree.NewWriter(&buf)
	if err := w.Write(&tree.Node{Path: []byte("b"), Type: tree.TypeDir}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"b", "a", "."} {
		if err := w.Write(&tree.Node{Path: []byte(p), Type: tree.TypeDir}); err == nil {
			t.Errorf("Write %q after b: no error", p)
		}
	}
}

func TestReaderErrors(t *testing.T) {
	raw := func(vs ...any) []byte {
		var b []byte
		for _, v := range vs {
			e, err := tree.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			b = append(b, e...)
		}
		return b
	}
	n := func(p string, typ tree.Type) tree.Node { return tree.Node{Path: []byte(p), Type: typ} }
	file := func(p string, size int64, chunks ...uint32) tree.Node {
		x := tree.Node{Path: []byte(p), Type: tree.TypeFile, Size: size}
		for _, c := range chunks {
			x.Chunks = append(x.Chunks, tree.ChunkRef{Len: c})
		}
		return x
	}
	tests := []struct {
		name string
		b    []byte
	}{
		{"no magic", raw(n("a", tree.TypeDir))},
		{"other magic", raw("vaultnode listing v2", n("a", tree.TypeDir))},
		{"out of order", raw(tree.ListingMagic, n("b", tree.TypeDir), n("a", tree.TypeDir))},
		{"duplicate", raw(tree.ListingMagic, n("a", tree.TypeDir), n("a", tree.TypeDir))},
		{"content before dir", raw(tree.ListingMagic, n("a/b", tree.TypeDir), n("a", tree.TypeDir))},
		{"empty path", raw(tree.ListingMagic, n("", tree.TypeDir))},
		{"absolute", raw(tree.ListingMagic, n("/etc", tree.TypeDir))},
		{"trailing slash", raw(tree.ListingMagic, n("etc/", tree.TypeDir))},
		{"dotdot", raw(tree.ListingMagic, n("a/../b", tree.TypeDir))},
		{"dot component", raw(tree.ListingMagic, n("a/./b", tree.TypeDir))},
		{"double slash", raw(tree.ListingMagic, n("a//b", tree.TypeDir))},
		{"nul", raw(tree.ListingMagic, n("a\x00b", tree.TypeDir))},
		{"type 0", raw(tree.ListingMagic, n("a", 0))},
		{"type 9", raw(tree.ListingMagic, n("a", 9))},
		{"chunks short", raw(tree.ListingMagic, file("a", 10, 4, 5))},
		{"chunks long", raw(tree.ListingMagic, file("a", 10, 6, 5))},
		{"extent outside", raw(tree.ListingMagic, tree.Node{Path: []byte("a"), Type: tree.TypeFile, Size: 10, Sparse: true, Extents: []tree.Extent{{Off: 8, Len: 4}}, Chunks: []tree.ChunkRef{{Len: 4}}})},
		{"negative extent", raw(tree.ListingMagic, tree.Node{Path: []byte("a"), Type: tree.TypeFile, Size: 10, Sparse: true, Extents: []tree.Extent{{Off: -1, Len: 4}}, Chunks: []tree.ChunkRef{{Len: 4}}})},
		{"overflowing extent", raw(tree.ListingMagic, tree.Node{Path: []byte("a"), Type: tree.TypeFile, Size: 10, Sparse: true,
			Extents: []tree.Extent{{Off: 1<<63 - 1, Len: 4}}, Chunks: []tree.ChunkRef{{Len: 4}}})},
		{"overlapping extents wrap the sum", raw(tree.ListingMagic, tree.Node{Path: []byte("a"), Type: tree.TypeFile, Size: 1 << 62, Sparse: true,
			Extents: []tree.Extent{{Off: 0, Len: 1 << 62}, {Off: 0, Len: 1 << 62}, {Off: 0, Len: 1 << 62}, {Off: 0, Len: 1 << 62}}})},
		{"extents out of order", raw(tree.ListingMagic, tree.Node{Path: []byte("a"), Type: tree.TypeFile, Size: 10, Sparse: true,
			Extents: []tree.Extent{{Off: 5, Len: 1}, {Off: 0, Len: 1}}, Chunks: []tree.ChunkRef{{Len: 2}}})},
		{"unknown field", raw(tree.ListingMagic, map[int]any{1: []byte("a"), 2: 2, 99: 1})},
		{"duplicate key", append(raw(tree.ListingMagic), 0xa2, 0x01, 0x41, 'a', 0x01, 0x41, 'b')},
		{"truncated", raw(tree.ListingMagic, n("abc", tree.TypeDir))[:25]},
		{"not cbor", append(raw(tree.ListingMagic), 0xff, 0xff)},
	}
	for _, tt := range tests {
		if _, err := decode(tt.b); err == nil || !errors.Is(err, tree.ErrListing) {
			t.Errorf("%s: err = %v, want ErrListing", tt.name, err)
		}
	}
}

// fuzzAllocBound is what decoding b may allocate: the stream buffer and
// some bookkeeping, plus a multiple of the input's length (a one-byte empty
// map in an array of xattrs or chunks decodes to a struct of 40 bytes;
// Validate splits a path into its components). It does not depend on any
// length or count the input declares.
func fuzzAllocBound(b []byte) uint64 { return 192<<10 + 64*uint64(len(b)) }

func FuzzReader(f *testing.F) {
	f.Add(encode(f, sampleNodes()))
	f.Add(encode(f, sampleNodes()[:3]))
	f.Add(encode(f, nil))
	// Hostile heads: a 4 GiB path, 2^31 chunks, deep nesting (more in
	// testdata/fuzz/FuzzReader).
	magic, _ := tree.Marshal(tree.ListingMagic)
	f.Add(append(append([]byte{}, magic...), 0xa1, 0x01, 0x5b, 0, 0, 0, 1, 0, 0, 0, 0, 'a'))
	f.Add(append(append([]byte{}, magic...), 0xa1, 0x17, 0x9b, 0, 0, 0, 0, 0x80, 0, 0, 0, 0xa0))
	f.Add(append(append([]byte{}, magic...), bytes.Repeat([]byte{0x81}, 64)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		var nodes []*tree.Node
		var err error
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		rd, err := tree.NewReader(bytes.NewReader(b))
		for err == nil {
			var n *tree.Node
			if n, err = rd.Next(); err == nil {
				nodes = append(nodes, n)
			}
		}
		runtime.ReadMemStats(&after)
		if got := after.TotalAlloc - before.TotalAlloc; got > fuzzAllocBound(b) {
			t.Fatalf("decoding %d bytes allocated %d, over %d", len(b), got, fuzzAllocBound(b))
		}
		if err != io.EOF && !errors.Is(err, tree.ErrListing) {
			t.Fatalf("error %v does not wrap ErrListing", err)
		}
		var last []byte
		for i, n := range nodes {
			if err := n.Validate(); err != nil {
				t.Fatalf("accepted invalid node: %v", err)
			}
			if i > 0 && tree.Compare(last, n.Path) >= 0 {
				t.Fatalf("accepted %q after %q", n.Path, last)
			}
			last = append(last[:0], n.Path...)
			// An accepted node re-encodes and decodes to itself.
			e, err := tree.Marshal(n)
			if err != nil {
				t.Fatal(err)
			}
			var back tree.Node
			if err := tree.Unmarshal(e, &back); err != nil {
				t.Fatalf("re-decode: %v", err)
			}
			// An empty list is no list: omitempty writes neither.
			if !cmp.Equal(*n, back, cmpopts.EquateEmpty()) {
				t.Fatalf("node changes through an encode/decode cycle:\n%s", cmp.Diff(*n, back))
			}
		}
	})
}

// The frozen listing fixture of format version 1; see internal/pack's
// fixture for the rules. Written once by
// `go test ./internal/tree -run TestFixtureV1 -update-fixture`.
const (
	fixtureV1     = "testdata/v1.listing"
	fixtureV1Hash = "c1e07ab7a2e9a7c62a00c5bba87da7157efcc9c6ec651080ae5a36e4f15fb0c4"
)

var updateFixture = flag.Bool("update-fixture", false, "rewrite the frozen format fixtures (never for a released format)")

func TestFixtureV1(t *testing.T) {
	if *updateFixture {
		b := encode(t, sampleNodes())
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(fixtureV1, b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s, sha256 %x: put it in fixtureV1Hash", fixtureV1, sha256.Sum256(b))
	}
	b, err := os.ReadFile(fixtureV1)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != fixtureV1Hash {
		t.Fatalf("%s was changed (sha256 %x): frozen fixtures are never rewritten; restore it with git", fixtureV1, sum)
	}
	got, err := decode(b)
	if err != nil {
		t.Fatalf("current code cannot read a v1 listing: %v", err)
	}
	// sampleNodes is what was written; if a field is added to Node, the
	// old listing still decodes to the same values.
	if diff := cmp.Diff(sampleNodes(), got); diff != "" {
		t.Fatalf("v1 listing decodes differently (-want +got):\n%s", diff)
	}
	if !bytes.Equal(encode(t, got), b) {
		t.Fatal("the current encoder writes the v1 nodes differently")
	}
}

// TestReaderOffset: after each Next the reader's offset is where that node
// ends in the stream, magic included.
func TestReaderOffset(t *testing.T) {
	var buf bytes.Buffer
	w, err := tree.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	ends := []int64{int64(buf.Len())}
	for i := range 500 {
		n := &tree.Node{Path: fmt.Appendf(nil, "d/f%04d", i), Type: tree.TypeFile, Mode: 0o644, Size: int64(i * 1000), Chunks: []tree.ChunkRef{{ID: [32]byte{byte(i)}, Len: uint32(i * 1000)}}}
		if i == 0 {
			n.Chunks = nil
		}
		if i%7 == 0 {
			n.Xattrs = []tree.Xattr{{Name: "user.x", Value: bytes.Repeat([]byte{'v'}, i*10)}}
		}
		if err := w.Write(n); err != nil {
			t.Fatal(err)
		}
		ends = append(ends, int64(buf.Len()))
	}
	r, err := tree.NewReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if r.Offset() != ends[0] {
		t.Fatalf("offset after the magic %d, want %d", r.Offset(), ends[0])
	}
	for i := 1; i < len(ends); i++ {
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
		if r.Offset() != ends[i] {
			t.Fatalf("offset after node %d: %d, want %d", i, r.Offset(), ends[i])
		}
	}
}
