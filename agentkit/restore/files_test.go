package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// countingSource counts requests and can cut the connection after a number
// of frames.
type countingSource struct {
	memSource
	mu       sync.Mutex // the workers fetch at once
	requests int
	frames   int
	cutAfter int // 0: never
}

var errCut = errors.New("connection reset by peer")

func (c *countingSource) GetChunks(ctx context.Context, ids [][32]byte, fn func(f *wire.Frame) error) error {
	c.mu.Lock()
	c.requests++
	c.mu.Unlock()
	return c.memSource.GetChunks(ctx, ids, func(f *wire.Frame) error {
		c.mu.Lock()
		c.frames++
		cut := c.cutAfter > 0 && c.frames > c.cutAfter
		c.mu.Unlock()
		if cut {
			return errCut
		}
		return fn(f)
	})
}

// put stores data as chunks of at most size bytes, some compressed as the
// vault would send them, and returns their references.
func (m memSource) put(data []byte, size int) []tree.ChunkRef {
	h := keys.NewHasher(testKey)
	var refs []tree.ChunkRef
	for len(data) > 0 {
		n := min(size, len(data))
		c := data[:n]
		data = data[n:]
		id := h.Sum(c)
		m[id] = bytes.Clone(c)
		refs = append(refs, tree.ChunkRef{ID: id, Len: uint32(n)})
	}
	return refs
}

type wantFile struct {
	path string
	data []byte // the file's content, holes as zeros
	bad  bool   // must fail
}

func restoreCorpus(t *testing.T, src *countingSource) (wire.Manifest, []wantFile) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	nodes := []tree.Node{dir("r")}
	var want []wantFile
	add := func(p string, data []byte, chunk int) *tree.Node {
		n := file(p)
		n.Size = int64(len(data))
		n.Chunks = src.put(data, chunk)
		nodes = append(nodes, n)
		want = append(want, wantFile{path: p, data: data})
		return &nodes[len(nodes)-1]
	}
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return b
	}
	var names []string
	for i := range 300 {
		names = append(names, fmt.Sprintf("r/d%d/f%03d", i/40, i))
	}
	dirs := map[string]bool{}
	for i, p := range names {
		if d := filepath.Dir(p); !dirs[d] {
			dirs[d] = true
			nodes = append(nodes, dir(d))
		}
		switch {
		case i%50 == 7:
			add(p, nil, 1) // empty
		case i == 123:
			add(p, random(3000), 1024) // three chunks, the middle one missing
			delete(src.memSource, nodes[len(nodes)-1].Chunks[1].ID)
			want[len(want)-1].bad = true
		case i == 201:
			n := add(p, random(500), 1024) // damaged on the way
			src.memSource[n.Chunks[0].ID][10] ^= 1
			want[len(want)-1].bad = true
		default:
			add(p, random(1+rng.IntN(9000)), 4096)
		}
	}
	// A large file (its own request) and a sparse one: 1 MiB of data at
	// 0, a hole, 100 KiB at 10 MiB, a hole to the end.
	add("r/e1-large", random(3<<20), 1<<20)
	data := random(1<<20 + 100<<10)
	full := make([]byte, 16<<20)
	copy(full, data[:1<<20])
	copy(full[10<<20:], data[1<<20:])
	n := add("r/e2-sparse", data, 256<<10)
	n.Size, n.Sparse = int64(len(full)), true
	n.Extents = []tree.Extent{{Off: 0, Len: 1 << 20}, {Off: 10 << 20, Len: 100 << 10}}
	want[len(want)-1].data = full
	slices.SortFunc(nodes, func(a, b tree.Node) int { return tree.Compare(a.Path, b.Path) })
	return wire.Manifest{Config: "c", Seq: 1, Listing: src.listing(t, nodes...)}, want
}

func TestRunBatchesSmallFilesAndIsolatesDamage(t *testing.T) {
	forEachNaming(t, testRunBatchesSmallFilesAndIsolatesDamage)
}

