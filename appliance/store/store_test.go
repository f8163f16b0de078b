package store_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"vaultnode/appliance/store"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
)

type fixture struct {
	t    testing.TB
	dir  string
	s    *store.Store
	aead *pack.Sealer
	hs   *keys.Hasher
	r    *rand.Rand
	// noDirect opens the store without DirectReads (coldread_test.go).
	noDirect bool
}

func newFixture(t testing.TB, dir string) *fixture {
	t.Helper()
	var secret [32]byte
	secret[0] = 42
	ks := keys.Derive(secret)
	f := &fixture{t: t, dir: dir, aead: pack.NewSealer(ks.Pack), hs: keys.NewHasher(ks.ChunkID), r: rand.New(rand.NewPCG(1, 1))}
	f.open()
	t.Cleanup(func() {
		if f.s != nil {
			f.s.Close()
		}
	})
	return f
}

func (f *fixture) open() {
	f.t.Helper()
	s, err := store.Open(f.dir, zaptest.NewLogger(f.t, zaptest.Level(zap.WarnLevel)), store.Options{Keys: f.keys, DirectReads: !f.noDirect})
	if err != nil {
		f.t.Fatalf("open store: %v", err)
	}
	f.s = s
}

// keys gives the fixture's key to every company but "nokey".
func (f *fixture) keys(company string) (*pack.Sealer, error) {
	if company == "nokey" {
		return nil, errors.New("no such company")
	}
	return f.aead, nil
}

func (f *fixture) reopen() {
	f.t.Helper()
	if err := f.s.Close(); err != nil {
		f.t.Fatal(err)
	}
	f.s = nil
	f.open()
}

// chunk makes a random plaintext and its sealed entry.
func (f *fixture) chunk(size int) ([]byte, store.Entry) {
	p := make([]byte, size)
	for i := range p {
		p[i] = byte(f.r.Uint32())
	}
	return p, f.entry(p)
}

func (f *fixture) entry(p []byte) store.Entry {
	h := pack.EntryHeader{Kind: pack.KindData, ID: f.hs.Sum(p), PlainLen: uint32(len(p))}
	data := pack.AppendEntry(nil, f.aead, &h, p)
	return store.Entry{Header: h, Data: data}
}

func (f *fixture) mustGet(company string, e store.Entry, want []byte) {
	f.t.Helper()
	got, loc, err := f.s.Get(company, f.aead, e.Header.ID, nil)
	if err != nil {
		f.t.Fatalf("Get %x: %v", e.Header.ID[:8], err)
	}
	if !bytes.Equal(got, want) {
		f.t.Fatalf("Get %x: content differs", e.Header.ID[:8])
	}
	if loc.PlainLen != uint32(len(want)) || loc.Kind != pack.KindData {
		f.t.Fatalf("Get %x: location %+v", e.Header.ID[:8], loc)
	}
}

