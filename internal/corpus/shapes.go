package corpus

import (
	"archive/zip"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// Shapes of tree Generate makes. Every shape keeps a source tree under
// SourceDir laid out as SourceDir/MODULE/PACKAGE/..., so Mutate works on
// each; Mutate's other edits apply where their files exist.
const (
	// ShapeCurrent is the corpus of issue 2: source files, large
	// incompressible images partly duplicating each other, a log and two
	// sparse files.
	ShapeCurrent = "current"
	// ShapeSmallFiles is many small files (500,000 at Scale 1, or
	// Options.Files) of 16 B to 4 KiB, a hundred per directory, one in
	// twenty an exact copy of another.
	ShapeSmallFiles = "small-files"
	// ShapeMixed is shaped like a file server: a source tree, office
	// documents (zip containers of XML, already compressed) and PDFs,
	// photos and videos (random bytes behind real JPEG and MP4 headers),
	// VM disk images with holes, explicit zero blocks and mixed data, and
	// logs, some rotated and gzipped.
	ShapeMixed = "mixed"
)

// Shapes lists the shapes Generate knows.
var Shapes = []string{ShapeCurrent, ShapeSmallFiles, ShapeMixed}

func checkShape(s string) error {
	if s == "" {
		return nil
	}
	for _, k := range Shapes {
		if s == k {
			return nil
		}
	}
	return fmt.Errorf("generate corpus: unknown shape %q; use one of %v", s, Shapes)
}

const (
	smallShapeFilesAtScale1 = 500_000
	smallShapeFilesPerDir   = 100
	smallShapeDirsPerModule = 50
)

// plannedSmall is one file of ShapeSmallFiles, kept small since the scale
// run plans ten million of them: its directory is its index modulo the
// directory count and its mtime follows from its index; a copy keeps the
// module and package (srcDir) and the seed of the file it copies.
type plannedSmall struct {
	name   string
	seed   uint64
	srcDir int32
	size   int32
	kind   fileKind
}

// generateSmallFiles writes ShapeSmallFiles.
func generateSmallFiles(dir string, opts Options) (Stats, error) {
	n := opts.Files
	if n <= 0 {
		n = int(scaled(smallShapeFilesAtScale1, opts.Scale, 100))
	}
	r := rand.New(rand.NewPCG(opts.Seed, 20))
	nDirs := max(1, (n+smallShapeFilesPerDir-1)/smallShapeFilesPerDir)
	var dirs []string
	var links [][2]string
	for i := range nDirs {
		m := i / smallShapeDirsPerModule
		mod := filepath.Join(SourceDir, "mod-"+words[(m*7)%len(words)]+"-"+strconv.Itoa(m))
		if i%smallShapeDirsPerModule == 0 {
			links = append(links, [2]string{filepath.Join(mod, "latest"), words[(i*13)%len(words)] + strconv.Itoa(i)})
		}
		dirs = append(dirs, filepath.Join(mod, words[(i*13)%len(words)]+strconv.Itoa(i)))
	}
	files := make([]plannedSmall, 0, n)
	var st Stats
	for i := range n {
		if i > 10 && r.IntN(20) == 0 {
			f := files[r.IntN(i)]
			f.name = "copy_" + strconv.Itoa(i) + "_" + f.name
			files = append(files, f)
			st.Bytes += int64(f.size)
			continue
		}
		f := plannedSmall{
			srcDir: int32(i % nDirs),
			seed:   r.Uint64(),
			// Log-uniform from 16 B to 4 KiB: mean about 740 B.
			size: int32(math.Exp(math.Log(16) + r.Float64()*math.Log(256))),
		}
		name := words[r.IntN(len(words))] + "_" + strconv.Itoa(i)
		switch k := r.IntN(10); {
		case k < 6:
			f.kind = kindGo
			name += ".go"
		case k < 8:
			f.kind = kindMarkdown
			name += ".md"
		default:
			f.kind = kindJSON
			name += ".json"
		}
		f.name = name
		files = append(files, f)
		st.Bytes += int64(f.size)
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return Stats{}, fmt.Errorf("create corpus dir: %w", err)
		}
	}
	// A directory at a time, its files in plan order: the directory's
	// blocks and its files' inodes stay together (one file in each of
	// the directories in turn spread every directory's inodes over the
	// whole inode table, a tenth of the speed at ten million files), and
	// a file costs four system calls (openat, write, utimensat, close).
	var next atomic.Int64
	var g errgroup.Group
	for range runtime.NumCPU() * 2 {
		g.Go(func() error {
			w := smallWriter{}
			for {
				di := int(next.Add(1) - 1)
				if di >= nDirs {
					return nil
				}
				if err := w.writeDir(filepath.Join(dir, dirs[di]), dirs, files, di, nDirs); err != nil {
					return err
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return Stats{}, err
	}
	nd, err := finishTree(dir, dirs, links)
	if err != nil {
		return Stats{}, err
	}
	st.Files, st.SmallFiles, st.Dirs, st.Symlinks = len(files), len(files), nd, len(links)
	st.DataBytes = st.Bytes
	return st, nil
}

// smallWriter writes the files of ShapeSmallFiles, reusing its buffer.
type smallWriter struct {
	buf []byte
}

// writeDir writes the files of directory di (files di, di+nDirs, ...)
// into path, which exists.
func (w *smallWriter) writeDir(path string, dirs []string, files []plannedSmall, di, nDirs int) error {
	dfd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open corpus dir %s: %w", path, err)
	}
	defer unix.Close(dfd)
	for i := di; i < len(files); i += nDirs {
		f := &files[i]
		src := dirs[f.srcDir]
		sf := smallFile{
			kind:   f.kind,
			module: filepath.Base(filepath.Dir(src)),
			pkg:    "p" + strconv.Itoa(int(f.srcDir)),
			seed:   f.seed,
			size:   int(f.size),
		}
		w.buf = sf.appendContent(w.buf[:0])
		mt := BaseTime.Add(time.Duration(i+1) * 3 * time.Second)
		if err := writeFileAt(dfd, f.name, w.buf, 0o644, mt); err != nil {
			return fmt.Errorf("write corpus file %s: %w", filepath.Join(path, f.name), err)
		}
	}
	return nil
}

// writeFileAt creates name in directory dfd holding data, with mtime and
// atime mt, in four system calls.
func writeFileAt(dfd int, name string, data []byte, perm uint32, mt time.Time) error {
	var fd int
	var err error
	for {
		fd, err = unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, perm)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	for len(data) > 0 && err == nil {
		var n int
		n, err = unix.Write(fd, data)
		if err == unix.EINTR {
			err = nil
		}
		data = data[n:]
	}
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("write: %w", err)
	}
	ts := unix.NsecToTimespec(mt.UnixNano())
	times := [2]unix.Timespec{ts, ts}
	// utimensat(fd, NULL, ...) is futimens: the open file, no path.
	if _, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&times[0])), 0, 0, 0); e != 0 {
		unix.Close(fd)
		return fmt.Errorf("set time: %w", e)
	}
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// Directories of ShapeMixed besides SourceDir, SparseDir and LogFile's.
const (
	DocsDir   = "docs"
	PhotosDir = "photos"
	VideoDir  = "video"
)

