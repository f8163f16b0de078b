package store_test

import (
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"vaultnode/appliance/store"
	"vaultnode/internal/pack"
)

// cachedPages counts the pages of [off, off+n) of the file at path that
// the page cache holds.
func cachedPages(t *testing.T, path string, off, n int64) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	page := int64(os.Getpagesize())
	first, last := off/page, (off+n+page-1)/page
	vec := make([]byte, (fi.Size()+page-1)/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	in := 0
	for _, v := range vec[first:last] {
		in += int(v & 1)
	}
	return in
}

// TestCommitDropsContentFromCache: once a commit is synced, the content
// entries it wrote leave the page cache (item 75), from the first listing
// on they stay (the version's commit reads the listing back), and every
// entry still reads back; a large content entry read leaves the cache too.
func TestCommitDropsContentFromCache(t *testing.T) {
	f := newFixture(t, t.TempDir())
	a, err := f.s.Append("acme")
	if err != nil {
		t.Fatal(err)
	}
	var plains [][]byte
	var entries []store.Entry
	add := func(p []byte, e store.Entry) {
		plains, entries = append(plains, p), append(entries, e)
		if err := a.Add(e.Header, e.Data); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 6 {
		add(f.chunk(1<<20 + i))
		add(f.chunk(3000 + i)) // small ones, gathered
	}
	lp := make([]byte, 300<<10)
	for i := range lp {
		lp[i] = byte(i * 7)
	}
	lh := pack.EntryHeader{Kind: pack.KindListing, ID: f.hs.Sum(lp), PlainLen: uint32(len(lp))}
	if err := a.Add(lh, pack.AppendEntry(nil, f.aead, &lh, lp)); err != nil {
		t.Fatal(err)
	}
	add(f.chunk(1 << 20))
	if err := a.Commit(); err != nil {
		t.Fatal(err)
	}
	loc, err := f.s.Lookup("acme", lh.ID)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(f.dir, "packs", "000", "00000000.pack")
	if _, err := os.Stat(path); err != nil {
		matches, _ := filepath.Glob(filepath.Join(f.dir, "*", "*", "*.pack"))
		t.Fatalf("pack file: %v (packs here: %v)", err, matches)
	}
	page := int64(os.Getpagesize())
	content := int64(loc.Offset) - pack.FileHeaderSize
	// A few pages may stay: the two it shares with the header and the
	// listing, and any waiting in another processor's LRU batch, which
	// the kernel does not drop.
	if n := cachedPages(t, path, pack.FileHeaderSize, content); int64(n) > content/page/8 {
		t.Errorf("%d pages of the %d bytes of content before the listing still cached", n, content)
	}
	listing := int64(pack.EntryHeaderSize) + int64(loc.BodyLen)
	if n, all := cachedPages(t, path, int64(loc.Offset), listing), int((listing+page-1)/page); n < all-1 {
		t.Errorf("%d of the listing's %d pages cached: the commit reads it back", n, all)
	}
	for i, e := range entries {
		f.mustGet("acme", e, plains[i])
	}

	// Read whole into the cache again, then entries through the store:
	// a large content entry leaves the cache once read (a restore reads
	// each once), a small one and the listing stay.
	if _, err := os.ReadFile(path); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.s.Get("acme", f.aead, lh.ID, nil); err != nil {
		t.Fatal(err)
	}
	for i, e := range entries {
		f.mustGet("acme", e, plains[i])
		l, err := f.s.Lookup("acme", e.Header.ID)
		if err != nil {
			t.Fatal(err)
		}
		n := int64(pack.EntryHeaderSize) + int64(l.BodyLen)
		whole := (int64(l.Offset)+n)/page - (int64(l.Offset)+page-1)/page // pages wholly its own
		got := cachedPages(t, path, int64(l.Offset), n)
		// A few pages may stay: the kernel drops none that wait in
		// another processor's LRU batch.
		if large := n >= 256<<10; large && int64(got) > whole/8 || !large && got == 0 {
			t.Errorf("entry %d (%d bytes): %d of its pages cached after it was read (%d its own)", i, n, got, whole)
		}
	}
	if n, all := cachedPages(t, path, int64(loc.Offset), listing), int((listing+page-1)/page); n < all-1 {
		t.Errorf("%d of the listing's %d pages cached after it was read", n, all)
	}
}
