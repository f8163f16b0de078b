package backup

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/klauspost/compress/s2"
	"go.uber.org/zap"

	"vaultnode/internal/tree"
)

// The directory index is read back as written for its version only, and a
// damaged one is refused, never half read; a walk over the bound keeps none.
func TestDirIndex(t *testing.T) {
	dir := t.TempDir()
	r := &dirRecorder{}
	want := map[dirKey][]byte{}
	for i := range 300 {
		n := tree.Node{Path: fmt.Appendf(nil, "a/d%03d", i), Type: tree.TypeDir, Dev: 7, Ino: uint64(1000 - i), Btime: tree.Timespec{Sec: int64(i), Nsec: 5}}
		r.add(&n)
		want[keyOf(&n)] = n.Path
	}
	r.add(&tree.Node{Path: []byte("bad"), Type: tree.TypeDir, Ino: 1, Status: tree.StatusUnreadable}) // not kept
	keep := func(r *dirRecorder, tag int64) {
		t.Helper()
		tmp, err := r.write(dir, tag)
		if err != nil {
			t.Fatal(err)
		}
		if err := keepDirIndex(dir, tmp); err != nil {
			t.Fatal(err)
		}
	}
	keep(r, 42)
	idx, err := loadDirIndex(dir, 42)
	if err != nil || len(idx) != len(want) {
		t.Fatalf("load: %d directories, %v; want %d", len(idx), err, len(want))
	}
	for k, p := range want {
		if !bytes.Equal(idx[k], p) {
			t.Fatalf("%+v: %q, want %q", k, idx[k], p)
		}
	}
	if idx, err := loadDirIndex(dir, 43); idx != nil || err != nil {
		t.Fatalf("another version's index: %d directories, %v; want none", len(idx), err)
	}
	b, err := os.ReadFile(filepath.Join(dir, dirIndexName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, dirIndexName), b[:len(b)-3], 0o600); err != nil {
		t.Fatal(err)
	}
	if idx, err := loadDirIndex(dir, 42); idx != nil || err == nil {
		t.Fatalf("a truncated index: %d directories, %v; want an error", len(idx), err)
	}
	// One that claims the most directories and holds none: refused
	// without making room for them.
	lie := append(append(append([]byte{}, dirIndexMagic...), binary.AppendUvarint(nil, 42)...), binary.AppendUvarint(nil, dirIndexMax)...)
	if err := os.WriteFile(filepath.Join(dir, dirIndexName), lie, 0o600); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	idx, err = loadDirIndex(dir, 42)
	runtime.ReadMemStats(&after)
	if idx != nil || err == nil || after.TotalAlloc-before.TotalAlloc > 1<<20 {
		t.Fatalf("an index claiming %d directories in %d bytes: %v, %d bytes allocated", dirIndexMax, len(lie), err, after.TotalAlloc-before.TotalAlloc)
	}
	over := &dirRecorder{}
	for i := range dirIndexMax + 1 {
		over.add(&tree.Node{Path: []byte("x"), Type: tree.TypeDir, Ino: uint64(i + 1)})
	}
	keep(over, 44)
	if _, err := os.Stat(filepath.Join(dir, dirIndexName)); !os.IsNotExist(err) || over.recs != nil {
		t.Fatalf("over the bound: the index is still there (%v), %d kept", err, len(over.recs))
	}
	if idx, err := loadDirIndex(dir, 44); idx != nil || err != nil {
		t.Fatalf("no index: %d directories, %v", len(idx), err)
	}
}

// A directory new at its path that the index places elsewhere is walked
// beside the previous listing there: its objects stand in for the missing
// ones, in tree order, and only for the same directory (device, inode,
// birth time); an index naming another directory is not followed.
func TestRenamedPrevious(t *testing.T) {
	dir := t.TempDir()
	old := []tree.Node{
		{Path: []byte("."), Type: tree.TypeDir, Ino: 1},
		{Path: []byte("a"), Type: tree.TypeDir, Dev: 3, Ino: 10, Btime: tree.Timespec{Sec: 9}},
		{Path: []byte("a/f"), Type: tree.TypeFile, Ino: 11},
		{Path: []byte("a/s"), Type: tree.TypeDir, Ino: 12},
		{Path: []byte("a/s/g"), Type: tree.TypeFile, Ino: 13},
		{Path: []byte("a.x"), Type: tree.TypeFile, Ino: 14},
		{Path: []byte("b"), Type: tree.TypeDir, Dev: 3, Ino: 20},
	}
	listing := filepath.Join(dir, "last.listing")
	f, err := os.Create(listing)
	if err != nil {
		t.Fatal(err)
	}
	zw := s2.NewWriter(f)
	tw, err := tree.NewWriter(zw)
	if err != nil {
		t.Fatal(err)
	}
	rec := &dirRecorder{}
	for i := range old {
		if err := tw.Write(&old[i]); err != nil {
			t.Fatal(err)
		}
		if old[i].Type == tree.TypeDir {
			rec.add(&old[i])
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	keep := func(r *dirRecorder) {
		t.Helper()
		tmp, err := r.write(dir, 5)
		if err != nil {
			t.Fatal(err)
		}
		if err := keepDirIndex(dir, tmp); err != nil {
			t.Fatal(err)
		}
	}
	keep(rec)
	w := &walker{prevPath: listing, prevDir: dir, prevTag: 5, log: zap.NewNop()}
	moved := tree.Node{Path: []byte("z/new"), Type: tree.TypeDir, Dev: 3, Ino: 10, Btime: tree.Timespec{Sec: 9}}
	if !w.startRenamed(&moved) {
		t.Fatal("a renamed directory was not found in the index")
	}
	for _, c := range []struct{ at, was string }{{"z/new", "a"}, {"z/new/f", "a/f"}, {"z/new/missing", ""}, {"z/new/s/g", "a/s/g"}, {"z/newer", ""}, {"z/other", ""}} {
		got := w.previousOf(nil, []byte(c.at))
		if c.was == "" && got != nil || c.was != "" && (got == nil || string(got.Path) != c.was) {
			t.Fatalf("previous of %s: %v, want %q", c.at, got, c.was)
		}
	}
	if p := w.previousOf(&old[5], []byte("z/new/f")); p != &old[5] {
		t.Fatalf("a previous object found by path was replaced")
	}
	w.endRenamed()
	for _, n := range []tree.Node{
		{Path: []byte("z/b2"), Type: tree.TypeDir, Dev: 3, Ino: 10, Btime: tree.Timespec{Sec: 8}}, // reborn inode
		{Path: []byte("a"), Type: tree.TypeDir, Dev: 3, Ino: 10, Btime: tree.Timespec{Sec: 9}},    // where it was
	} {
		if w.startRenamed(&n) {
			t.Fatalf("%s followed to %s", n.Path, w.ren.from)
		}
	}
	// An index whose directory the listing holds as another: not followed.
	rec = &dirRecorder{}
	rec.add(&tree.Node{Path: []byte("b"), Type: tree.TypeDir, Dev: 3, Ino: 30})
	keep(rec)
	w = &walker{prevPath: listing, prevDir: dir, prevTag: 5, log: zap.NewNop()}
	if w.startRenamed(&tree.Node{Path: []byte("c"), Type: tree.TypeDir, Dev: 3, Ino: 30}) {
		t.Fatal("followed an index entry the listing contradicts")
	}
}
