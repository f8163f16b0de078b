package corpus

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const testScale = 0.01

func generate(t *testing.T, opts Options) (string, Stats) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "corpus")
	st, err := Generate(dir, opts)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	return dir, st
}

func TestGenerateDeterministic(t *testing.T) {
	tests := []struct {
		name     string
		a, b     Options
		wantSame bool
	}{
		{"same seed", Options{Seed: 7, Scale: testScale}, Options{Seed: 7, Scale: testScale}, true},
		{"default seed is 1", Options{Scale: testScale}, Options{Seed: 1, Scale: testScale}, true},
		{"other seed", Options{Seed: 7, Scale: testScale}, Options{Seed: 8, Scale: testScale}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			da, sa := generate(t, tt.a)
			db, sb := generate(t, tt.b)
			ha, err := TreeHash(da)
			if err != nil {
				t.Fatal(err)
			}
			hb, err := TreeHash(db)
			if err != nil {
				t.Fatal(err)
			}
			if (ha == hb) != tt.wantSame {
				t.Errorf("tree hashes %s and %s: same = %v, want %v", ha, hb, ha == hb, tt.wantSame)
			}
			if tt.wantSame {
				if diff := cmp.Diff(sa, sb); diff != "" {
					t.Errorf("stats differ (-a +b):\n%s", diff)
				}
			}
		})
	}
}

func TestGenerateShape(t *testing.T) {
	dir, st := generate(t, Options{Scale: testScale})
	m, err := Manifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files, links, dirs int
	var bytes int64
	for _, e := range m {
		switch {
		case e.Mode.IsRegular():
			files++
			bytes += e.Size
			if e.Mtime.Before(BaseTime.Add(-2 * 3600e9)) {
				t.Errorf("%s: mtime %v is not a fixed corpus time", e.Path, e.Mtime)
			}
		case e.Mode.IsDir():
			dirs++
		default:
			links++
		}
	}
	got := Stats{Files: files, Dirs: dirs, Symlinks: links, Bytes: bytes}
	want := Stats{Files: st.Files, Dirs: st.Dirs, Symlinks: st.Symlinks, Bytes: st.Bytes}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tree does not match Stats (-stats +tree):\n%s", diff)
	}
	if st.SmallFiles < 20 || st.LargeFiles != 6 || st.SparseFiles != 2 {
		t.Errorf("stats %+v: want >= 20 small, 6 large, 2 sparse files", st)
	}
	// Sparse files must really be sparse.
	for _, name := range []string{"db-0.img", "db-1.img"} {
		var s syscallStat
		if err := statBlocks(filepath.Join(dir, SparseDir, name), &s); err != nil {
			t.Fatal(err)
		}
		if s.allocated*4 > s.size {
			t.Errorf("%s: %d bytes allocated of %d: not sparse", name, s.allocated, s.size)
		}
	}
	// vm-3 holds half of vm-0 (partial duplication between images).
	a, err := os.ReadFile(filepath.Join(dir, ImageDir, "vm-0.img"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, ImageDir, "vm-3.img"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), string(a[len(a)/8:len(a)/8+len(a)/2])) {
		t.Errorf("vm-3.img does not contain half of vm-0.img")
	}
	// Source-like text is compressible: it has line structure and repeated words.
	src, err := os.ReadFile(filepath.Join(dir, LogFile))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(src), " component=") {
		t.Errorf("%s does not look like a log", LogFile)
	}
}

