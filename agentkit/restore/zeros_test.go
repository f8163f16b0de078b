package restore

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/chunker"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// TestZeroChunksAllocated restores files whose content holds chunks of
// zeros: largest ones (never downloaded: their id is known), a file's last
// chunk of zeros of its own length (downloaded once, then known), in plain
// and sparse files, in files cut into parts. Each file must read back as
// backed up and keep its blocks (allocated, not holes), and no largest
// chunk of zeros may be downloaded.
func TestZeroChunksAllocated(t *testing.T) {
	forEachNaming(t, testZeroChunksAllocated)
}

func testZeroChunksAllocated(t *testing.T) {
	src := &idCountingSource{memSource: memSource{}, served: map[[32]byte]int{}}
	rng := rand.New(rand.NewPCG(5, 6))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return b
	}
	h := keys.NewHasher(testKey)
	ref := func(b []byte) tree.ChunkRef {
		id := h.Sum(b)
		src.memSource[id] = bytes.Clone(b)
		return tree.ChunkRef{ID: id, Len: uint32(len(b))}
	}
	zmax := make([]byte, chunker.MaxSize)
	ztail := make([]byte, 10<<10+3)
	zunits := make([]byte, 3*chunker.ZeroUnit) // a run's chunk of whole units
	type spec struct {
		path   string
		pieces [][]byte
		ext    []tree.Extent // nil: not sparse
		size   int64
	}
	specs := []spec{
		{path: "r/z1", pieces: [][]byte{random(100 << 10), zmax, zmax, zmax, random(50 << 10), ztail}},
		{path: "r/z2", pieces: [][]byte{zmax, zmax, ztail}},
		{path: "r/z3", pieces: [][]byte{ztail}},
		{path: "r/z3-units", pieces: [][]byte{random(300 << 10), zunits, random(200 << 10), zunits, ztail}},
		{path: "r/z4-sparse", pieces: [][]byte{zmax, random(4 << 10), ztail},
			ext: []tree.Extent{{Off: 0, Len: chunker.MaxSize + 4<<10}, {Off: 20 << 20, Len: int64(len(ztail))}}, size: 24 << 20},
	}
	// A large file cut into parts (partBytes), zeros in each.
	var big [][]byte
	for i := range 6 {
		big = append(big, random(1<<20+i), zmax)
	}
	specs = append(specs, spec{path: "r/z5-large", pieces: big})
	nodes := []tree.Node{dir("r")}
	want := map[string][]byte{}
	for _, s := range specs {
		n := file(s.path)
		var data []byte
		for _, p := range s.pieces {
			n.Chunks = append(n.Chunks, ref(p))
			data = append(data, p...)
		}
		n.Size = int64(len(data))
		full := data
		if s.ext != nil {
			n.Sparse, n.Extents, n.Size = true, s.ext, s.size
			full = make([]byte, s.size)
			for _, e := range s.ext {
				data = data[copy(full[e.Off:e.Off+e.Len], data):]
			}
		}
		nodes = append(nodes, n)
		want[s.path] = full
	}
	slices.SortFunc(nodes, func(a, b tree.Node) int { return tree.Compare(a.Path, b.Path) })
	m := wire.Manifest{Config: "c", Seq: 1, Listing: src.listing(t, nodes...)}
	to := t.TempDir()
	res, err := Run(context.Background(), Options{Source: src, ChunkKey: testKey, Manifest: m, Target: to,
		Meta: meta.Options{SkipOwner: true}, Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Problems) > 0 {
		t.Fatalf("problems: %q", res.Problems)
	}
	for _, s := range specs {
		p := filepath.Join(to, s.path)
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want[s.path]) {
			t.Errorf("%s: restored %d bytes that differ from the %d backed up", s.path, len(got), len(want[s.path]))
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		var data int64
		for _, piece := range s.pieces {
			data += int64(len(piece))
		}
		// Every byte of data has its block; holes have none.
		if alloc := st.Blocks * 512; alloc < data || alloc > data+int64(len(s.pieces))*8<<10 {
			t.Errorf("%s: %d bytes allocated for %d bytes of data", s.path, alloc, data)
		}
	}
	zid := h.Sum(zmax)
	if n := src.served[zid]; n > 0 {
		t.Errorf("the largest chunk of zeros was downloaded %d times", n)
	}
	if n := src.served[h.Sum(zunits)]; n > 0 {
		t.Errorf("a chunk of zeros of whole units was downloaded %d times", n)
	}
	if n := src.served[h.Sum(ztail)]; n != 1 {
		t.Errorf("the last chunk of zeros was downloaded %d times, want once", n)
	}
}
