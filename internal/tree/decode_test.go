package tree

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"testing"

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
	b.ResetTimer()
	for range b.N {
		rd, err := NewReader(bytes.NewReader(data))
		if err != nil {
			b.Fatal(err)
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