// plainFile is a file of ShapeMixed whose content a function makes.
type plainFile struct {
	path  string
	mtime time.Time
	gen   func() ([]byte, error)
	size  int64 // set after writing
}

// generateMixed writes ShapeMixed.
func generateMixed(dir string, opts Options) (Stats, error) {
	src, dirs, links := planSmall(opts)
	r := rand.New(rand.NewPCG(opts.Seed, 30))
	var plain []*plainFile
	add := func(p string, mt time.Time, gen func() ([]byte, error)) {
		plain = append(plain, &plainFile{path: p, mtime: mt, gen: gen})
		dirs = append(dirs, filepath.Dir(p))
	}
	// Office documents and PDFs.
	nDocs := int(scaled(600, opts.Scale, 6))
	for i := range nDocs {
		seed := r.Uint64()
		textSize := int(math.Exp(math.Log(8<<10) + r.Float64()*math.Log(128))) // 8 KiB to 1 MiB of text
		sub := filepath.Join(DocsDir, words[r.IntN(len(words))]+"-"+strconv.Itoa(i%max(1, nDocs/40)))
		mt := BaseTime.Add(time.Duration(i) * 17 * time.Minute)
		switch k := r.IntN(4); k {
		case 0, 1, 2:
			ext := []string{".docx", ".xlsx", ".pptx"}[k]
			add(filepath.Join(sub, "report_"+strconv.Itoa(i)+ext), mt, func() ([]byte, error) { return officeDoc(seed, textSize) })
		default:
			add(filepath.Join(sub, "scan_"+strconv.Itoa(i)+".pdf"), mt, func() ([]byte, error) { return pdfDoc(seed, textSize), nil })
		}
	}
	// Photos: already compressed.
	nPhotos := int(scaled(150, opts.Scale, 4))
	for i := range nPhotos {
		stream := opts.Seed<<16 | 0x100 | uint64(i)
		size := int(scaled(int64(1<<20+r.IntN(4<<20)), opts.Scale, 16<<10))
		p := filepath.Join(PhotosDir, fmt.Sprintf("2023-%02d", 1+i%12), fmt.Sprintf("IMG_%04d.jpg", i))
		add(p, BaseTime.Add(time.Duration(i)*time.Hour), func() ([]byte, error) { return jpeg(stream, size), nil })
	}
	// Videos.
	nVideos := int(scaled(2, opts.Scale, 1))
	for i := range nVideos {
		stream := opts.Seed<<16 | 0x200 | uint64(i)
		size := int(scaled(150<<20, opts.Scale, 256<<10))
		add(filepath.Join(VideoDir, fmt.Sprintf("meeting-%d.mp4", i)), BaseTime.Add(time.Duration(i)*24*time.Hour),
			func() ([]byte, error) { return mp4(stream, size), nil })
	}
	// Rotated, gzipped logs.
	nRotated := 8
	for i := range nRotated {
		size := int(scaled(5<<20, opts.Scale, 16<<10))
		seed := opts.Seed<<8 | uint64(i)
		add(filepath.Join(filepath.Dir(LogFile), fmt.Sprintf("app.log.%d.gz", i+1)), BaseTime.Add(-time.Duration(i+1)*24*time.Hour),
			func() ([]byte, error) { return gzipLog(seed, size) })
	}
	dirs = append(dirs, filepath.Dir(LogFile))
	var vms []vmImage
	if !opts.NoSparse {
		vms = planVMs(opts)
		dirs = append(dirs, SparseDir)
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return Stats{}, fmt.Errorf("create corpus dir: %w", err)
		}
	}
	var g errgroup.Group
	g.SetLimit(runtime.NumCPU())
	logSize := scaled(60<<20, opts.Scale, 64<<10)
	g.Go(func() error {
		return writeLog(filepath.Join(dir, LogFile), opts.Seed, logSize, BaseTime.Add(-time.Hour))
	})
	for _, v := range vms {
		g.Go(func() error { return writeVM(dir, v) })
	}
	for _, f := range plain {
		g.Go(func() error {
			b, err := f.gen()
			if err != nil {
				return fmt.Errorf("generate %s: %w", f.path, err)
			}
			f.size = int64(len(b))
			p := filepath.Join(dir, f.path)
			if err := os.WriteFile(p, b, 0o644); err != nil {
				return fmt.Errorf("write corpus file: %w", err)
			}
			if err := os.Chtimes(p, f.mtime, f.mtime); err != nil {
				return fmt.Errorf("set file time: %w", err)
			}
			return nil
		})
	}
	for _, f := range src {
		g.Go(func() error { return writeSmall(dir, f) })
	}
	if err := g.Wait(); err != nil {
		return Stats{}, err
	}
	nd, err := finishTree(dir, dirs, links)
	if err != nil {
		return Stats{}, err
	}
	st := Stats{Files: len(src) + len(plain) + len(vms) + 1, SmallFiles: len(src), LargeFiles: nPhotos + nVideos,
		SparseFiles: len(vms), Dirs: nd, Symlinks: len(links)}
	for _, f := range src {
		st.Bytes += int64(f.size)
	}
	for _, f := range plain {
		st.Bytes += f.size
	}
	st.Bytes += logSize
	st.DataBytes = st.Bytes
	for _, v := range vms {
		st.Bytes += v.size
		st.DataBytes += v.data
	}
	return st, nil
}