func TestMutate(t *testing.T) {
	opts := Options{Scale: 0.02}
	da, _ := generate(t, opts)
	db, _ := generate(t, opts)
	before, err := Manifest(da)
	if err != nil {
		t.Fatal(err)
	}
	sa, err := Mutate(da, 5)
	if err != nil {
		t.Fatalf("Mutate: %v", err)
	}
	sb, err := Mutate(db, 5)
	if err != nil {
		t.Fatalf("Mutate: %v", err)
	}
	if diff := cmp.Diff(sa, sb); diff != "" {
		t.Errorf("mutation stats differ for the same seed (-a +b):\n%s", diff)
	}
	ha, err := TreeHash(da)
	if err != nil {
		t.Fatal(err)
	}
	hb, err := TreeHash(db)
	if err != nil {
		t.Fatal(err)
	}
	if ha != hb {
		t.Errorf("same tree and seed mutate to different trees: %s, %s", ha, hb)
	}
	after, err := Manifest(da)
	if err != nil {
		t.Fatal(err)
	}
	if Hash(before) == Hash(after) {
		t.Fatalf("Mutate changed nothing")
	}
	if sa.FilesEdited < 1 || sa.Insertions != 3 || sa.Appends != 1 || sa.HoleWrites != 1 ||
		sa.Added < 1 || sa.Deleted != sa.Added || sa.DirsRenamed != 1 {
		t.Errorf("mutation stats %+v: want edits, 3 insertions, 1 append, 1 hole write, adds = deletes, 1 rename", sa)
	}
	if want := sa.FilesEdited + sa.Insertions + sa.Appends + sa.HoleWrites + sa.Added; sa.Edits != want {
		t.Errorf("Edits = %d, want %d", sa.Edits, want)
	}

	// Classify the differences: the byte count of new content must cover
	// what grew, and renamed files must be unchanged.
	old := map[string]Entry{}
	for _, e := range before {
		old[e.Path] = e
	}
	oldRenamed := strings.Split(sa.RenamedDir, " -> ")
	var grown int64
	var changed, added, renamedSame int
	for _, e := range after {
		if !e.Mode.IsRegular() {
			continue
		}
		p := e.Path
		if rest, ok := strings.CutPrefix(p, filepath.ToSlash(oldRenamed[1])+"/"); ok {
			o, had := old[filepath.ToSlash(oldRenamed[0])+"/"+rest]
			if had && o.Digest == e.Digest && o.Mtime.Equal(e.Mtime) {
				renamedSame++
				continue
			}
			p = filepath.ToSlash(oldRenamed[0]) + "/" + rest
		}
		o, had := old[p]
		switch {
		case !had:
			added++
			grown += e.Size
		case o.Digest != e.Digest:
			changed++
			if !e.Mtime.After(MutationTime) {
				t.Errorf("%s changed but its mtime %v was not moved past MutationTime", e.Path, e.Mtime)
			}
			grown += e.Size - o.Size
		}
	}
	if added != sa.Added {
		t.Errorf("found %d new files, stats say %d", added, sa.Added)
	}
	if changed != sa.FilesEdited+sa.Insertions+sa.Appends+sa.HoleWrites {
		t.Errorf("found %d changed files, stats say %d edits, %d insertions, %d appends, %d hole writes",
			changed, sa.FilesEdited, sa.Insertions, sa.Appends, sa.HoleWrites)
	}
	if renamedSame == 0 {
		t.Errorf("no unchanged file found in the renamed directory %s", sa.RenamedDir)
	}
	if grown > sa.BytesChanged || sa.BytesChanged <= 0 {
		t.Errorf("tree grew by %d bytes, BytesChanged = %d: want 0 < grown <= BytesChanged", grown, sa.BytesChanged)
	}

	// A second mutation with another seed works on the mutated tree.
	if _, err := Mutate(da, 6); err != nil {
		t.Fatalf("second Mutate: %v", err)
	}
}

func TestManifestSparseEqualsDense(t *testing.T) {
	dir := t.TempDir()
	sparse := filepath.Join(dir, "sparse")
	dense := filepath.Join(dir, "dense")
	f, err := os.Create(sparse)
	if err != nil {
		t.Fatal(err)
	}
	const size = 5<<20 + 123
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("data"), 3<<20+7); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b := make([]byte, size)
	copy(b[3<<20+7:], "data")
	if err := os.WriteFile(dense, b, 0o644); err != nil {
		t.Fatal(err)
	}
	ds, err := fileDigest(sparse)
	if err != nil {
		t.Fatal(err)
	}
	dd, err := fileDigest(dense)
	if err != nil {
		t.Fatal(err)
	}
	if ds != dd {
		t.Errorf("sparse and dense copies hash differently")
	}
	b[0] = 1
	if err := os.WriteFile(dense, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if dd, _ = fileDigest(dense); ds == dd {
		t.Errorf("different contents hash alike")
	}
}

// TestMeasure counts an existing tree's entries and tells its data from its
// holes, as a benchmark of a tree it did not generate reports them.
func TestMeasure(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "a", "one"), bytes.Repeat([]byte("x"), 10000), 0o644))
	must(os.WriteFile(filepath.Join(dir, "a", "b", "two"), []byte("hello"), 0o644))
	must(os.Symlink("one", filepath.Join(dir, "a", "link")))
	f, err := os.Create(filepath.Join(dir, "sparse"))
	must(err)
	_, err = f.WriteAt(bytes.Repeat([]byte("y"), 4096), 64<<20)
	must(err)
	must(f.Close())

	st, err := Measure(dir)
	must(err)
	want := Stats{Files: 3, Dirs: 2, Symlinks: 1, SparseFiles: 1, Bytes: 10000 + 5 + 64<<20 + 4096}
	got := st
	got.DataBytes = 0
	if got != want {
		t.Fatalf("Measure = %+v, want %+v (data aside)", st, want)
	}
	// The sparse file holds one block of data, the others all theirs.
	if st.DataBytes < 10000+5+4096 || st.DataBytes > 10000+5+4*4096 {
		t.Fatalf("Measure's data = %d bytes, want about %d", st.DataBytes, 10000+5+4096)
	}
	if _, err := Measure(filepath.Join(dir, "none")); err == nil {
		t.Fatal("Measure of a missing tree succeeded")
	}
}

