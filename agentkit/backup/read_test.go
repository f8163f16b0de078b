package backup

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vaultnode/internal/chunker"
	"vaultnode/internal/keys"
	"vaultnode/internal/testtree"
	"vaultnode/internal/tree"
)

// readPath has r read the file at p as the pipeline would hand it over
// (opened, its node named "f"), and returns the item read and read's error.
func readPath(ctx context.Context, t *testing.T, r *reader, p string) (*item, error) {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	it := &item{fd: fd, done: make(chan struct{})}
	it.node.Path = []byte("f")
	return it, r.read(ctx, it)
}

// TestSmallReaderMatchesChunker: a reader with a small-file buffer (the
// small-file readers) makes the same chunks as a chunking reader, for sizes
// around the minimum chunk, empty and sparse files, and falls back to
// chunking when a file is larger than its buffer.
func TestSmallReaderMatchesChunker(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(3, 4))
	var key [32]byte
	key[0] = 7
	gear, err := chunker.NewGear(key)
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{0, 1, 4096, chunker.MinSize - 1, chunker.MinSize, chunker.MinSize + 1, 3 * chunker.MinSize}
	for _, size := range sizes {
		p := filepath.Join(dir, "f")
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		chunks := func(bufSize int) []tree.ChunkRef {
			up := newUploader(nil, "", &Stats{})
			go func() {
				for c := range up.cand {
					up.done(c)
				}
			}()
			defer close(up.cand)
			r := &reader{gear: gear, hasher: keys.NewHasher(key), up: up, stats: &Stats{}, retries: 1, buf: make([]byte, bufSize)}
			it, err := readPath(context.Background(), t, r, p)
			if err != nil {
				t.Fatal(err)
			}
			if it.node.Status != tree.StatusOK || it.node.Size != int64(size) {
				t.Fatalf("size %d: node %+v", size, it.node)
			}
			return it.node.Chunks
		}
		small, big := chunks(chunker.MinSize+1), chunks(2*chunker.MaxSize)
		if !slices.Equal(small, big) {
			t.Errorf("size %d: small reader's chunks %v, chunker's %v", size, small, big)
		}
		var total int
		for _, c := range small {
			total += int(c.Len)
		}
		if total != size || (size == 0) != (len(small) == 0) {
			t.Errorf("size %d: chunks cover %d bytes in %d chunks", size, total, len(small))
		}
	}
}

