package store_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vaultnode/appliance/store"
	"vaultnode/internal/pack"
)

// dropCache writes the packs under dir back and evicts their pages from
// the page cache (theirs only: POSIX_FADV_DONTNEED).
func dropCache(t testing.TB, dir string) {
	t.Helper()
	packs, _ := filepath.Glob(filepath.Join(dir, "packs", "*", "*.pack"))
	if len(packs) == 0 {
		t.Fatal("no pack files")
	}
	for _, p := range packs {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

// warmCache reads the packs under dir into the page cache.
func warmCache(t *testing.T, dir string) {
	t.Helper()
	packs, _ := filepath.Glob(filepath.Join(dir, "packs", "*", "*.pack"))
	for _, p := range packs {
		if _, err := os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
	}
}

// streamed is what a download gets for ids: through a ReadStream (as the
// vault reads them) and, for comparison, through GetAt one by one.
func streamed(t *testing.T, f *fixture, ids [][32]byte) (got [][]byte, errs []error) {
	t.Helper()
	locs := make([]store.Location, len(ids))
	found := make([]bool, len(ids))
	for i, id := range ids {
		loc, err := f.s.Lookup("acme", id)
		locs[i], found[i] = loc, err == nil
	}
	rs := f.s.ReadStream("acme", f.aead, locs, found)
	defer rs.Close()
	for i, id := range ids {
		var b []byte
		var err error
		if found[i] {
			b, _, err = rs.Get(i, id, locs[i], []byte("hdr"))
		} else {
			b, _, err = f.s.Get("acme", f.aead, id, []byte("hdr"))
		}
		if err == nil && !bytes.HasPrefix(b, []byte("hdr")) {
			t.Fatalf("entry %d: not appended to dst", i)
		}
		if err == nil {
			b = b[3:]
		}
		got, errs = append(got, b), append(errs, err)
	}
	return got, errs
}

// coldFixture stores entries of sizes around the alignment and the span's
// limits, in two packs (two companies' writers would be two packs; one
// company's second Put after a reopen is another), and returns their
// plaintexts and a download's order: pack order, with an unknown id, a
// repeat and a step back.
func coldFixture(t *testing.T, dir string) (*fixture, [][]byte, [][32]byte) {
	f := newFixture(t, dir)
	var plains [][]byte
	var ids [][32]byte
	sizes := []int{0, 1, 100, 4095, 4096, 4097, 64<<10 + 3, 1 << 20, 3<<20 + 7, 200 << 10, 5000}
	for round := range 2 {
		var entries []store.Entry
		for _, size := range sizes {
			p, e := f.chunk(size + round)
			plains = append(plains, p)
			ids = append(ids, e.Header.ID)
			entries = append(entries, e)
		}
		if err := f.s.Put("acme", entries); err != nil {
			t.Fatal(err)
		}
		f.reopen() // the next round goes to a new pack
	}
	order := make([][32]byte, 0, len(ids)+3)
	order = append(order, ids[:5]...)
	order = append(order, [32]byte{1, 2, 3}) // not stored
	order = append(order, ids[5:]...)
	order = append(order, ids[3], ids[len(ids)-1]) // back, and a repeat
	want := make([][]byte, 0, len(order))
	want = append(want, plains[:5]...)
	want = append(want, nil)
	want = append(want, plains[5:]...)
	want = append(want, plains[3], plains[len(plains)-1])
	return f, want, order
}

// TestColdStream: a download's entries that the page cache does not hold
// are read directly in spans and come back whole and identical to what a
// read through the cache gives; held by the cache, none is read directly.
// The test directory's file system must take O_DIRECT (ext4, xfs, btrfs).
func TestColdStream(t *testing.T) {
	f, want, order := coldFixture(t, t.TempDir())
	check := func(what string) {
		t.Helper()
		got, errs := streamed(t, f, order)
		for i := range order {
			if want[i] == nil {
				if !errors.Is(errs[i], store.ErrNotFound) {
					t.Fatalf("%s: entry %d: %v, want not found", what, i, errs[i])
				}
				continue
			}
			if errs[i] != nil {
				t.Fatalf("%s: entry %d: %v", what, i, errs[i])
			}
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("%s: entry %d (%d bytes): content differs", what, i, len(want[i]))
			}
		}
	}
	dropCache(t, f.dir)
	before := store.ColdReads()
	check("cold")
	// Spans wanting 256 KiB or more are read directly: in the first
	// pack the 4 KiB to 1 MiB entries together and the 3 MiB one alone;
	// in the second (a new run of entries: the first pack's end and the
	// unknown id end spans) its first 8 entries together and the 3 MiB
	// one. The first pack's 5 smallest, each pack's last two (205 KiB),
	// the step back and the repeat go through the cache: 13 of 25.
	if n := store.ColdReads() - before; n != 13 {
		t.Fatalf("%d of %d entries read directly after their pages were evicted, want 13", n, len(order))
	}
	warmCache(t, f.dir)
	before = store.ColdReads()
	check("warm")
	if n := store.ColdReads() - before; n != 0 {
		t.Fatalf("%d entries read directly while the page cache held them", n)
	}
	// Without Options.DirectReads, cold entries go through the cache.
	f.noDirect = true
	f.reopen()
	dropCache(t, f.dir)
	before = store.ColdReads()
	check("cold, direct reads off")
	if n := store.ColdReads() - before; n != 0 {
		t.Fatalf("%d entries read directly with DirectReads off", n)
	}
}

// TestColdStreamDamage: a damaged entry (its tag), a damaged header, and a
// pack cut short read through the direct spans give the errors a read
// through the cache gives: ErrDamaged, the same words.
func TestColdStreamDamage(t *testing.T) {
	f, want, order := coldFixture(t, t.TempDir())
	loc := func(i int) store.Location {
		l, err := f.s.Lookup("acme", order[i])
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	flip := func(l store.Location, at int64) {
		t.Helper()
		pf, err := os.OpenFile(f.s.PackPath(l.Pack), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer pf.Close()
		b := []byte{0}
		if _, err := pf.ReadAt(b, int64(l.Offset)+at); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x40
		if _, err := pf.WriteAt(b, int64(l.Offset)+at); err != nil {
			t.Fatal(err)
		}
	}
	flip(loc(2), pack.EntryHeaderSize+50) // body: the tag fails
	flip(loc(7), 5)                       // header
	// The second pack cut in the middle of its 3 MiB entry: it and the
	// entries after it in that pack are gone.
	cut := loc(len(order) - 5) // sizes[8] of round 1
	if cut.BodyLen < 1<<20 {
		t.Fatalf("fixture: entry at cut is %d bytes", cut.BodyLen)
	}
	if err := os.Truncate(f.s.PackPath(cut.Pack), int64(cut.Offset)+int64(cut.BodyLen)/2); err != nil {
		t.Fatal(err)
	}
	warmCache(t, f.dir)
	_, wantErrs := streamed(t, f, order)
	dropCache(t, f.dir)
	before := store.ColdReads()
	got, errs := streamed(t, f, order)
	if store.ColdReads() == before {
		t.Fatal("nothing read directly")
	}
	damaged := 0
	for i := range order {
		if (errs[i] == nil) != (wantErrs[i] == nil) || errs[i] != nil && errs[i].Error() != wantErrs[i].Error() {
			t.Fatalf("entry %d: direct read gives %v, through the cache %v", i, errs[i], wantErrs[i])
		}
		if errs[i] == nil && !bytes.Equal(got[i], want[i]) {
			t.Fatalf("entry %d: content differs", i)
		}
		if errors.Is(errs[i], store.ErrDamaged) {
			damaged++
		}
	}
	// Two flipped, the cut entry, the 2 after it in the second pack, the
	// repeat of the last.
	if damaged != 6 {
		t.Fatalf("%d entries damaged, want 6 (errors: %v)", damaged, errs)
	}
}

// TestColdStreamTmpfs: a store on tmpfs (whose pages are always in the
// cache; O_DIRECT refused before Linux 6.6) reads as before.
func TestColdStreamTmpfs(t *testing.T) {
	var st unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Fatalf("/dev/shm is not a tmpfs (%v): this test needs one", err)
	}
	dir, err := os.MkdirTemp("/dev/shm", "coldread")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f, want, order := coldFixture(t, dir)
	dropCache(t, f.dir)
	got, errs := streamed(t, f, order)
	for i := range order {
		if want[i] == nil {
			continue
		}
		if errs[i] != nil || !bytes.Equal(got[i], want[i]) {
			t.Fatalf("entry %d: %v, or content differs", i, errs[i])
		}
	}
}

// BenchmarkColdRead reads 256 MiB of entries (sizes as the chunker cuts
// them, with small files' entries between) whose pages were evicted, in
// pack order as a restore asks for them: one by one through the page cache
// (GetAt, as before) and through a ReadStream; it reports MB/s and the
// process's CPU seconds (user + system, all threads) per pass.
//
//	go test -run '^$' -bench ColdRead -benchtime 3x ./appliance/store/
func BenchmarkColdRead(b *testing.B) {
	f := newFixture(b, b.TempDir())
	var ids [][32]byte
	var total int64
	for total < 256<<20 {
		var entries []store.Entry
		for range 16 {
			size := 512<<10 + f.r.IntN(1<<20)
			if f.r.IntN(3) == 0 {
				size = 1 + f.r.IntN(64<<10)
			}
			_, e := f.chunk(size)
			entries = append(entries, e)
			ids = append(ids, e.Header.ID)
			total += int64(size)
		}
		if err := f.s.Put("acme", entries); err != nil {
			b.Fatal(err)
		}
	}
	locs := make([]store.Location, len(ids))
	found := make([]bool, len(ids))
	for i, id := range ids {
		loc, err := f.s.Lookup("acme", id)
		if err != nil {
			b.Fatal(err)
		}
		locs[i], found[i] = loc, true
	}
	dst := make([]byte, 0, 4<<20)
	for _, way := range []string{"cache", "stream"} {
		b.Run(way, func(b *testing.B) {
			var cpu time.Duration
			var wall time.Duration
			for range b.N {
				b.StopTimer()
				dropCache(b, f.dir)
				var ru0, ru1 unix.Rusage
				_ = unix.Getrusage(unix.RUSAGE_SELF, &ru0)
				start := time.Now()
				b.StartTimer()
				if way == "cache" {
					for i, id := range ids {
						if _, _, err := f.s.GetAt("acme", f.aead, id, locs[i], dst[:0]); err != nil {
							b.Fatal(err)
						}
					}
				} else {
					rs := f.s.ReadStream("acme", f.aead, locs, found)
					for i, id := range ids {
						if _, _, err := rs.Get(i, id, locs[i], dst[:0]); err != nil {
							b.Fatal(err)
						}
					}
					rs.Close()
				}
				b.StopTimer()
				wall += time.Since(start)
				_ = unix.Getrusage(unix.RUSAGE_SELF, &ru1)
				cpu += time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
			}
			b.ReportMetric(float64(total)*float64(b.N)/1e6/wall.Seconds(), "MB/s")
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
		})
	}
}