// officeDoc is a zip container of XML text, like .docx: already deflated.
func officeDoc(seed uint64, textSize int) ([]byte, error) {
	g := textGen{r: rand.New(rand.NewPCG(seed, 31))}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	parts := []struct {
		name string
		size int
	}{{"[Content_Types].xml", 600}, {"_rels/.rels", 400}, {"word/document.xml", textSize}, {"word/styles.xml", textSize / 8}}
	for _, p := range parts {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: p.name, Method: zip.Deflate, Modified: BaseTime})
		if err != nil {
			return nil, err
		}
		b := []byte(`<?xml version="1.0" encoding="UTF-8" standalone="yes"?>` + "\n<w:document><w:body>")
		for len(b) < p.size {
			b = append(b, "<w:p><w:r><w:t>"...)
			b = g.sentence(b, 6+g.r.IntN(20))
			b = append(b, "</w:t></w:r></w:p>\n"...)
		}
		b = append(b, "</w:body></w:document>\n"...)
		if _, err := w.Write(b); err != nil {
			return nil, err
		}
	}
	// One embedded picture, stored as it is.
	w, err := zw.CreateHeader(&zip.FileHeader{Name: "word/media/image1.png", Method: zip.Store, Modified: BaseTime})
	if err != nil {
		return nil, err
	}
	img := make([]byte, textSize/4)
	_, _ = chacha(seed).Read(img)
	copy(img, "\x89PNG\r\n\x1a\n")
	if _, err := w.Write(img); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// pdfDoc is a PDF-like file: text objects and compressed (random) streams.