// TestCutAsideMatchesChunker: a large file's chunks hashed on a goroutine
// of their own (cutAside) are the chunks, ids and bytes of one chunker
// hashing in turn, in order, though the uploader takes them slowly (so the
// hashing lags the cutting and the chunker must wait before it moves its
// buffer); and a backup cancelled in the middle of such a file ends.
func TestCutAsideMatchesChunker(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(5, 6))
	key := [32]byte{9}
	gear, err := chunker.NewGear(key)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{hashAsideMin - 1, hashAsideMin, 7*chunker.MaxSize + 12345, 9*chunker.MaxSize + 777} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		for i := 0; i+4096 < size; i += 1 << 20 { // zero blocks: chunks of every size
			clear(data[i : i+4096])
		}
		if size%chunker.MaxSize == 777 {
			// A zero run of largest chunks of zeros (read.go, sum), and
			// one to the end.
			clear(data[2<<20 : 2<<20+5*chunker.MaxSize+99])
			clear(data[size-chunker.MaxSize-5000:])
		}
		p := filepath.Join(dir, "f")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		var want []tree.ChunkRef
		h := keys.NewHasher(key)
		eachChunk(t, gear, bytes.NewReader(data), func(b []byte) {
			want = append(want, tree.ChunkRef{ID: h.Sum(b), Len: uint32(len(b))})
		})

		up := newUploader(nil, "", &Stats{})
		got := map[[32]byte]bool{}
		consumed := make(chan struct{})
		go func() {
			defer close(consumed)
			h := keys.NewHasher(key)
			for c := range up.cand {
				time.Sleep(time.Millisecond) // slower than cutting
				if h.Sum(c.data) != c.id {
					t.Errorf("size %d: chunk %x handed to the uploader holds other bytes", size, c.id[:8])
				}
				got[c.id] = true
				up.done(c)
			}
		}()
		r := &reader{gear: gear, hasher: keys.NewHasher(key), up: up, stats: &Stats{}, retries: 1, buf: make([]byte, 2*chunker.MaxSize)}
		it, err := readPath(context.Background(), t, r, p)
		if err != nil {
			t.Fatal(err)
		}
		close(up.cand)
		<-consumed
		if !slices.Equal(it.node.Chunks, want) {
			t.Errorf("size %d: %d chunks, want %d (or not the same)", size, len(it.node.Chunks), len(want))
		}
		for _, w := range want {
			if !got[w.ID] {
				t.Errorf("size %d: chunk %x never reached the uploader", size, w.ID[:8])
			}
		}
	}

	// Cancelled while the uploader takes nothing: the read ends.
	up := newUploader(nil, "", &Stats{})
	ctx, cancel := context.WithCancel(context.Background())
	r := &reader{gear: gear, hasher: keys.NewHasher(key), up: up, stats: &Stats{}, retries: 1, buf: make([]byte, 2*chunker.MaxSize)}
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := readPath(ctx, t, r, filepath.Join(dir, "f")); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled read: %v", err)
	}
}

// eachChunk cuts what r holds with a content chunker and hands each chunk
// to fn (valid until fn returns).
func eachChunk(t *testing.T, gear *chunker.Gear, r io.Reader, fn func([]byte)) {
	t.Helper()
	c := chunker.New(gear, r, nil)
	for {
		b, err := c.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		fn(b)
	}
}

// chunkRefs are the chunks a plain pass of the content chunker makes of
// data, with their ids under key.
func chunkRefs(t *testing.T, gear *chunker.Gear, key [32]byte, data []byte) []tree.ChunkRef {
	t.Helper()
	var refs []tree.ChunkRef
	h := keys.NewHasher(key)
	eachChunk(t, gear, bytes.NewReader(data), func(b []byte) {
		refs = append(refs, tree.ChunkRef{ID: h.Sum(b), Len: uint32(len(b))})
	})
	return refs
}

// askedReader records the largest read asked of it.
type askedReader struct{ most int }

func (a *askedReader) Read(p []byte) (int, error) {
	a.most = max(a.most, len(p))
	return len(p), nil
}

// TestPiecesBoundEachRead: a large file is read readPiece bytes at a time
// however much room the chunker's buffer has, and its chunks are the ones
// of reads as large as that room.
func TestPiecesBoundEachRead(t *testing.T) {
	src := &askedReader{}
	if n, _ := (pieces{src}).Read(make([]byte, 2*chunker.MaxSize)); n != readPiece || src.most != readPiece {
		t.Fatalf("a read into %d bytes asked %d and gave %d, want %d", 2*chunker.MaxSize, src.most, n, readPiece)
	}

	var key [32]byte
	gear, err := chunker.NewGear(key)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	data := make([]byte, 3*chunker.MaxSize+12345)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	cut := func(r io.Reader) []int {
		var sizes []int
		eachChunk(t, gear, r, func(b []byte) { sizes = append(sizes, len(b)) })
		return sizes
	}
	inPieces, whole := cut(pieces{bytes.NewReader(data)}), cut(bytes.NewReader(data))
	if !slices.Equal(inPieces, whole) || len(whole) < 3 {
		t.Fatalf("chunks read in pieces %v, in reads as large as the room %v", inPieces, whole)
	}
}

