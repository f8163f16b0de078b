package tree

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
	"testing"
	"testing/iotest"

	"github.com/google/go-cmp/cmp"
)

// fixtureItems returns the encoded nodes of the frozen v1 listing and of
// nodes using every field, as the Writer writes them.
func fixtureItems(t testing.TB) [][]byte {
	t.Helper()
	b, err := os.ReadFile("testdata/v1.listing")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(bytes.NewReader(b))
	if _, err := readItem(br, nil, &magicLimits); err != nil {
		t.Fatal(err)
	}
	var items [][]byte
	for {
		it, err := readItem(br, nil, &nodeLimits)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, it)
	}
	id := [32]byte{9, 8, 7}
	for _, n := range []Node{
		{Path: []byte("a/b"), Type: TypeFile, Mode: 0o4755, UID: 1 << 31, GID: 70000, User: "ann", Group: "staff", Size: 1<<40 + 3,
			Mtime: Timespec{Sec: -5, Nsec: 999999999}, Atime: Timespec{Sec: 1 << 40}, Ctime: Timespec{Sec: 1700000000, Nsec: 1},
			Btime: Timespec{Sec: 24, Nsec: 255}, Dev: 1 << 63, Ino: 1<<32 + 1, Nlink: 65536, Rdev: 256, Flags: 0x80000,
			Xattrs: []Xattr{{Name: "user.a", Value: []byte{0}}, {Name: "security.selinux", Value: bytes.Repeat([]byte("x"), 300)}},
			Sparse: true, Extents: []Extent{{Off: 0, Len: 23}, {Off: 65536, Len: 1 << 33}},
			Chunks: []ChunkRef{{ID: id, Len: 1}, {ID: id, Len: 1<<32 - 1}},
			Status: StatusInconsistent, Err: "changed while read: é"},
		{Path: []byte("l"), Type: TypeSymlink, Target: []byte("../x"), LinkTo: []byte("a/b"), MountPoint: true},
	} {
		b, err := Marshal(&n)
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, b)
	}
	return items
}

// The Writer's output takes the fast path and decodes as the library does.
func TestFastDecoderReadsWriterOutput(t *testing.T) {
	for i, it := range fixtureItems(t) {
		var d fastDec
		var fast, slow Node
		used, ok := d.decodeNode(it, &fast)
		if !ok || used != len(it) {
			t.Fatalf("node %d (%x): fast decoder declined (ok %v, used %d of %d)", i, it, ok, used, len(it))
		}
		if err := Unmarshal(it, &slow); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(slow, fast); diff != "" {
			t.Fatalf("node %d: fast decoder differs (-library +fast):\n%s", i, diff)
		}
		// A node cut anywhere is declined, never misread.
		for cut := range len(it) {
			var d fastDec
			if _, ok := d.decodeNode(it[:cut], new(Node)); ok {
				t.Fatalf("node %d cut at %d of %d: fast decoder accepted it", i, cut, len(it))
			}
		}
	}
}

// A Reader decodes nodes through the fast decoder without an allocation
// per field beyond the node, its path and its chunk list (the library's
// reflection took about 20).
func TestReaderFastAllocations(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	const count = 1000
	for i := range count {
		n := Node{Path: fmt.Appendf(nil, "d/f%05d", i), Type: TypeFile, Mode: 0o644, UID: 1000, GID: 1000,
			User: "ann", Group: "ann", Size: 10, Mtime: Timespec{Sec: 1700000000, Nsec: int64(i)}, Ino: uint64(i),
			Chunks: []ChunkRef{{ID: [32]byte{byte(i)}, Len: 10}}}
		if err := w.Write(&n); err != nil {
			t.Fatal(err)
		}
	}
	data := buf.Bytes()
	allocs := testing.AllocsPerRun(5, func() {
		rd, err := NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := rd.Next(); err == io.EOF {
				break
			} else if err != nil {
				t.Fatal(err)
			}
		}
	})
	if per := allocs / count; per > 4 {
		t.Fatalf("%.1f allocations per node, want at most 4", per)
	}
}

// FuzzFastNode: whatever the fast decoder accepts, the general path
// (readItem within the node limits, then the library) accepts too and
// decodes to the same node.
func FuzzFastNode(f *testing.F) {
	for _, it := range fixtureItems(f) {
		f.Add(it)
	}
	f.Add([]byte{0xa1, 0x01, 0x40})             // empty path
	f.Add([]byte{0xa1, 0x17, 0x80})             // empty chunk list
	f.Add([]byte{0xa2, 0x02, 0x01, 0x01, 0x41}) // keys out of order
	f.Add([]byte{0xa1, 0x18, 0x02, 0x01})       // a key in two bytes
	f.Add([]byte{0xa1, 0x08, 0x3b, 0x80, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var d fastDec
		var fast Node
		used, ok := d.decodeNode(b, &fast)
		if !ok {
			return
		}
		it, err := readItem(bufio.NewReader(bytes.NewReader(b[:used])), nil, &nodeLimits)
		if err != nil || len(it) != used {
			t.Fatalf("fast decoder took %d bytes of %x that readItem refuses (%d bytes, %v)", used, b, len(it), err)
		}
		var slow Node
		if err := Unmarshal(b[:used], &slow); err != nil {
			t.Fatalf("fast decoder accepted %x that the library refuses: %v", b[:used], err)
		}
		if diff := cmp.Diff(slow, fast); diff != "" {
			t.Fatalf("%x: fast decoder differs (-library +fast):\n%s", b[:used], diff)
		}
	})
}

