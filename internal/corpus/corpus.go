// Package corpus generates a deterministic tree of files for backup
// benchmarks and tests, and mutates it deterministically.
//
// At Scale 1 the tree holds about 1 GiB of data: thousands of small
// source-like files in nested directories (with a license header shared per
// module and a few vendored exact copies), six large incompressible images of
// which two partly duplicate others at unaligned offsets, a compressible log
// of about 100 MiB, and two sparse files of 4 GiB apparent size holding a few
// MiB of data. The same Seed and Scale always give the same tree: same names,
// contents, modes and modification times.
package corpus

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// Options chooses the corpus. The zero value is the default corpus.
type Options struct {
	// Seed selects the content; 0 means 1.
	Seed uint64
	// Scale multiplies file counts and sizes; 0 means 1 (about 1 GiB).
	// Tests use 0.01 or less.
	Scale float64
	// Shape chooses the kind of tree (shapes.go); "" is ShapeCurrent.
	Shape string
	// Files is the number of files of ShapeSmallFiles; 0 means 500,000
	// times Scale. Other shapes ignore it.
	Files int
	// NoSparse leaves the sparse files out, so holes do not decide a
	// comparison.
	NoSparse bool
}

// Stats describes a generated tree.
type Stats struct {
	Files       int   // regular files
	Dirs        int   // directories, the root excluded
	Symlinks    int   // symbolic links
	SmallFiles  int   // source-like files (vendored copies included)
	LargeFiles  int   // incompressible images
	SparseFiles int   // sparse files
	Bytes       int64 // sum of apparent file sizes
	DataBytes   int64 // bytes of data written (holes excluded)
}

// BaseTime is the modification time of the generated tree; file i gets
// BaseTime plus i times 37 seconds.
var BaseTime = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

const (
	smallFilesAtScale1 = 6000
	blobSizeAtScale1   = 128 << 20
	logSizeAtScale1    = 100 << 20
	sparseSizeAtScale1 = 4 << 30
	sparseExtents      = 16
	sparseExtentScale1 = 256 << 10
	bufSize            = 4 << 20
)

// Layout names of the fixed parts of the tree.
const (
	SourceDir = "src"
	ImageDir  = "images"
	LogFile   = "logs/app.log"
	SparseDir = "sparse"
)

type fileKind int

const (
	kindGo fileKind = iota
	kindMarkdown
	kindJSON
)

// smallFile is one planned source-like file.
type smallFile struct {
	path   string
	kind   fileKind
	module string
	pkg    string
	seed   uint64
	size   int
	mtime  time.Time
	perm   os.FileMode
}

func (o Options) normalized() Options {
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.Scale <= 0 {
		o.Scale = 1
	}
	return o
}

func scaled(n int64, scale float64, minimum int64) int64 {
	v := int64(math.Round(float64(n) * scale))
	return max(v, minimum)
}

// Generate writes the corpus into dir, which must be missing or empty.
func Generate(dir string, opts Options) (Stats, error) {
	opts = opts.normalized()
	if err := checkShape(opts.Shape); err != nil {
		return Stats{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Stats{}, fmt.Errorf("create corpus dir: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return Stats{}, fmt.Errorf("read corpus dir: %w", err)
	}
	if len(ents) > 0 {
		return Stats{}, fmt.Errorf("generate corpus: %s is not empty; remove it or choose another directory", dir)
	}
	switch opts.Shape {
	case ShapeSmallFiles:
		return generateSmallFiles(dir, opts)
	case ShapeMixed:
		return generateMixed(dir, opts)
	}

	files, dirs, links := planSmall(opts)
	dirs = append(dirs, ImageDir, filepath.Dir(LogFile), SparseDir)
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return Stats{}, fmt.Errorf("create corpus dir: %w", err)
		}
	}
	var st Stats
	var g errgroup.Group
	g.SetLimit(runtime.NumCPU())
	// The long jobs first, so they overlap the many small ones.
	blobs := planBlobs(opts)
	g.Go(func() error { return writeBlobs(dir, blobs) })
	logSize := scaled(logSizeAtScale1, opts.Scale, 64<<10)
	g.Go(func() error {
		return writeLog(filepath.Join(dir, LogFile), opts.Seed, logSize, BaseTime.Add(-time.Hour))
	})
	var sparse []sparseFile
	if !opts.NoSparse {
		sparse = planSparse(opts)
	}
	for _, s := range sparse {
		g.Go(func() error { return writeSparse(dir, s) })
	}
	for _, f := range files {
		g.Go(func() error { return writeSmall(dir, f) })
	}
	if err := g.Wait(); err != nil {
		return Stats{}, err
	}
	nDirs, err := finishTree(dir, dirs, links)
	if err != nil {
		return Stats{}, err
	}

	st.SmallFiles = len(files)
	st.LargeFiles = len(blobs)
	st.SparseFiles = len(sparse)
	st.Files = len(files) + len(blobs) + len(sparse) + 1
	st.Symlinks = len(links)
	st.Dirs = nDirs
	for _, f := range files {
		st.Bytes += int64(f.size)
	}
	for _, b := range blobs {
		st.Bytes += b.size
	}
	st.Bytes += logSize
	st.DataBytes = st.Bytes
	for _, s := range sparse {
		st.Bytes += s.size
		st.DataBytes += int64(len(s.extents)) * s.extent
	}
	return st, nil
}

