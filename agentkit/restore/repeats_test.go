package restore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// idCountingSource counts the frames served for each chunk id.
type idCountingSource struct {
	memSource
	mu     sync.Mutex
	served map[[32]byte]int
}

func (c *idCountingSource) GetChunks(ctx context.Context, ids [][32]byte, fn func(f *wire.Frame) error) error {
	return c.memSource.GetChunks(ctx, ids, func(f *wire.Frame) error {
		c.mu.Lock()
		c.served[f.ID]++
		c.mu.Unlock()
		return fn(f)
	})
}

// repeatCorpus is a version whose chunks recur: across small files in
// different directories and batches, within a file, across large files cut
// into parts, and into a sparse file's extents.
func repeatCorpus(t *testing.T, src *idCountingSource) (wire.Manifest, []wantFile, [][32]byte) {
	t.Helper()
	rng := rand.New(rand.NewPCG(3, 4))
	random := func(n int) []byte {
		b := make([]byte, n+8)
		for i := 0; i < n; i += 8 {
			binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
		}
		return b[:n]
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
	license := random(5000)
	block := random(64 << 10)
	for i := range 400 { // more than three batches of small files
		p := fmt.Sprintf("r/d%02d/f%03d", i/50, i)
		if i%50 == 0 {
			nodes = append(nodes, dir(filepath.Dir(p)))
		}
		switch i % 4 {
		case 0:
			add(p, license, 8192) // the same file in every directory
		case 1:
			add(p, slices.Concat(block, random(100), block), 64<<10) // a block twice in a file
		default:
			add(p, random(1+rng.IntN(3000)), 4096)
		}
	}
	// Two large images sharing most of their content, each cut into parts:
	// the second repeats the first's chunks, and its own first part.
	img := random(20 << 20)
	add("r/img1", img, 1<<20)
	img2 := slices.Concat(img[:8<<20], img[:8<<20], random(1<<20))
	add("r/img2", img2, 1<<20)
	// A sparse file whose two extents hold the block, and the license
	// straddling them (downloaded, not copied).
	data := slices.Concat(block, license[:2000], license[2000:], block)
	full := make([]byte, 4<<20)
	copy(full, data[:len(block)+2000])
	copy(full[2<<20:], data[len(block)+2000:])
	n := file("r/sparse")
	n.Size, n.Sparse = int64(len(full)), true
	n.Extents = []tree.Extent{{Off: 0, Len: int64(len(block) + 2000)}, {Off: 2 << 20, Len: int64(len(data) - len(block) - 2000)}}
	n.Chunks = slices.Concat(src.put(block, 64<<10), src.put(license, 8192), src.put(block, 64<<10))
	nodes = append(nodes, n)
	want = append(want, wantFile{path: "r/sparse", data: full})
	slices.SortFunc(nodes, func(a, b tree.Node) int { return tree.Compare(a.Path, b.Path) })
	var ids [][32]byte
	for _, n := range nodes {
		for _, c := range n.Chunks {
			ids = append(ids, c.ID)
		}
	}
	return wire.Manifest{Config: "c", Seq: 1, Listing: src.listing(t, nodes...)}, want, ids
}

func checkRestored(t *testing.T, to string, want []wantFile) {
	t.Helper()
	for _, w := range want {
		got, err := os.ReadFile(filepath.Join(to, w.path))
		if err != nil {
			t.Errorf("%s: %v", w.path, err)
			continue
		}
		if !bytes.Equal(got, w.data) {
			t.Errorf("%s: restored %d bytes that differ from the %d backed up", w.path, len(got), len(w.data))
		}
	}
	noTemporaries(t, to)
}

func TestRunDownloadsARepeatedChunkOnce(t *testing.T) {
	for _, c := range []struct {
		workers int
		mem     bool
	}{{1, false}, {4, false}, {1, true}, {4, true}} {
		workers := c.workers
		t.Run(fmt.Sprintf("workers=%d,memory=%v", workers, c.mem), func(t *testing.T) {
			if !c.mem {
				withMemChunks(t, 0)
			}
			src := &idCountingSource{memSource: memSource{}, served: map[[32]byte]int{}}
			m, want, ids := repeatCorpus(t, src)
			to := t.TempDir()
			res, err := Run(context.Background(), Options{Source: src, ChunkKey: testKey, Manifest: m, Target: to,
				Meta: meta.Options{SkipOwner: true}, Workers: workers})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Problems) > 0 {
				t.Fatalf("problems: %q", res.Problems)
			}
			checkRestored(t, to, want)
			distinct := map[[32]byte]bool{}
			for _, id := range ids {
				distinct[id] = true
			}
			var again int
			for id := range distinct {
				switch n := src.served[id]; {
				case n == 0:
					t.Errorf("chunk %x never downloaded", id[:8])
				case n > 1:
					again++
				}
			}
			// The license's chunk straddling the sparse file's extents is
			// downloaded again (it is neither a copy nor a source); nothing
			// else is.
			if again > 1 {
				t.Errorf("%d of %d distinct chunks downloaded more than once", again, len(distinct))
			}
			if copies := int64(len(ids) - len(distinct) - again); res.Stats.Copied < copies {
				t.Errorf("%d chunks copied, want at least %d", res.Stats.Copied, copies)
			}
			var total int64
			for _, w := range want {
				if w.path == "r/sparse" {
					total += int64(2*(64<<10) + 5000)
					continue
				}
				total += int64(len(w.data))
			}
			if res.Stats.Bytes != total {
				t.Errorf("stats: %d bytes written, want %d", res.Stats.Bytes, total)
			}
		})
	}
}