func TestPutHasGet(t *testing.T) {
	f := newFixture(t, t.TempDir())
	var plains [][]byte
	var entries []store.Entry
	for _, size := range []int{0, 1, 100, 64 << 10, 1 << 20} {
		p, e := f.chunk(size)
		plains = append(plains, p)
		entries = append(entries, e)
	}
	if err := f.s.Put("acme", entries[:3]); err != nil {
		t.Fatal(err)
	}
	if err := f.s.Put("acme", entries[3:]); err != nil {
		t.Fatal(err)
	}
	if err := f.s.Put("acme", nil); err != nil {
		t.Fatal(err)
	}
	_, other := f.chunk(10)
	ids := [][32]byte{entries[0].Header.ID, other.Header.ID, entries[4].Header.ID}
	check := func() {
		has, err := f.s.Has("acme", ids)
		if err != nil || !has[0] || has[1] || !has[2] {
			t.Fatalf("Has = %v, %v; want [true false true]", has, err)
		}
		// Another company sees nothing of acme's.
		if has, _ := f.s.Has("globex", ids); has[0] || has[2] {
			t.Fatal("a company sees another company's chunks")
		}
		if _, _, err := f.s.Get("globex", f.aead, ids[0], nil); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get from another company: %v, want ErrNotFound", err)
		}
		if _, _, err := f.s.Get("acme", f.aead, other.Header.ID, nil); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get unknown: %v, want ErrNotFound", err)
		}
		for i := range entries {
			f.mustGet("acme", entries[i], plains[i])
		}
	}
	check()
	f.reopen()
	check()

	// Putting a known chunk again keeps the first location.
	loc1, _ := f.s.Lookup("acme", entries[0].Header.ID)
	if err := f.s.Put("acme", []store.Entry{f.entry(plains[0])}); err != nil {
		t.Fatal(err)
	}
	loc2, _ := f.s.Lookup("acme", entries[0].Header.ID)
	if loc1 != loc2 {
		t.Fatalf("re-put moved the chunk: %+v -> %+v", loc1, loc2)
	}
	// ForEachChunk lists exactly the stored chunks.
	n := 0
	if err := f.s.ForEachChunk("acme", func(id [32]byte, loc store.Location) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != len(entries) {
		t.Fatalf("ForEachChunk saw %d chunks, want %d", n, len(entries))
	}
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestRecovery: after a crash the store indexes what the index lacks and
// cuts only a torn entry at a pack's tail; it never removes a pack.
func TestRecovery(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, dir)
	var plains [][]byte
	var entries []store.Entry
	for i := 0; i < 20; i++ {
		p, e := f.chunk(1000 + i*300)
		plains = append(plains, p)
		entries = append(entries, e)
		if err := f.s.Put("acme", []store.Entry{e}); err != nil {
			t.Fatal(err)
		}
	}
	packs, err := f.s.Packs()
	if err != nil || len(packs) != 1 {
		t.Fatalf("Packs = %v, %v", packs, err)
	}
	p := packs[0]
	if size := fileSize(t, p.Path); size != p.Committed {
		t.Fatalf("pack is %d bytes, committed %d", size, p.Committed)
	}
	if err := f.s.Close(); err != nil {
		t.Fatal(err)
	}
	f.s = nil

	// An append past the committed length: a whole entry (synced but not
	// yet in the index when the crash came) plus a torn one.
	lostPlain, lost := f.chunk(5000)
	_, torn := f.chunk(4000)
	tail := append(append([]byte(nil), lost.Data...), torn.Data[:777]...)
	pf, err := os.OpenFile(p.Path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	pf.Write(tail)
	pf.Close()
	// A pack the index does not know: created, written, crash before the
	// index knew it.
	orphanPlain, orphanEntry := f.chunk(6000)
	orphan := filepath.Join(dir, "packs", "000", "00000007.pack")
	hdr, _ := pack.FileHeader{Company: "acme", Number: 7}.Marshal()
	if err := os.WriteFile(orphan, append(append(hdr, lost.Data...), orphanEntry.Data...), 0o600); err != nil {
		t.Fatal(err)
	}
	// A header-only pack in a directory of its own.
	orphan2 := filepath.Join(dir, "packs", "001", "00000100.pack")
	os.MkdirAll(filepath.Dir(orphan2), 0o700)
	os.WriteFile(orphan2, hdr, 0o600)
	// Files that are not packs are left alone.
	other := filepath.Join(dir, "packs", "README")
	os.WriteFile(other, []byte("x"), 0o600)

	f.open()
	want := p.Committed + int64(len(lost.Data))
	if size := fileSize(t, p.Path); size != want {
		t.Fatalf("after recovery the pack is %d bytes, want %d (cut exactly at the torn entry)", size, want)
	}
	for _, o := range []string{orphan, orphan2, other} {
		if _, err := os.Stat(o); err != nil {
			t.Fatalf("recovery removed %s: %v", o, err)
		}
	}
	for i := range entries {
		f.mustGet("acme", entries[i], plains[i])
	}
	f.mustGet("acme", lost, lostPlain)
	f.mustGet("acme", orphanEntry, orphanPlain)
	if loc, _ := f.s.Lookup("acme", lost.Header.ID); loc.Pack != p.Number {
		t.Fatalf("an entry in two packs is indexed in pack %d, want the first, %d", loc.Pack, p.Number)
	}
	if has, _ := f.s.Has("acme", [][32]byte{torn.Header.ID}); has[0] {
		t.Fatal("a torn entry is visible")
	}
	packs, _ = f.s.Packs()
	if len(packs) != 3 || packs[0].Committed != want {
		t.Fatalf("after recovery the index holds packs %+v", packs)
	}
	// The store goes on: a new pack never reuses a number on disk.
	p2, e2 := f.chunk(3000)
	if err := f.s.Put("acme", []store.Entry{e2}); err != nil {
		t.Fatal(err)
	}
	p3, e3 := f.chunk(3000)
	if err := f.s.Put("other", []store.Entry{e3}); err != nil {
		t.Fatal(err)
	}
	loc3, _ := f.s.Lookup("other", e3.Header.ID)
	if loc3.Pack <= 0x100 {
		t.Fatalf("new pack %d reuses a number at or below the orphan 0x100", loc3.Pack)
	}
	f.reopen()
	f.mustGet("acme", e2, p2)
	f.mustGet("other", e3, p3)
	for i := range entries {
		f.mustGet("acme", entries[i], plains[i])
	}
	// Scanning the pack yields exactly what the index holds.
	pf, _ = os.Open(p.Path)
	defer pf.Close()
	sc, err := pack.NewScanner(pf)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		e, err := sc.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("scan the recovered pack: %v", err)
		}
		loc, err := f.s.Lookup("acme", e.Header.ID)
		if err != nil || int64(loc.Offset) != e.Offset {
			t.Fatalf("scanned entry at %d: index says %+v, %v", e.Offset, loc, err)
		}
		n++
	}
	if n != len(entries)+1 { // after a restart new puts go to a new pack
		t.Fatalf("scanned %d entries, want %d", n, len(entries)+1)
	}
}