func pdfDoc(seed uint64, size int) []byte {
	g := textGen{r: rand.New(rand.NewPCG(seed, 32))}
	c := chacha(seed ^ 0x706466)
	b := []byte("%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
	for obj := 1; len(b) < size; obj++ {
		b = fmt.Appendf(b, "%d 0 obj\n", obj)
		if obj%3 == 0 {
			n := 4096 + g.r.IntN(32<<10)
			b = fmt.Appendf(b, "<< /Length %d /Filter /FlateDecode >>\nstream\n", n)
			s := make([]byte, n)
			_, _ = c.Read(s)
			b = append(b, s...)
			b = append(b, "\nendstream\n"...)
		} else {
			b = append(b, "<< /Type /Page >>\nBT /F1 12 Tf ("...)
			b = g.sentence(b, 30)
			b = append(b, ") Tj ET\n"...)
		}
		b = append(b, "endobj\n"...)
	}
	return append(b, "%%EOF\n"...)
}

// jpeg is random bytes (like entropy-coded image data) behind a JPEG
// start, an Exif APP1 segment and a quantization table, and a JPEG end.
func jpeg(stream uint64, size int) []byte {
	b := make([]byte, size)
	_, _ = chacha(stream).Read(b)
	h := []byte{0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x22}
	h = append(h, "Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08"...)
	h = append(h, make([]byte, 0x22-2-14)...)
	h = append(h, 0xFF, 0xDB, 0x00, 0x43, 0x00)
	for i := range 64 {
		h = append(h, byte(1+i/4))
	}
	h = append(h, 0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00)
	copy(b, h)
	b[len(b)-2], b[len(b)-1] = 0xFF, 0xD9
	return b
}

// mp4 is random bytes (like encoded video) in an MP4 mdat box after an
// ftyp box.
func mp4(stream uint64, size int) []byte {
	b := make([]byte, size)
	_, _ = chacha(stream).Read(b)
	h := []byte{0, 0, 0, 0x18}
	h = append(h, "ftypisom\x00\x00\x02\x00isomiso2"...)
	h = binary.BigEndian.AppendUint32(h, uint32(size-len(h)))
	h = append(h, "mdat"...)
	copy(b, h)
	return b
}

// gzipLog is log text of size bytes, gzipped, like a rotated log.
func gzipLog(seed uint64, size int) ([]byte, error) {
	g := textGen{r: rand.New(rand.NewPCG(seed, 33))}
	ms := BaseTime.UnixMilli()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.ModTime = BaseTime
	if _, err := zw.Write(g.logLines(nil, size, &ms)); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// vmImage is a sparse disk image: extents of random, text and explicitly
// written zero blocks, holes between them.
type vmImage struct {
	path    string
	size    int64
	extent  int64
	extents []int64
	data    int64 // bytes written (zero blocks included)
	stream  uint64
}

func planVMs(opts Options) []vmImage {
	size := scaled(2<<30, opts.Scale, 16<<20) &^ (1<<20 - 1)
	ext := scaled(1<<20, opts.Scale, 64<<10) &^ 4095
	var out []vmImage
	for i := range 2 {
		r := rand.New(rand.NewPCG(opts.Seed, 40+uint64(i)))
		v := vmImage{path: filepath.Join(SparseDir, "vm-disk-"+strconv.Itoa(i)+".img"), size: size, extent: ext,
			stream: opts.Seed<<8 | 0x40 | uint64(i)}
		// A dense start (boot sector, file system metadata), then
		// scattered extents: about 3% of the disk holds data.
		n := max(4, int(size/ext/32))
		step := size / int64(n)
		for k := range int64(n) {
			off := k * step
			if k > 0 {
				off += r.Int64N(max(1, step-ext)) &^ 4095
			}
			v.extents = append(v.extents, off)
		}
		v.data = int64(n) * ext
		out = append(out, v)
	}
	return out
}

func writeVM(root string, v vmImage) error {
	p := filepath.Join(root, v.path)
	f, err := os.Create(p)
	if err != nil {
		return fmt.Errorf("write vm image: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(v.size); err != nil {
		return fmt.Errorf("write vm image: %w", err)
	}
	c := chacha(v.stream)
	buf := make([]byte, v.extent)
	for i, off := range v.extents {
		switch i % 4 {
		case 0, 1: // binaries, compressed data
			_, _ = c.Read(buf)
		case 2: // text: configuration, logs
			g := textGen{r: rand.New(rand.NewPCG(v.stream, uint64(i)))}
			copy(buf, g.logLines(make([]byte, 0, len(buf)+4096), len(buf), new(int64)))
		default: // zero blocks written by the guest: data, not holes
			clear(buf)
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("write vm image: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write vm image: %w", err)
	}
	mt := BaseTime.Add(96 * time.Hour)
	if err := os.Chtimes(p, mt, mt); err != nil {
		return fmt.Errorf("set vm image time: %w", err)
	}
	return nil
}
