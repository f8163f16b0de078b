package hwtest

import (
	"bytes"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// writeTree writes n files of size bytes (random, so they do not
// deduplicate) in nested directories, plus a text file and a symlink.
func writeTree(t testing.TB, dir string, n, size int) {
	t.Helper()
	r := rand.New(rand.NewPCG(uint64(n), uint64(size)))
	for i := 0; i < n; i++ {
		p := filepath.Join(dir, "d"+string(rune('a'+i%5)), "f"+string(rune('a'+i%26))+string(rune('0'+i/26)))
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		b := make([]byte, size)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		must(t, os.WriteFile(p, b, 0o640))
	}
	must(t, os.WriteFile(filepath.Join(dir, "readme.txt"), []byte("protected by vaultnode\n"), 0o644))
	must(t, os.Symlink("readme.txt", filepath.Join(dir, "link")))
}

// compareTrees checks that got holds the same files, links and modes as want.
func compareTrees(t testing.TB, want, got string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		q := filepath.Join(got, rel)
		wi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		gi, err := os.Lstat(q)
		if err != nil {
			t.Errorf("restore lacks %s: %v", rel, err)
			return nil
		}
		if wi.Mode() != gi.Mode() {
			t.Errorf("%s: mode %v, want %v", rel, gi.Mode(), wi.Mode())
		}
		switch {
		case wi.Mode()&fs.ModeSymlink != 0:
			a, _ := os.Readlink(p)
			b, _ := os.Readlink(q)
			if a != b {
				t.Errorf("%s: link to %q, want %q", rel, b, a)
			}
		case wi.Mode().IsRegular():
			a, _ := os.ReadFile(p)
			b, _ := os.ReadFile(q)
			if !bytes.Equal(a, b) {
				t.Errorf("%s: content differs", rel)
			}
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("compared no files")
	}
	t.Logf("restore matches: %d files", n)
}