// finishTree makes the symbolic links and sets the times of dirs and their
// parents, last, since writing into a directory changes its mtime. It
// returns the number of directories, the root excluded.
func finishTree(dir string, dirs []string, links [][2]string) (int, error) {
	for _, l := range links {
		if err := os.Symlink(l[1], filepath.Join(dir, l[0])); err != nil {
			return 0, fmt.Errorf("create symlink: %w", err)
		}
	}
	seen := map[string]bool{}
	for _, d := range dirs {
		for p := d; p != "." && !seen[p]; p = filepath.Dir(p) {
			seen[p] = true
		}
	}
	for d := range seen {
		if err := os.Chtimes(filepath.Join(dir, d), BaseTime, BaseTime); err != nil {
			return 0, fmt.Errorf("set dir time: %w", err)
		}
	}
	return len(seen), nil
}

// planSmall lays out the source tree: its files, directories and symlinks
// ([2]string{path, target}). Sizes are exact: a file is cut to its planned size.
func planSmall(opts Options) ([]smallFile, []string, [][2]string) {
	r := rand.New(rand.NewPCG(opts.Seed, 1))
	n := int(scaled(smallFilesAtScale1, opts.Scale, 20))
	modules := max(1, n/600)
	pkgsPer := max(1, n/modules/20)
	var dirs, pkgDirs []string
	var links [][2]string
	modNames := make([]string, modules)
	for m := range modules {
		modNames[m] = "mod-" + words[r.IntN(len(words))] + "-" + strconv.Itoa(m)
		modDir := filepath.Join(SourceDir, modNames[m])
		var firstPkg string
		for p := range pkgsPer {
			pkg := words[r.IntN(len(words))] + strconv.Itoa(p)
			if p == 0 {
				firstPkg = pkg
			}
			d := filepath.Join(modDir, pkg)
			dirs = append(dirs, d)
			pkgDirs = append(pkgDirs, d)
			if r.IntN(10) < 3 {
				d = filepath.Join(d, "internal", words[r.IntN(len(words))])
				dirs = append(dirs, d)
				pkgDirs = append(pkgDirs, d)
				if r.IntN(3) == 0 {
					d = filepath.Join(d, "testdata")
					dirs = append(dirs, d)
					pkgDirs = append(pkgDirs, d)
				}
			}
		}
		links = append(links, [2]string{filepath.Join(modDir, "latest"), firstPkg})
	}
	files := make([]smallFile, 0, n)
	var mtimeIdx int
	nextMtime := func() time.Time {
		mtimeIdx++
		return BaseTime.Add(time.Duration(mtimeIdx) * 37 * time.Second)
	}
	for len(files) < n {
		i := len(files)
		// One in twenty files is a vendored exact copy of an earlier one.
		if i > 10 && r.IntN(20) == 0 {
			src := files[r.IntN(i)]
			mod := strings.Split(src.path, string(filepath.Separator))[1]
			d := filepath.Join(SourceDir, mod, "vendor", "v"+strconv.Itoa(i))
			dirs = append(dirs, d)
			f := src
			f.path = filepath.Join(d, filepath.Base(src.path))
			f.mtime = nextMtime()
			files = append(files, f)
			continue
		}
		d := pkgDirs[r.IntN(len(pkgDirs))]
		parts := strings.Split(d, string(filepath.Separator))
		f := smallFile{
			module: parts[1],
			pkg:    strings.ReplaceAll(parts[len(parts)-1], "-", ""),
			seed:   r.Uint64(),
			mtime:  nextMtime(),
			perm:   0o644,
		}
		// Log-uniform sizes from 256 B to 128 KiB (mean about 21 KiB), and
		// one in two hundred files between 256 KiB and 2 MiB.
		if r.IntN(200) == 0 {
			f.size = 256<<10 + r.IntN(1792<<10)
		} else {
			f.size = int(math.Exp(math.Log(256) + r.Float64()*math.Log(512)))
		}
		name := words[r.IntN(len(words))] + "_" + words[r.IntN(len(words))] + "_" + strconv.Itoa(i)
		switch k := r.IntN(10); {
		case k < 8:
			f.kind = kindGo
			name += ".go"
		case k < 9:
			f.kind = kindMarkdown
			name += ".md"
		default:
			f.kind = kindJSON
			name += ".json"
		}
		f.path = filepath.Join(d, name)
		files = append(files, f)
	}
	return files, dirs, links
}