// BenchmarkReader reads small files' nodes as a no-change backup and a
// commit do.
func BenchmarkReader(b *testing.B) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf)
	if err != nil {
		b.Fatal(err)
	}
	const count = 10000
	for i := range count {
		n := Node{Path: fmt.Appendf(nil, "home/ann/src/d%03d/file%05d.txt", i/100, i), Type: TypeFile, Mode: 0o644, UID: 1000, GID: 1000,
			User: "ann", Group: "ann", Size: 700, Mtime: Timespec{Sec: 1700000000, Nsec: int64(i)}, Ctime: Timespec{Sec: 1700000000, Nsec: int64(i)},
			Atime: Timespec{Sec: 1700000000}, Btime: Timespec{Sec: 1700000000}, Dev: 2049, Ino: uint64(i), Nlink: 1,
			Chunks: []ChunkRef{{ID: [32]byte{byte(i)}, Len: 700}}}
		if err := w.Write(&n); err != nil {
			b.Fatal(err)
		}
	}
	data := buf.Bytes()
	for _, reuse := range []bool{false, true} {
		b.Run(fmt.Sprintf("reuse=%v", reuse), func(b *testing.B) { benchmarkRead(b, data, count, reuse) })
	}
}

func benchmarkRead(b *testing.B, data []byte, count int, reuse bool) {
	for range b.N {
		rd, err := NewReader(bytes.NewReader(data))
		if err != nil {
			b.Fatal(err)
		}
		if reuse {
			rd.Reuse()
		}
		for {
			if _, err := rd.Next(); err == io.EOF {
				break
			} else if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*count), "ns/node")
}

// A Reader that reuses its node returns, node after node, what a fresh
// node would hold: nothing of a longer path, more references or a field
// of the node before is left over, whether the node was decoded from the
// read buffer, framed first (one crossing the buffer's end) or by the
// library; and it allocates next to nothing a node.
func TestReaderReuse(t *testing.T) {
	var nodes []Node
	long := bytes.Repeat([]byte("d"), 300)
	for i := range 3000 {
		n := Node{Path: fmt.Appendf(nil, "a/%s/f%05d", long[:i%300+1], i), Type: TypeFile, Mode: 0o644, Size: int64(100 * (i % 5)),
			Mtime: Timespec{Sec: int64(i)}}
		for j := range i % 5 {
			n.Chunks = append(n.Chunks, ChunkRef{ID: [32]byte{byte(i), byte(j)}, Len: 100})
		}
		switch i % 7 {
		case 1:
			n.Type, n.Chunks, n.Size, n.Target = TypeSymlink, nil, 0, []byte("target")
		case 2:
			n.Status, n.Err, n.Chunks, n.Size = StatusUnreadable, "permission denied", nil, 0
		case 3:
			n.Xattrs = []Xattr{{Name: "user.x", Value: []byte{byte(i)}}}
			n.User, n.Group = "ann", "staff"
		case 4:
			if len(n.Chunks) > 0 {
				n.Sparse, n.Size = true, n.Size+4096
				n.Extents = []Extent{{Off: 4096, Len: n.Size - 4096}}
			}
		case 5:
			n.Type, n.Chunks, n.Size = TypeDir, nil, 0
		}
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, func(a, b Node) int { return Compare(a.Path, b.Path) })
	var buf bytes.Buffer
	w, err := NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for i := range nodes {
		if err := w.Write(&nodes[i]); err != nil {
			t.Fatal(err)
		}
	}
	// A last node in a form only the library decodes (its keys in two
	// bytes), after one the fast decoder took into the reused node.
	data := append(buf.Bytes(), 0xa2, 0x18, 0x01, 0x43, 'z', 'z', 'z', 0x18, 0x02, 0x01)
	nodes = append(nodes, Node{Path: []byte("zzz"), Type: TypeFile})
	read := func(reuse bool, each func(*Node)) {
		t.Helper()
		// One byte at a time now and then, so nodes cross the buffer's end.
		rd, err := NewReader(iotest.HalfReader(bytes.NewReader(data)))
		if err != nil {
			t.Fatal(err)
		}
		if reuse {
			rd.Reuse()
		}
		for {
			n, err := rd.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			each(n)
		}
	}
	var fresh []Node
	read(false, func(n *Node) { fresh = append(fresh, *n) })
	if len(fresh) != len(nodes) {
		t.Fatalf("read %d nodes of %d", len(fresh), len(nodes))
	}
	i := 0
	var prev *Node
	read(true, func(n *Node) {
		if diff := cmp.Diff(fresh[i], *n); diff != "" {
			t.Fatalf("node %d reused differs (-fresh +reused):\n%s", i, diff)
		}
		if prev != nil && prev != n {
			t.Fatalf("node %d: a new node, not the reused one", i)
		}
		prev = n
		i++
	})
	// Each node saves at least its own allocation and its path's, and most
	// their references'; the rarer fields (names, xattrs, extents, errors)
	// still allocate.
	reused := testing.AllocsPerRun(3, func() { read(true, func(*Node) {}) })
	own := testing.AllocsPerRun(3, func() { read(false, func(*Node) {}) })
	if saved := (own - reused) / float64(len(nodes)); saved < 2 {
		t.Errorf("Reuse saves %.2f allocations a node (%.0f against %.0f for %d nodes)", saved, reused, own, len(nodes))
	}
}
