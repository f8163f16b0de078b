package store_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"vaultnode/appliance/store"
	"vaultnode/internal/pack"
)

// dropCache writes the packs under dir back and evicts their pages from
// the page cache (theirs only: POSIX_FADV_DONTNEED).
func dropCache(t *testing.T, dir string) {
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
	// All but the unknown id, the repeat and the step back (read
	// through the cache after the span that held them) come from spans.
	if n := store.ColdReads() - before; n < int64(len(order))-3 {
		t.Fatalf("%d of %d entries read directly after their pages were evicted", n, len(order))
	}
	warmCache(t, f.dir)
	before = store.ColdReads()
	check("warm")
	if n := store.ColdReads() - before; n != 0 {
		t.Fatalf("%d entries read directly while the page cache held them", n)
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