// TestDamage: a changed byte anywhere in an entry makes Get fail with
// ErrDamaged and return no data.
func TestDamage(t *testing.T) {
	f := newFixture(t, t.TempDir())
	var plains [][]byte
	var entries []store.Entry
	// The middle entry is large enough to be opened in place when dst has
	// room for it (the sealed bytes read where the plaintext goes); Get
	// reads it into a buffer of its own otherwise, and every small entry
	// too. Both ways see every damage.
	for _, size := range []int{4096, 300 << 10, 4096} {
		p, e := f.chunk(size)
		plains = append(plains, p)
		entries = append(entries, e)
	}
	if err := f.s.Put("acme", entries); err != nil {
		t.Fatal(err)
	}
	loc, _ := f.s.Lookup("acme", entries[1].Header.ID)
	path := f.s.PackPath(loc.Pack)
	room := make([]byte, 7, 1<<20)
	for _, at := range []int64{0, 4, 30, 45, 49, 60, pack.EntryHeaderSize + 10, pack.EntryHeaderSize + 30, pack.EntryHeaderSize + 2000, pack.EntryHeaderSize + int64(loc.BodyLen) - 1} {
		flip(t, path, int64(loc.Offset)+at)
		for _, dst := range [][]byte{nil, room} {
			got, _, err := f.s.Get("acme", f.aead, entries[1].Header.ID, dst)
			if !errors.Is(err, store.ErrDamaged) || got != nil {
				t.Fatalf("byte %d of the entry flipped, dst of cap %d: Get = %d bytes, %v; want ErrDamaged and no data", at, cap(dst), len(got), err)
			}
		}
		flip(t, path, int64(loc.Offset)+at) // undo
		f.mustGet("acme", entries[1], plains[1])
		got, _, err := f.s.Get("acme", f.aead, entries[1].Header.ID, room)
		if err != nil || !bytes.Equal(got[:7], room) || !bytes.Equal(got[7:], plains[1]) || &got[0] != &room[0] {
			t.Fatalf("Get into a dst with room: %v (prefix kept %v, content equal %v, in dst %v)", err,
				bytes.Equal(got[:7], room), bytes.Equal(got[7:], plains[1]), &got[0] == &room[0])
		}
	}
	// Neighbours of a damaged entry still read.
	flip(t, path, int64(loc.Offset)+pack.EntryHeaderSize+100)
	f.mustGet("acme", entries[0], plains[0])
	f.mustGet("acme", entries[2], plains[2])
	// A pack cut short.
	if err := os.Truncate(path, int64(loc.Offset)+10); err != nil {
		t.Fatal(err)
	}
	f.reopen()
	for _, dst := range [][]byte{nil, room} {
		if _, _, err := f.s.Get("acme", f.aead, entries[2].Header.ID, dst); !errors.Is(err, store.ErrDamaged) {
			t.Fatalf("entry past the end of a cut pack, dst of cap %d: %v, want ErrDamaged", cap(dst), err)
		}
	}
	// Cut within the entry's ciphertext: the header and nonce read whole.
	if err := os.Truncate(path, int64(loc.Offset)+pack.EntryHeaderSize+pack.NonceSize+100); err != nil {
		t.Fatal(err)
	}
	f.reopen()
	for _, dst := range [][]byte{nil, room} {
		if _, _, err := f.s.Get("acme", f.aead, entries[1].Header.ID, dst); !errors.Is(err, store.ErrDamaged) {
			t.Fatalf("entry cut within its ciphertext, dst of cap %d: %v, want ErrDamaged", cap(dst), err)
		}
	}
	// A missing pack file.
	os.Remove(path)
	f.reopen()
	if _, _, err := f.s.Get("acme", f.aead, entries[0].Header.ID, nil); !errors.Is(err, store.ErrDamaged) {
		t.Fatalf("entry of a missing pack: %v, want ErrDamaged", err)
	}
}