// resident is how many of the file's pages are in the page cache.
func resident(t *testing.T, path string) int {
	t.Helper()
	n, err := testtree.CachedPages(path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestReadBatch: a small-file reader takes the files waiting for it, up to
// its batch, has the kernel start reading all of them before it reads the
// first, reads each whole, and closes those it did not read when a read
// fails.
func TestReadBatch(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(5, 6))
	var key [32]byte
	key[0] = 9
	gear, err := chunker.NewGear(key)
	if err != nil {
		t.Fatal(err)
	}
	const files, size = 20, 64 << 10
	var paths []string
	var want [][32]byte
	h := keys.NewHasher(key)
	for i := range files {
		p := filepath.Join(dir, string(rune('a'+i)))
		data := make([]byte, size)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil { // clean pages, so the kernel may drop them
			t.Fatal(err)
		}
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if n := resident(t, p); n != 0 {
			t.Fatalf("%s keeps %d pages cached after POSIX_FADV_DONTNEED: this filesystem cannot show read-ahead", p, n)
		}
		paths = append(paths, p)
		want = append(want, h.Sum(data))
	}
	from := make(chan *item, files)
	var items []*item
	for _, p := range paths {
		fd, err := unix.Open(p, unix.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		it := &item{fd: fd, file: os.NewFile(uintptr(fd), p), done: make(chan struct{})}
		it.node.Path, it.node.Size = []byte(filepath.Base(p)), size
		items = append(items, it)
		from <- it
	}
	up := newUploader(nil, "", &Stats{})
	go func() {
		for c := range up.cand {
			up.done(c)
		}
	}()
	defer close(up.cand)
	r := &reader{gear: gear, hasher: keys.NewHasher(key), up: up, stats: &Stats{}, retries: 1, buf: make([]byte, chunker.MinSize+1)}

	var b readBatch
	b.take(<-from, from, smallBatch)
	if len(b.items) != smallBatch {
		t.Fatalf("took %d files, want %d of the %d waiting", len(b.items), smallBatch, files)
	}
	for _, p := range paths[smallBatch:] {
		if n := resident(t, p); n != 0 {
			t.Errorf("%s, not taken, has %d pages cached", p, n)
		}
	}
	// The reads were started, not made: wait for them to land.
	pages := size / os.Getpagesize()
	short, err := testtree.WaitCached(paths[:smallBatch], pages, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for p, n := range short {
		t.Errorf("%s taken in a batch: %d of %d pages cached, the read was not started", p, n, pages)
	}
	if err := b.read(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	for i, it := range items[:smallBatch] {
		if it.node.Status != tree.StatusOK || len(it.node.Chunks) != 1 || it.node.Chunks[0].ID != want[i] {
			t.Errorf("file %d read as %+v", i, it.node)
		}
		if err := it.file.Close(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("file %d read but left open (close: %v)", i, err)
		}
	}

	// A failing read (the backup is cancelled) leaves no file open.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b.take(<-from, from, smallBatch)
	if len(b.items) != files-smallBatch {
		t.Fatalf("took %d files, want the %d left", len(b.items), files-smallBatch)
	}
	if err := b.read(ctx, r); !errors.Is(err, context.Canceled) {
		t.Fatalf("read with the backup cancelled: %v", err)
	}
	for i, it := range items[smallBatch:] {
		if err := it.file.Close(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("file %d not read after the failure but left open (close: %v)", smallBatch+i, err)
		}
	}
}

// TestCutKnownMatchesChunker: a changed file read with its previous
// version's chunks makes the chunks a plain pass makes, whatever the
// change, and takes the unchanged ones at their recorded ends (cutKnown).
// Previous chunks the vault could have lied about (lengths out of bounds,
// ids of other bytes) change nothing either.
func TestCutKnownMatchesChunker(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(11, 12))
	key := [32]byte{4}
	gear, err := chunker.NewGear(key)
	if err != nil {
		t.Fatal(err)
	}
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	refsOf := func(data []byte) []tree.ChunkRef { return chunkRefs(t, gear, key, data) }
	base := random(24 << 20)
	clear(base[9<<20 : 9<<20+3*chunker.MaxSize+5]) // zero chunks, some of the largest size
	splice := func(b []byte, at, del int, ins []byte) []byte {
		return slices.Concat(b[:at], ins, b[at+del:])
	}
	inPlace := slices.Clone(base)
	for range 5 { // in the data, not in the zeros (whose chunks a write there splits)
		at := rng.IntN(9<<20 - 4096)
		if rng.IntN(2) == 0 {
			at = 9<<20 + 3*chunker.MaxSize + 5 + rng.IntN(len(inPlace)-(9<<20+3*chunker.MaxSize+5)-4096)
		}
		copy(inPlace[at:], random(4096))
	}
	everyChunk := slices.Clone(base) // a write in every quarter of the smallest chunk
	for at := 1000; at+64 < len(everyChunk); at += chunker.MinSize / 4 {
		copy(everyChunk[at:], random(64))
	}
	// A byte in the run of zeros just past the chunk that ended where it
	// started: the chunk's bytes are the same, but a plain pass no longer
	// ends it there (the zero rule looks past a chunk's end).
	runCut := slices.Clone(base)
	runCut[9<<20+100] = 1
	cases := []struct {
		name     string
		old, new []byte
		// fewest chunks taken at a previous end; -1: every one but the last
		leastUncut int
		mangle     func([]tree.ChunkRef)
	}{
		{"unchanged", base, base, -1, nil},
		{"appended", base, slices.Concat(base, random(100_000)), -1, nil},
		{"written in place", base, inPlace, 10, nil},
		{"inserted in the middle", base, splice(base, 13<<20, 0, random(1000)), 10, nil},
		{"inserted at the start", base, splice(base, 0, 0, random(77)), 10, nil},
		{"cut near the start", base, splice(base, 300_000, 50_000, nil), 10, nil},
		{"truncated", base, base[:15<<20], 5, nil},
		{"grown from one chunk's worth", base[:3<<20], base, 1, nil},
		{"a run of zeros past a chunk's end cut short", base, runCut, 10, nil},
		{"new content", base, random(len(base)), 0, nil},
		{"written in every chunk", base, everyChunk, 0, nil},
		{"lengths out of bounds", base, base, 0, func(r []tree.ChunkRef) {
			r[0].Len = chunker.MaxSize + 1
			r[3].Len = 0
		}},
		{"ids of other bytes", base, base, 0, func(r []tree.ChunkRef) {
			r[0].ID[0] ^= 1
			r[5].Len++
			r[6].ID = r[2].ID
		}},
	}
	for _, tc := range cases {
		old := refsOf(tc.old)
		want := refsOf(tc.new)
		if tc.mangle != nil {
			tc.mangle(old)
		}
		p := filepath.Join(dir, "f")
		if err := os.WriteFile(p, tc.new, 0o600); err != nil {
			t.Fatal(err)
		}
		r, it, sent := readKnown(t, gear, key, p, old)
		if !slices.Equal(it.node.Chunks, want) {
			t.Errorf("%s: %d chunks, want the %d of a plain pass (or not the same)", tc.name, len(it.node.Chunks), len(want))
		}
		if it.node.Size != int64(len(tc.new)) || it.node.Status != tree.StatusOK {
			t.Errorf("%s: size %d, status %v; want %d, ok", tc.name, it.node.Size, it.node.Status, len(tc.new))
		}
		least := tc.leastUncut
		if least < 0 {
			least = len(old) - 1
		}
		if r.uncut < least || r.uncut > len(old)-1 {
			t.Errorf("%s: %d chunks taken at their previous ends, want %d to %d", tc.name, r.uncut, least, len(old)-1)
		}
		// The rest of a large file that is nothing of its previous version's
		// is cut aside.
		aside := tc.name == "new content" || tc.name == "grown from one chunk's worth" || tc.name == "written in every chunk"
		if (r.aside == 1) != aside {
			t.Errorf("%s: left to cutAside %d times, want %v", tc.name, r.aside, aside)
		}
		for _, c := range want {
			if known := it.known.has(c.ID); known == sent[c.ID] {
				t.Errorf("%s: chunk %x known %v, offered to the vault %v", tc.name, c.ID[:8], known, sent[c.ID])
			}
		}
	}
}

// TestOneChunkFileReadAgain: a file of one chunk read again with the same
// content (its times or owner changed: touch, chown -R) takes its previous
// chunk as it is, neither copied for the uploader nor offered to the
// vault; with other content its chunk is offered as before.
func TestOneChunkFileReadAgain(t *testing.T) {
	dir := t.TempDir()
	src := rand.NewChaCha8([32]byte{21})
	key := [32]byte{5}
	gear, err := chunker.NewGear(key)
	if err != nil {
		t.Fatal(err)
	}
	random := func(n int) []byte { b := make([]byte, n); src.Read(b); return b }
	// One read whole (at most MinSize), one through the chunker (past
	// MinSize, no boundary before its end), one of several chunks.
	for _, size := range []int{100_000, chunker.MinSize + 40_000, 3 << 20} {
		data := random(size)
		refs := chunkRefs(t, gear, key, data)
		if size <= chunker.MinSize+40_000 && len(refs) != 1 {
			t.Fatalf("%d bytes: %d chunks, want one", size, len(refs))
		}
		p := filepath.Join(dir, "f")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		other := chunkRefs(t, gear, key, random(size))
		for _, same := range []bool{true, false} {
			prev := other
			if same {
				prev = refs
			}
			r, it, sent := readKnown(t, gear, key, p, prev)
			if !slices.Equal(it.node.Chunks, refs) {
				t.Errorf("%d bytes, same %v: chunks %v, want %v", size, same, it.node.Chunks, refs)
			}
			wantReused, wantOffered := len(refs), 0
			if !same {
				wantReused, wantOffered = 0, len(refs)
			}
			if r.stats.ChunksReused != int64(wantReused) || len(sent) != wantOffered {
				t.Errorf("%d bytes, same content %v: %d chunks reused, %d offered to the vault; want %d and %d",
					size, same, r.stats.ChunksReused, len(sent), wantReused, wantOffered)
			}
		}
	}
}

// readKnown reads the file at p as the pipeline reads a changed file whose
// previous version had the chunks prev, and returns the reader (its
// counters), the item (its node) and the ids offered to the vault.
func readKnown(t *testing.T, gear *chunker.Gear, key [32]byte, p string, prev []tree.ChunkRef) (*reader, *item, map[[32]byte]bool) {
	t.Helper()
	up := newUploader(nil, "", &Stats{})
	sent, offersDone := collectOffered(up)
	r := &reader{gear: gear, hasher: keys.NewHasher(key), up: up, stats: &Stats{}, retries: 1, buf: make([]byte, 2*chunker.MaxSize)}
	fd, err := unix.Open(p, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	it := &item{fd: fd, done: make(chan struct{}), known: newKnownChunks(&tree.Node{Type: tree.TypeFile, Chunks: prev})}
	it.node.Path = []byte(filepath.Base(p))
	if err := r.read(context.Background(), it); err != nil {
		t.Fatal(err)
	}
	offersDone()
	return r, it, sent
}

// collectOffered takes the chunks offered to up (for its lack queries), as
// the pipeline would, recording their ids; done ends the offers and waits
// for the last to be taken.
func collectOffered(up *uploader) (ids map[[32]byte]bool, done func()) {
	ids = map[[32]byte]bool{}
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for c := range up.cand {
			ids[c.id] = true
			up.done(c)
		}
	}()
	return ids, func() {
		close(up.cand)
		<-consumed
	}
}