// A copy whose first place was not restored, or was changed since,
// downloads the chunk after all when it is read back from that file; a
// small chunk kept in memory is written from there, downloaded once.
func TestRunRepeatedChunkFallsBack(t *testing.T) {
	for _, mem := range []bool{false, true} {
		t.Run(fmt.Sprintf("memory=%v", mem), func(t *testing.T) {
			if !mem {
				withMemChunks(t, 0)
			}
			testRepeatedChunkFallsBack(t, mem)
		})
	}
}

func testRepeatedChunkFallsBack(t *testing.T, mem bool) {
	src := &idCountingSource{memSource: memSource{}, served: map[[32]byte]int{}}
	rng := rand.New(rand.NewPCG(5, 6))
	random := func(n int) []byte {
		b := make([]byte, n+8)
		for i := 0; i < n; i += 8 {
			binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
		}
		return b[:n]
	}
	shared := random(4096)
	changed := random(4096)
	broken := file("r/a/broken") // its other chunk is missing: not restored
	missing := random(4096)
	broken.Chunks = slices.Concat(src.put(shared, 4096), src.put(missing, 4096))
	broken.Size = 8192
	delete(src.memSource, broken.Chunks[1].ID)
	first := file("r/a/first") // changed after its restore
	first.Chunks, first.Size = src.put(changed, 4096), 4096
	uses := file("r/b/uses")
	uses.Chunks = slices.Concat(src.put(shared, 4096), src.put(changed, 4096))
	uses.Size = 8192
	m := wire.Manifest{Config: "c", Seq: 1, Listing: src.listing(t, dir("r"), dir("r/a"), broken, first, dir("r/b"), uses)}
	to := t.TempDir()
	// r/a/first is changed once written, before it takes its name.
	testHookBeforeRename = func(p []byte, fd int) {
		if string(p) != "r/a/first" {
			return
		}
		if _, err := unix.Pwrite(fd, bytes.Repeat([]byte{'x'}, 4096), 0); err != nil {
			t.Error(err)
		}
	}
	defer func() { testHookBeforeRename = nil }()
	res, err := Run(context.Background(), Options{Source: src, ChunkKey: testKey, Manifest: m, Target: to,
		Meta: meta.Options{SkipOwner: true}, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Problems) != 1 || !strings.Contains(res.Problems[0], "r/a/broken: NOT RESTORED") {
		t.Errorf("problems %q, want one for r/a/broken", res.Problems)
	}
	got, err := os.ReadFile(filepath.Join(to, "r/b/uses"))
	if err != nil || !bytes.Equal(got, slices.Concat(shared, changed)) {
		t.Errorf("r/b/uses: %v, content differs: %v", err, !bytes.Equal(got, slices.Concat(shared, changed)))
	}
	want := 2
	if mem {
		want = 1
	}
	if n := src.served[uses.Chunks[0].ID]; n != want {
		t.Errorf("the chunk of a file not restored was downloaded %d times, want %d", n, want)
	}
	if n := src.served[uses.Chunks[1].ID]; n != want {
		t.Errorf("the chunk of a file changed since was downloaded %d times, want %d", n, want)
	}
	if mem && res.Stats.Copied != 2 {
		t.Errorf("%d chunks copied, want 2", res.Stats.Copied)
	}
}

// withMemChunks sets, for the test, the largest chunk whose content is
// kept in memory for its copies (0: none).
func withMemChunks(t *testing.T, n int) {
	old := memChunkMax
	memChunkMax = n
	t.Cleanup(func() { memChunkMax = old })
}

// The ring of chunk contents never answers with bytes other than the
// chunk's, across many wraps with chunks of every size, and keeps the
// newest ones.
func TestMemChunksRing(t *testing.T) {
	oldMax, oldBytes, oldStart := memChunkMax, memBytes, memStart
	memChunkMax, memBytes, memStart = 3000, 10000, 2500
	defer func() { memChunkMax, memBytes, memStart = oldMax, oldBytes, oldStart }()
	rng := rand.New(rand.NewPCG(7, 8))
	var c memChunks
	content := map[[32]byte][]byte{}
	var order [][32]byte
	for i := range 5000 {
		var id [32]byte
		binary.LittleEndian.PutUint64(id[:], uint64(i))
		data := make([]byte, 1+rng.IntN(3500))
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		content[id] = data
		order = append(order, id)
		c.keep(id, data)
		if len(data) <= memChunkMax {
			if got, ok := c.get(id, len(data), nil); !ok || !bytes.Equal(got, data) {
				t.Fatalf("chunk %d of %d bytes just put: kept %v, same %v", i, len(data), ok, bytes.Equal(got, data))
			}
		} else if _, ok := c.get(id, len(data), nil); ok {
			t.Fatalf("chunk %d of %d bytes kept, over the limit", i, len(data))
		}
		// Every chunk still answered holds its own content.
		for _, old := range order[max(0, len(order)-40):] {
			if got, ok := c.get(old, len(content[old]), nil); ok && !bytes.Equal(got, content[old]) {
				t.Fatalf("after chunk %d: a kept chunk answers other bytes", i)
			}
		}
		kept := 0
		for _, ref := range c.m {
			kept += ref.len
		}
		if kept > memBytes || len(c.buf) > memBytes {
			t.Fatalf("after chunk %d: %d bytes kept in a buffer of %d, limit %d", i, kept, len(c.buf), memBytes)
		}
	}
}

// The ring grows from memStart only while copies ask for small chunks:
// kept chunks nobody asks for stay within its first size (fresh memory is
// dear); asked for at least once per memAskBytes put, it doubles up to
// memBytes.
func TestMemChunksRingGrowsWhenAsked(t *testing.T) {
	oldMax, oldBytes, oldStart := memChunkMax, memBytes, memStart
	memChunkMax, memBytes, memStart = 3000, 64<<10, 8<<10
	defer func() { memChunkMax, memBytes, memStart = oldMax, oldBytes, oldStart }()
	rng := rand.New(rand.NewPCG(3, 4))
	used := func(c *memChunks) int {
		top := 0
		for _, ref := range c.m {
			top = max(top, ref.off+ref.len)
		}
		return top
	}
	var c memChunks
	for i := range 2000 {
		var id [32]byte
		binary.LittleEndian.PutUint64(id[:], uint64(i))
		c.keep(id, make([]byte, 1+rng.IntN(3000)))
		if u := used(&c); u > memStart || len(c.buf) > memStart {
			t.Fatalf("nothing asked for: chunk %d kept at %d bytes into the ring, its buffer %d bytes, past its first size %d", i, u, len(c.buf), memStart)
		}
	}
	// Asked for (hits or not), once per 1,000 bytes put: it grows to
	// memBytes, never past.
	grew := 0
	for i := range 2000 {
		var id [32]byte
		binary.LittleEndian.PutUint64(id[:], uint64(10000+i))
		data := make([]byte, 1000)
		c.keep(id, data)
		c.get(id, len(data), nil)
		grew = max(grew, used(&c))
	}
	if grew <= memBytes/2 || grew > memBytes {
		t.Fatalf("asked for: the ring used %d bytes, want more than %d and at most %d", grew, memBytes/2, memBytes)
	}
}

// A chunk repeated within one file is copied within the file (in the
// kernel), not downloaded again: the file is open for reading back too.
func TestRunRepeatWithinAFile(t *testing.T) {
	forEachNaming(t, func(t *testing.T) {
		src := &idCountingSource{memSource: memSource{}, served: map[[32]byte]int{}}
		rng := rand.New(rand.NewPCG(9, 10))
		a, b := make([]byte, 4096), make([]byte, 4096)
		for i := range a {
			a[i], b[i] = byte(rng.Uint32()), byte(rng.Uint32())
		}
		data := slices.Concat(a, b, a, a)
		f := file("r/f")
		f.Chunks, f.Size = src.put(data, 4096), int64(len(data))
		m := wire.Manifest{Config: "c", Seq: 1, Listing: src.listing(t, dir("r"), f)}
		to := t.TempDir()
		res, err := Run(context.Background(), Options{Source: src, ChunkKey: testKey, Manifest: m, Target: to,
			Meta: meta.Options{SkipOwner: true}, Workers: 1})
		if err != nil || len(res.Problems) > 0 {
			t.Fatalf("restore: %v, problems %q", err, res.Problems)
		}
		checkRestored(t, to, []wantFile{{path: "r/f", data: data}})
		if n := src.served[f.Chunks[0].ID]; n != 1 || res.Stats.Copied != 2 {
			t.Errorf("the repeated chunk was downloaded %d times and copied %d times, want 1 and 2", n, res.Stats.Copied)
		}
	})
}

// gatedSource holds back one chunk until another has been served (or a
// long while has passed, so a failing test ends).
type gatedSource struct {
	memSource
	hold, after [32]byte
	once        sync.Once
	released    chan struct{}
	timedOut    bool // hold was released by the timer, not by after
}

func (g *gatedSource) GetChunks(ctx context.Context, ids [][32]byte, fn func(f *wire.Frame) error) error {
	return g.memSource.GetChunks(ctx, ids, func(f *wire.Frame) error {
		switch f.ID {
		case g.hold:
			select {
			case <-g.released:
			case <-time.After(10 * time.Second):
				g.timedOut = true
			}
		case g.after:
			g.once.Do(func() { close(g.released) })
		}
		return fn(f)
	})
}

// A file whose copy comes from a file another worker has not completed
// yet does not hold up its worker: the worker goes on with the rest of its
// job and completes the file at the end.
func TestRunCopyWaitsAtTheEndOfItsJob(t *testing.T) {
	withMemChunks(t, 0)
	src := &gatedSource{memSource: memSource{}, released: make(chan struct{})}
	rng := rand.New(rand.NewPCG(13, 14))
	random := func() []byte {
		b := make([]byte, 100+rng.IntN(900))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	nodes := []tree.Node{dir("r")}
	var want []wantFile
	shared := random()
	for i := range 2 * batchFiles {
		data := random()
		if i == batchFiles-1 || i == batchFiles {
			data = shared // the last file of the first job, and the first of the second
		}
		f := file(fmt.Sprintf("r/f%04d", i))
		f.Chunks, f.Size = src.put(data, 4096), int64(len(data))
		nodes = append(nodes, f)
		want = append(want, wantFile{path: string(f.Path), data: data})
	}
	src.hold = nodes[batchFiles].Chunks[0].ID    // the first job's last file
	src.after = nodes[2*batchFiles].Chunks[0].ID // the second job's last file
	m := wire.Manifest{Config: "c", Seq: 1, Listing: src.listing(t, nodes...)}
	to := t.TempDir()
	res, err := Run(context.Background(), Options{Source: src, ChunkKey: testKey, Manifest: m, Target: to,
		Meta: meta.Options{SkipOwner: true}, Workers: 2})
	if err != nil || len(res.Problems) > 0 {
		t.Fatalf("restore: %v, problems %q", err, res.Problems)
	}
	checkRestored(t, to, want)
	if src.timedOut {
		t.Error("the second job waited for the first job's file before going on with its other files")
	}
	if res.Stats.Copied != 1 {
		t.Errorf("%d chunks copied, want 1", res.Stats.Copied)
	}
}