func flip(t *testing.T, path string, off int64) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	b := make([]byte, 1)
	if _, err := fh.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x20
	if _, err := fh.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrent runs puts and gets of many companies at once (run with
// -race).
func TestConcurrent(t *testing.T) { testConcurrent(t, 40) }

// TestReaderEviction: with more than 128 packs the store's reader cache
// closes files while other goroutines are about to read them; a Get must
// never report a good chunk as damaged because of that.
func TestReaderEviction(t *testing.T) { testConcurrent(t, 160) }

func testConcurrent(t *testing.T, companies int) {
	f := newFixture(t, t.TempDir())
	type item struct {
		company string
		plain   []byte
		e       store.Entry
	}
	var items []item
	for i := 0; i < companies; i++ {
		for j := 0; j < 3; j++ {
			p, e := f.chunk(2000)
			items = append(items, item{fmt.Sprintf("co%d", i), p, e})
		}
	}
	var wg sync.WaitGroup
	errc := make(chan error, len(items)*4)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < len(items); i += 8 {
				if err := f.s.Put(items[i].company, []store.Entry{items[i].e}); err != nil {
					errc <- err
				}
			}
		}(w)
	}
	wg.Wait()
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			for k := 0; k < 1500; k++ {
				it := items[r.IntN(len(items))]
				got, _, err := f.s.Get(it.company, f.aead, it.e.Header.ID, nil)
				if err != nil {
					errc <- fmt.Errorf("Get %s %x: %w", it.company, it.e.Header.ID[:4], err)
					return
				}
				if !bytes.Equal(got, it.plain) {
					errc <- fmt.Errorf("Get %s: wrong content", it.company)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}

// TestNoSpace fills a 2 MiB tmpfs: Put must fail with ErrNoSpace, keep
// every acknowledged chunk readable and leave a store that reopens.
func TestNoSpace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: TestNoSpace mounts a 2 MiB tmpfs and needs root; run the tests as root (CI does)")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=2m,mode=0700"); err != nil {
		t.Skipf("SKIPPED LOUDLY: cannot mount a tmpfs for the disk-full test (%v); this machine forbids mounts", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	f := newFixture(t, dir)
	var plains [][]byte
	var entries []store.Entry
	var err error
	for i := 0; i < 100; i++ {
		p, e := f.chunk(100 << 10)
		if err = f.s.Put("acme", []store.Entry{e}); err != nil {
			break
		}
		plains = append(plains, p)
		entries = append(entries, e)
	}
	if !errors.Is(err, store.ErrNoSpace) {
		t.Fatalf("filling a 2 MiB disk: err = %v, want ErrNoSpace", err)
	}
	if len(entries) == 0 {
		t.Fatal("nothing fit on the disk: the test's tmpfs is too small for the index")
	}
	t.Logf("%d chunks of 100 KiB stored before: %v", len(entries), err)
	for i := range entries {
		f.mustGet("acme", entries[i], plains[i])
	}
	packs, _ := f.s.Packs()
	for _, p := range packs {
		if size := fileSize(t, p.Path); size != p.Committed {
			t.Fatalf("after ENOSPC pack %s is %d bytes, committed %d", p.Path, size, p.Committed)
		}
	}
	// Smaller puts that fit still work.
	p, e := f.chunk(10)
	if err := f.s.Put("acme", []store.Entry{e}); err != nil {
		t.Logf("a 10-byte put after ENOSPC: %v", err)
	} else {
		plains, entries = append(plains, p), append(entries, e)
	}
	f.reopen()
	for i := range entries {
		f.mustGet("acme", entries[i], plains[i])
	}
}

// TestGroupCommit: many appenders of two companies commit at once, with
// chunks shared between them; the index takes them in shared transactions
// (index.go). Every chunk reads back, before and after a reopen, and the
// packs made afterwards do not reuse a committed pack's number.
func TestGroupCommit(t *testing.T) {
	f := newFixture(t, t.TempDir())
	type item struct {
		plain []byte
		e     store.Entry
	}
	shared := make([]item, 64)
	for i := range shared {
		p, e := f.chunk(300 + i)
		shared[i] = item{p, e}
	}
	const workers = 8
	own := make([][]item, workers)
	for w := range own {
		for i := 0; i < 400; i++ {
			p, e := f.chunk(100 + i%700)
			own[w] = append(own[w], item{p, e})
		}
	}
	company := func(w int) string { return fmt.Sprintf("co%d", w%2) }
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			items := append(append([]item(nil), own[w]...), shared...)
			for len(items) > 0 {
				n := min(50, len(items))
				var es []store.Entry
				for _, it := range items[:n] {
					es = append(es, it.e)
				}
				if err := f.s.Put(company(w), es); err != nil {
					errc <- err
					return
				}
				items = items[n:]
			}
		}(w)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	check := func() {
		for w := 0; w < workers; w++ {
			for _, it := range own[w] {
				f.mustGet(company(w), it.e, it.plain)
			}
			for _, it := range shared {
				f.mustGet(company(w), it.e, it.plain)
			}
		}
	}
	check()
	f.reopen()
	check()
	p, e := f.chunk(5000)
	if err := f.s.Put("co0", []store.Entry{e}); err != nil {
		t.Fatal(err)
	}
	f.mustGet("co0", e, p)
	check()
	f.reopen()
	f.mustGet("co0", e, p)
	check()
}