func (f smallFile) content() []byte {
	return f.appendContent(make([]byte, 0, f.size+4096))
}

// appendContent appends the file's content to b[:0]'s array (b must be
// empty) and returns it.
func (f smallFile) appendContent(b []byte) []byte {
	g := textGen{r: rand.New(rand.NewPCG(f.seed, 2))}
	switch f.kind {
	case kindGo:
		b = g.goFile(b, f.module, f.pkg, f.size)
	case kindMarkdown:
		b = g.mdFile(b, f.module, f.size)
	default:
		b = g.jsonFile(b, f.size)
	}
	return b[:f.size]
}

func writeSmall(root string, f smallFile) error {
	p := filepath.Join(root, f.path)
	if err := os.WriteFile(p, f.content(), f.perm); err != nil {
		return fmt.Errorf("write corpus file: %w", err)
	}
	if err := os.Chtimes(p, f.mtime, f.mtime); err != nil {
		return fmt.Errorf("set file time: %w", err)
	}
	return nil
}

// segment of a planned blob: random bytes from stream, or a copy of another
// blob's range.
type segment struct {
	length int64
	stream uint64 // random stream id when from == ""
	from   string // path of an earlier blob to copy from
	offset int64  // offset in from
}

type blob struct {
	path     string
	size     int64
	segments []segment
	mtime    time.Time
}

func planBlobs(opts Options) []blob {
	b := scaled(blobSizeAtScale1, opts.Scale, 64<<10)
	img := func(i int) string { return filepath.Join(ImageDir, "vm-"+strconv.Itoa(i)+".img") }
	rnd := func(stream uint64, n int64) segment {
		return segment{length: n, stream: opts.Seed<<8 | stream}
	}
	cp := func(from int, off, n int64) segment { return segment{length: n, from: img(from), offset: off} }
	pre3 := b/10 + 12345%(b/10)
	pre5 := 77777 % (b / 10)
	blobs := []blob{
		{segments: []segment{rnd(0, b)}},
		{segments: []segment{rnd(1, b)}},
		{segments: []segment{rnd(2, b)}},
		// vm-3 holds half of vm-0 at an unaligned offset.
		{segments: []segment{rnd(3, pre3), cp(0, b/8, b/2), rnd(4, b-pre3-b/2)}},
		{segments: []segment{rnd(5, b)}},
		// vm-5 holds the first 3/8 of vm-1 and a quarter of vm-2.
		{segments: []segment{rnd(6, pre5), cp(1, 0, b*3/8), rnd(7, b-pre5-b*3/8-b/4), cp(2, b/2, b/4)}},
	}
	for i := range blobs {
		blobs[i].path = img(i)
		blobs[i].mtime = BaseTime.Add(time.Duration(i) * time.Hour)
		for _, s := range blobs[i].segments {
			blobs[i].size += s.length
		}
	}
	return blobs
}

