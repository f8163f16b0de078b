package corpus

import (
	"path/filepath"
	"testing"
)

// TestShapes generates every shape small, checks the tree matches its
// Stats, is the same for the same seed, and that Mutate changes it.
func TestShapes(t *testing.T) {
	for _, tc := range []Options{
		{Shape: ShapeSmallFiles, Files: 600, Scale: testScale},
		{Shape: ShapeMixed, Scale: testScale},
		{Shape: ShapeMixed, Scale: testScale, NoSparse: true},
		{Shape: ShapeCurrent, Scale: testScale, NoSparse: true},
	} {
		name := tc.Shape
		if tc.NoSparse {
			name += "-no-sparse"
		}
		t.Run(name, func(t *testing.T) {
			dir, st := generate(t, tc)
			m, err := Manifest(dir)
			if err != nil {
				t.Fatal(err)
			}
			var got Stats
			for _, e := range m {
				switch {
				case e.Mode.IsRegular():
					got.Files++
					got.Bytes += e.Size
				case e.Mode.IsDir():
					got.Dirs++
				default:
					got.Symlinks++
				}
			}
			want := Stats{Files: st.Files, Dirs: st.Dirs, Symlinks: st.Symlinks, Bytes: st.Bytes}
			if got != want {
				t.Errorf("tree %+v does not match Stats %+v", got, want)
			}
			if tc.Shape == ShapeSmallFiles && st.Files != tc.Files {
				t.Errorf("%d files, want %d", st.Files, tc.Files)
			}
			if tc.NoSparse && st.SparseFiles != 0 {
				t.Errorf("NoSparse gave %d sparse files", st.SparseFiles)
			}
			if tc.Shape == ShapeMixed && !tc.NoSparse && (st.SparseFiles == 0 || st.DataBytes >= st.Bytes) {
				t.Errorf("mixed shape without holes: %+v", st)
			}
			dir2, _ := generate(t, tc)
			h1, err1 := TreeHash(dir)
			h2, err2 := TreeHash(dir2)
			if err1 != nil || err2 != nil || h1 != h2 {
				t.Errorf("same options, different trees (%v, %v)", err1, err2)
			}
			ms, err := Mutate(dir, 3)
			if err != nil {
				t.Fatalf("Mutate: %v", err)
			}
			if ms.FilesEdited == 0 || ms.Added == 0 || ms.Deleted == 0 {
				t.Errorf("Mutate changed too little: %+v", ms)
			}
			if h3, _ := TreeHash(dir); h3 == h1 {
				t.Errorf("Mutate left the tree unchanged")
			}
			if _, err := Generate(filepath.Join(t.TempDir(), "x"), Options{Shape: "nope"}); err == nil {
				t.Errorf("unknown shape accepted")
			}
		})
	}
}

// TestSmallFilesTreeUnchanged pins the small-files tree of a seed: the
// benchmark's figures compare across sessions only while the generator
// makes the same names, contents, modes and times (the hash below is that
// of the generator that wrote one file in each directory in turn).
func TestSmallFilesTreeUnchanged(t *testing.T) {
	dir, _ := generate(t, Options{Shape: ShapeSmallFiles, Files: 1234, Seed: 1})
	h, err := TreeHash(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := "57db9ac069ac5f0cbcae789465775910107f55f8d19e04daa7f6be9f95ddda3e"; h != want {
		t.Errorf("small-files tree of seed 1 hashes %s, want %s", h, want)
	}
}