// TestGetReusesItsReadBuffer: reading a chunk back allocates no buffer of
// the chunk's size when the caller gives one for the plaintext: the sealed
// entry is read where the plaintext goes and opened there (a restore reads
// every chunk through Get).
func TestGetReusesItsReadBuffer(t *testing.T) {
	f := newFixture(t, t.TempDir())
	p, e := f.chunk(1 << 20)
	if err := f.s.Put("acme", []store.Entry{e}); err != nil {
		t.Fatal(err)
	}
	dst := make([]byte, 0, 2<<20)
	get := func() {
		got, _, err := f.s.Get("acme", f.aead, e.Header.ID, dst[:0])
		if err != nil || !bytes.Equal(got, p) {
			t.Fatalf("Get: %v (content equal: %v)", err, bytes.Equal(got, p))
		}
	}
	get()
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // a collection empties the pool
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const n = 20
	for range n {
		get()
	}
	runtime.ReadMemStats(&after)
	// No buffer of the chunk's size at all (an AES key schedule and GCM
	// table per entry remain).
	if got := after.TotalAlloc - before.TotalAlloc; got > 64<<10 {
		t.Fatalf("%d reads of a 1 MiB chunk allocated %d bytes: a buffer of its own", n, got)
	}
}

// TestHasInKeyOrder checks Has's forward walk of the index: ids asked in
// any order, repeated, absent ones between present ones (some a key or two
// apart, some far), another company's bucket after this one's, and ids
// past the last key all come back as a lookup of each alone would say.
func TestHasInKeyOrder(t *testing.T) {
	f := newFixture(t, t.TempDir())
	var stored []store.Entry
	for range 3000 {
		_, e := f.chunk(8)
		stored = append(stored, e)
	}
	// Index two thirds of them, leaving every third one out, so absent ids
	// lie one key from present ones as well as far from them.
	present := map[[32]byte]bool{}
	var put []store.Entry
	for i, e := range stored {
		if i%3 != 0 {
			put = append(put, e)
			present[e.Header.ID] = true
		}
	}
	if err := f.s.Put("acme", put); err != nil {
		t.Fatal(err)
	}
	_, g := f.chunk(8)
	if err := f.s.Put("globex", []store.Entry{g}); err != nil {
		t.Fatal(err)
	}
	// A commit that looks up much of the index has it read ahead first.
	if n, err := f.s.IndexPages(); err != nil || n == 0 {
		t.Fatalf("IndexPages = %d, %v", n, err)
	}
	if err := f.s.WarmIndex(nil); err != nil {
		t.Fatal(err)
	}
	var ids [][32]byte
	for _, e := range stored {
		ids = append(ids, e.Header.ID)
	}
	ids = append(ids, g.Header.ID, [32]byte{}, [32]byte{0xff, 0xff, 0xff, 0xff}, ids[5], ids[6], ids[5])
	var sparse [][32]byte
	for i := 0; i < len(ids); i += 40 {
		sparse = append(sparse, ids[i])
	}
	for _, sub := range [][][32]byte{ids, slices.Clone(ids[:1]), slices.Clone(ids[len(ids)-4:]), sparse} {
		f.r.Shuffle(len(sub), func(i, j int) { sub[i], sub[j] = sub[j], sub[i] })
		has, err := f.s.Has("acme", sub)
		if err != nil {
			t.Fatal(err)
		}
		for i, id := range sub {
			if has[i] != present[id] {
				t.Fatalf("Has(%x) = %v among %d ids, want %v", id[:8], has[i], len(sub), present[id])
			}
			if _, err := f.s.Lookup("acme", id); (err == nil) != present[id] {
				t.Fatalf("Lookup(%x): %v, want present %v", id[:8], err, present[id])
			}
		}
	}
}