// chacha returns a fast random byte stream for (seed, stream).
func chacha(stream uint64) *rand.ChaCha8 {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], stream)
	binary.LittleEndian.PutUint64(key[8:], 0x636f72707573) // "corpus"
	return rand.NewChaCha8(key)
}

func writeBlobs(root string, blobs []blob) error {
	buf := make([]byte, bufSize)
	for _, b := range blobs {
		if err := writeBlob(root, b, buf); err != nil {
			return fmt.Errorf("write image %s: %w", b.path, err)
		}
	}
	return nil
}

func writeBlob(root string, b blob, buf []byte) error {
	f, err := os.Create(filepath.Join(root, b.path))
	if err != nil {
		return err
	}
	defer f.Close()
	for _, s := range b.segments {
		if s.from == "" {
			c := chacha(s.stream)
			for left := s.length; left > 0; {
				n := min(left, int64(len(buf)))
				_, _ = c.Read(buf[:n])
				if _, err := f.Write(buf[:n]); err != nil {
					return err
				}
				left -= n
			}
			continue
		}
		src, err := os.Open(filepath.Join(root, s.from))
		if err != nil {
			return err
		}
		_, err = io.Copy(f, io.NewSectionReader(src, s.offset, s.length))
		src.Close()
		if err != nil {
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Chtimes(filepath.Join(root, b.path), b.mtime, b.mtime)
}

func writeLog(path string, seed uint64, size int64, start time.Time) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write log: %w", err)
	}
	defer f.Close()
	g := textGen{r: rand.New(rand.NewPCG(seed, 3))}
	ms := start.UnixMilli()
	buf := make([]byte, 0, bufSize+4096)
	for left := size; left > 0; {
		buf = g.logLines(buf[:0], bufSize, &ms)
		n := min(left, int64(len(buf)))
		if _, err := f.Write(buf[:n]); err != nil {
			return fmt.Errorf("write log: %w", err)
		}
		left -= n
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write log: %w", err)
	}
	mt := BaseTime.Add(48 * time.Hour)
	if err := os.Chtimes(path, mt, mt); err != nil {
		return fmt.Errorf("set log time: %w", err)
	}
	return nil
}

type sparseFile struct {
	path    string
	size    int64
	extent  int64
	extents []int64 // offsets of data extents
	stream  uint64
}

func planSparse(opts Options) []sparseFile {
	size := scaled(sparseSizeAtScale1, opts.Scale, 16<<20) &^ (1<<20 - 1)
	ext := scaled(sparseExtentScale1, opts.Scale, 4096) &^ 4095
	var out []sparseFile
	for i := range 2 {
		r := rand.New(rand.NewPCG(opts.Seed, 10+uint64(i)))
		s := sparseFile{
			path:   filepath.Join(SparseDir, "db-"+strconv.Itoa(i)+".img"),
			size:   size,
			extent: ext,
			stream: opts.Seed<<8 | 0x80 | uint64(i),
		}
		step := size / sparseExtents
		for k := range int64(sparseExtents) {
			jitter := r.Int64N(max(1, step-ext)) &^ 4095
			s.extents = append(s.extents, k*step+jitter)
		}
		out = append(out, s)
	}
	return out
}

func writeSparse(root string, s sparseFile) error {
	p := filepath.Join(root, s.path)
	f, err := os.Create(p)
	if err != nil {
		return fmt.Errorf("write sparse file: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(s.size); err != nil {
		return fmt.Errorf("write sparse file: %w", err)
	}
	c := chacha(s.stream)
	buf := make([]byte, s.extent)
	for i, off := range s.extents {
		_, _ = c.Read(buf)
		if i%2 == 1 {
			// Half the extents look like records: compressible.
			g := textGen{r: rand.New(rand.NewPCG(s.stream, uint64(i)))}
			copy(buf, g.jsonFile(make([]byte, 0, len(buf)+4096), len(buf)))
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("write sparse file: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write sparse file: %w", err)
	}
	mt := BaseTime.Add(72 * time.Hour)
	if err := os.Chtimes(p, mt, mt); err != nil {
		return fmt.Errorf("set sparse file time: %w", err)
	}
	return nil
}