// TestMutateTree changes a tree it did not generate: the same seed on two
// copies gives the same result, and the changes are those it reports.
func TestMutateTree(t *testing.T) {
	mk := func() string {
		dir := t.TempDir()
		for d := range 10 {
			sub := filepath.Join(dir, "d"+strconv.Itoa(d))
			if err := os.MkdirAll(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			for f := range 30 {
				b := bytes.Repeat([]byte("line "+strconv.Itoa(d*100+f)+"\n"), 50+f)
				p := filepath.Join(sub, "f"+strconv.Itoa(f))
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Chtimes(p, BaseTime, BaseTime); err != nil {
					t.Fatal(err)
				}
			}
		}
		return dir
	}
	a, b := mk(), mk()
	before, err := Manifest(a)
	if err != nil {
		t.Fatal(err)
	}
	sa, err := MutateTree(a, 7)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := MutateTree(b, 7)
	if err != nil {
		t.Fatal(err)
	}
	if sa != sb {
		t.Fatalf("two copies mutated differently: %+v and %+v", sa, sb)
	}
	// 300 files: 1 % is 3 edits, 300/120 rounds to 3 added and deleted.
	if sa.FilesEdited != 3 || sa.Added != 3 || sa.Deleted != 3 || sa.DirsRenamed != 1 || sa.Edits != 6 {
		t.Fatalf("stats %+v", sa)
	}
	ma, err := Manifest(a)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := Manifest(b)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(ma, mb); d != "" {
		t.Fatalf("two copies differ after the same mutation:\n%s", d)
	}
	// Every change is one the stats count: grown files, added, gone, and
	// the renamed directory's files under their new name.
	from, to, _ := strings.Cut(sa.RenamedDir, " -> ")
	old := map[string]Entry{}
	for _, e := range before {
		old[e.Path] = e
	}
	var grown, added, added2 int
	var growth int64
	for _, e := range ma {
		p := e.Path
		if rest, ok := strings.CutPrefix(p, to); ok {
			p = from + rest
		}
		o, ok := old[p]
		delete(old, p)
		switch {
		case !ok && strings.Contains(p, "added_7_"):
			added++
			added2 += int(e.Size)
		case !ok:
			t.Fatalf("%s appeared", e.Path)
		case e.Mode.IsRegular() && e.Size != o.Size:
			grown++
			growth += e.Size - o.Size
		case e.Mode.IsRegular() && e.Digest != o.Digest:
			t.Fatalf("%s changed but kept its size", e.Path)
		}
	}
	if grown != 3 || added != 3 || len(old) != 3 || growth+int64(added2) != sa.BytesChanged {
		t.Fatalf("grown %d (+%d B), added %d (%d B), gone %d; stats %+v", grown, growth, added, added2, len(old), sa)
	}
}

// TestTouch: every regular file gets MutationTime and keeps its content;
// nothing else changes.
func TestTouch(t *testing.T) {
	dir, _ := generate(t, Options{Scale: 0.01})
	before, err := Manifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := Touch(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	after, err := Manifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("%d entries after, %d before", len(after), len(before))
	}
	files := 0
	for i, e := range after {
		b := before[i]
		if e.Path != b.Path || e.Mode != b.Mode || e.Size != b.Size || e.Digest != b.Digest || e.Link != b.Link {
			t.Errorf("%s changed: %+v, was %+v", e.Path, e, b)
		}
		if e.Mode.IsRegular() {
			files++
			if !e.Mtime.Equal(MutationTime) {
				t.Errorf("%s: mtime %v, want %v", e.Path, e.Mtime, MutationTime)
			}
		}
	}
	if files == 0 || st.Touched != files || st.Edits != 0 || st.BytesChanged != 0 {
		t.Errorf("stats %+v for %d files: want all touched, no edits", st, files)
	}
}