// TestAppendSmallAndLarge: small entries gathered into larger writes and
// large ones written directly land where the index says, in the order
// added, after an aborted append and across a reopen.
func TestAppendSmallAndLarge(t *testing.T) {
	f := newFixture(t, t.TempDir())
	// An aborted appender's gathered entries are neither written nor indexed.
	a, err := f.s.Append("acme")
	if err != nil {
		t.Fatal(err)
	}
	_, lost := f.chunk(100)
	if err := a.Add(lost.Header, lost.Data); err != nil {
		t.Fatal(err)
	}
	a.Abort()

	var plains [][]byte
	var entries []store.Entry
	for i := range 2000 {
		size := 1 + i%900
		switch i % 500 {
		case 7:
			size = 64 << 10 // at the threshold: written directly
		case 8:
			size = 300 << 10 // larger than the whole buffer
		case 9:
			size = 64<<10 - 100 // gathered, near the threshold
		}
		p, e := f.chunk(size)
		plains = append(plains, p)
		entries = append(entries, e)
	}
	if err := f.s.Put("acme", entries); err != nil {
		t.Fatal(err)
	}
	check := func() {
		t.Helper()
		for i := range entries {
			f.mustGet("acme", entries[i], plains[i])
		}
		if has, err := f.s.Has("acme", [][32]byte{lost.Header.ID}); err != nil || has[0] {
			t.Fatalf("aborted entry: Has = %v, %v; want false", has, err)
		}
	}
	check()
	f.reopen()
	check()
}

// A reserved appender has its pack before its first entry; one given back
// unused is the next appender's pack, not a pack left empty.
func TestAppendReserve(t *testing.T) {
	f := newFixture(t, t.TempDir())
	packFiles := func() []string {
		t.Helper()
		ps, err := filepath.Glob(filepath.Join(f.dir, "packs", "*", "*.pack"))
		if err != nil {
			t.Fatal(err)
		}
		return ps
	}
	a, err := f.s.Append("acme")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Reserve(); err != nil {
		t.Fatal(err)
	}
	if ps := packFiles(); len(ps) != 1 {
		t.Fatalf("after Reserve: pack files %v, want one", ps)
	}
	a.Abort()
	b, err := f.s.Append("acme")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Reserve(); err != nil {
		t.Fatal(err)
	}
	p, e := f.chunk(100 << 10)
	if err := b.Add(e.Header, e.Data); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if ps := packFiles(); len(ps) != 1 {
		t.Fatalf("after a reserved pack was given back and reused: pack files %v, want one", ps)
	}
	f.reopen()
	f.mustGet("acme", e, p)
}