func testRunBatchesSmallFilesAndIsolatesDamage(t *testing.T) {
	src := &countingSource{memSource: memSource{}}
	m, want := restoreCorpus(t, src)
	to := t.TempDir()
	res, err := Run(context.Background(), Options{Source: src, ChunkKey: testKey, Manifest: m, Target: to,
		Meta: meta.Options{SkipOwner: true}, Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	// 300 small files in batches of at most 128 files, two large files, the
	// listing: a handful of requests, not one per file.
	if src.requests > 8 {
		t.Errorf("%d requests for %d files: small files are not batched", src.requests, len(want))
	}
	checkCorpusRestored(t, to, res, want)
	noTemporaries(t, to)
}

// checkCorpusRestored checks the restore of restoreCorpus into to: every file
// but the bad ones is its content (the sparse one without its holes
// written), each bad one is absent and named once among the problems, and
// no temporary file is left.
func checkCorpusRestored(t *testing.T, to string, res *Result, want []wantFile) {
	t.Helper()
	var bad []string
	for _, w := range want {
		got, err := os.ReadFile(filepath.Join(to, w.path))
		if w.bad {
			bad = append(bad, w.path)
			if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: damaged file left in place (%v)", w.path, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", w.path, err)
			continue
		}
		if !bytes.Equal(got, w.data) {
			t.Errorf("%s: restored %d bytes that differ from the %d backed up", w.path, len(got), len(w.data))
		}
	}
	if len(res.Problems) != len(bad) {
		t.Errorf("problems %q, want one for each of %q", res.Problems, bad)
	}
	for _, b := range bad {
		if !strings.Contains(strings.Join(res.Problems, "\n"), b+": NOT RESTORED") {
			t.Errorf("no problem names %s: %q", b, res.Problems)
		}
	}
	if got, want := res.Stats.Files, int64(len(want)-len(bad)); got != want {
		t.Errorf("stats: %d files restored, want %d", got, want)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(to, "r/e2-sparse"), &st); err != nil {
		t.Fatal(err)
	}
	if alloc := st.Blocks * 512; alloc > 2<<20 {
		t.Errorf("sparse file takes %d bytes on disk: its holes were written", alloc)
	}
	noTemporaries(t, to)
}

func TestRunConnectionLostMidBatch(t *testing.T) { forEachNaming(t, testRunConnectionLostMidBatch) }

func testRunConnectionLostMidBatch(t *testing.T) {
	src := &countingSource{memSource: memSource{}}
	m, want := restoreCorpus(t, src)
	src.cutAfter = 1 + 100 // the listing, then 100 chunks
	to := t.TempDir()
	res, err := Run(context.Background(), Options{Source: src, ChunkKey: testKey, Manifest: m, Target: to,
		Meta: meta.Options{SkipOwner: true}, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	restored := 0
	for _, w := range want {
		got, err := os.ReadFile(filepath.Join(to, w.path))
		if err == nil {
			restored++
			if !bytes.Equal(got, w.data) {
				t.Errorf("%s: restored with wrong content after the connection was lost", w.path)
			}
		}
	}
	if restored == 0 || restored == len(want) {
		t.Errorf("%d of %d files restored; want those before the cut only", restored, len(want))
	}
	if int(res.Stats.Files) != restored || len(res.Problems) != len(want)-restored {
		t.Errorf("stats say %d restored and %d problems; %d files are there", res.Stats.Files, len(res.Problems), restored)
	}
	if !strings.Contains(strings.Join(res.Problems, "\n"), errCut.Error()) {
		t.Errorf("problems do not say the connection was lost: %q", res.Problems[:min(3, len(res.Problems))])
	}
	noTemporaries(t, to)
}

func noTemporaries(t *testing.T, root string) {
	t.Helper()
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), ".vaultnode-") {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
}

// A large file is cut into parts that several workers fetch and write at
// once: every part lands at its offset (holes included), a part that fails
// fails the whole file, and the file takes its name only once all parts
// are written.
func TestRunLargeFileInParts(t *testing.T) { forEachNaming(t, testRunLargeFileInParts) }

func testRunLargeFileInParts(t *testing.T) {
	src := &countingSource{memSource: memSource{}}
	rng := rand.NewChaCha8([32]byte{7})
	random := func(n int) []byte {
		b := make([]byte, n)
		rng.Read(b)
		return b
	}
	nodes := []tree.Node{dir("r")}
	var want []wantFile
	add := func(p string, data []byte, chunk int) *tree.Node {
		n := file(p)
		n.Size = int64(len(data))
		n.Chunks = src.put(data, chunk)
		nodes = append(nodes, n)
		want = append(want, wantFile{path: p, data: data})
		return &nodes[len(nodes)-1]
	}
	// Dense: 21 MiB in chunks of 1 MiB less a few bytes, so parts and
	// chunks do not fall on round offsets: three parts.
	add("r/dense", random(21<<20), 1<<20-3)
	// Sparse: extents of odd sizes between holes, crossing the parts'
	// and chunks' boundaries; the file ends in a hole.
	ext := []tree.Extent{{Off: 4096, Len: 7<<20 + 5}, {Off: 9 << 20, Len: 3 << 20}, {Off: 13<<20 + 17, Len: 9 << 20}}
	full := make([]byte, 30<<20)
	var data []byte
	for _, e := range ext {
		d := random(int(e.Len))
		copy(full[e.Off:], d)
		data = append(data, d...)
	}
	n := add("r/sparse", data, 3<<20+11)
	n.Size, n.Sparse, n.Extents = int64(len(full)), true, ext
	want[len(want)-1].data = full
	// A chunk of the last part missing: the whole file is not restored.
	n = add("r/torn", random(20<<20), 1<<20)
	delete(src.memSource, n.Chunks[len(n.Chunks)-2].ID)
	want[len(want)-1].bad = true
	m := wire.Manifest{Config: "c", Seq: 1, Listing: src.listing(t, nodes...)}
	for _, w := range nodes[1:] {
		if parts := cutParts(&w); len(parts) < 3 {
			t.Fatalf("%s: cut into %d parts, the test wants at least 3", w.Path, len(parts))
		}
	}

	to := t.TempDir()
	res, err := Run(context.Background(), Options{Source: src, ChunkKey: testKey, Manifest: m, Target: to,
		Meta: meta.Options{SkipOwner: true}, Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	if src.requests < 1+9 {
		t.Errorf("%d requests: the large files were not fetched in parts", src.requests)
	}
	for _, w := range want {
		got, err := os.ReadFile(filepath.Join(to, w.path))
		if w.bad {
			if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: a file with a missing chunk left in place (%v)", w.path, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", w.path, err)
		}
		if !bytes.Equal(got, w.data) {
			i := 0
			for i < min(len(got), len(w.data)) && got[i] == w.data[i] {
				i++
			}
			t.Errorf("%s: %d bytes restored, want %d; first difference at %d", w.path, len(got), len(w.data), i)
		}
	}
	if len(res.Problems) != 1 || !strings.Contains(res.Problems[0], "r/torn: NOT RESTORED") {
		t.Errorf("problems %q, want one for r/torn", res.Problems)
	}
	if res.Stats.Files != 2 {
		t.Errorf("stats: %d files restored, want 2", res.Stats.Files)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(to, "r/sparse"), &st); err != nil {
		t.Fatal(err)
	}
	if alloc := st.Blocks * 512; alloc > 21<<20 {
		t.Errorf("sparse file takes %d bytes on disk: its holes were written", alloc)
	}
	noTemporaries(t, to)
}

// A file whose chunks do not hold what its extents say is not cut: one job
// reports it.
func TestCutPartsMismatch(t *testing.T) {
	n := file("f")
	n.Size = 40 << 20
	for range 5 {
		n.Chunks = append(n.Chunks, tree.ChunkRef{Len: 4 << 20})
	}
	if got := cutParts(&n); len(got) != 1 || got[0] != [2]int{0, 5} {
		t.Errorf("cutParts of 20 MiB of chunks for 40 MiB of data = %v, want one range", got)
	}
	n.Size = 20 << 20
	if got := cutParts(&n); len(got) != 3 {
		t.Errorf("cutParts of 20 MiB in 4 MiB chunks = %v, want 3 parts of 8 MiB or less", got)
	}
}

// forEachNaming runs fn with files written unnamed and named once complete
// (where the filesystem and process allow), then under temporary names
// renamed once complete (where they do not).
func forEachNaming(t *testing.T, fn func(t *testing.T)) {
	t.Run("unnamed", fn)
	t.Run("temporary-names", func(t *testing.T) {
		testTempNames = true
		defer func() { testTempNames = false }()
		fn(t)
	})
}

// A file being written has no name anybody could open or see: not its
// own, not a temporary one; it takes its name once complete.
func TestRunWritesFilesUnnamed(t *testing.T) { testWritesUnnamed(t, false) }

// A file that replaces one there (-existing overwrite) is written unnamed
// too: while it is written the old file keeps its name and content and no
// other name appears beside it, so a restore killed then leaves the old
// file and nothing else; a file that fails keeps the old one.
func TestOverwriteWritesUnnamed(t *testing.T) { testWritesUnnamed(t, true) }

func testWritesUnnamed(t *testing.T, overwrite bool) {
	src := &countingSource{memSource: memSource{}}
	m, want := restoreCorpus(t, src)
	to := t.TempDir()
	old := func(p string) []byte { return []byte("old content of " + p + "\n") }
	if overwrite {
		for _, w := range want {
			must(t, os.MkdirAll(filepath.Join(to, filepath.Dir(w.path)), 0o755))
			must(t, os.WriteFile(filepath.Join(to, w.path), old(w.path), 0o644))
		}
	}
	var mu sync.Mutex
	checked := 0
	testHookBeforeRename = func(p []byte, fd int) {
		mu.Lock()
		defer mu.Unlock()
		dir, name := filepath.Split(string(p))
		ents, err := os.ReadDir(filepath.Join(to, dir))
		if err != nil {
			t.Error(err)
			return
		}
		for _, e := range ents {
			if (e.Name() == name && !overwrite) || strings.Contains(e.Name(), ".vaultnode-") {
				t.Errorf("%s: a name while being written: %s", p, e.Name())
			}
		}
		if got, err := os.ReadFile(filepath.Join(to, dir, name)); overwrite && (err != nil || !bytes.Equal(got, old(string(p)))) {
			t.Errorf("%s: the old file not there as it was while the new one is written (%v)", p, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Nlink != 0 {
			t.Errorf("%s: %d links while being written (%v), want 0", p, st.Nlink, err)
		}
		checked++
	}
	defer func() { testHookBeforeRename = nil }()
	o := Options{Source: src, ChunkKey: testKey, Manifest: m, Target: to, Meta: meta.Options{SkipOwner: true}, Workers: 4}
	if overwrite {
		o.Existing = Overwrite
	}
	res, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	good := 0
	for _, w := range want {
		data := w.data
		switch {
		case !w.bad:
			good++
		case overwrite:
			data = old(w.path) // kept
		default:
			continue
		}
		got, err := os.ReadFile(filepath.Join(to, w.path))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s (failing: %v): %v, or content differs", w.path, w.bad, err)
		}
	}
	if checked != good || len(res.Problems) != len(want)-good {
		t.Errorf("%d files checked while written, want %d; problems %q", checked, good, res.Problems)
	}
	noTemporaries(t, to)
}
