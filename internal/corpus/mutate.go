package corpus

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// MutationStats says what Mutate changed.
type MutationStats struct {
	FilesEdited  int    // small files with a line replaced and a line inserted
	Insertions   int    // insertions of a few KiB in the middle of images
	Appends      int    // appends to the log
	HoleWrites   int    // writes into a hole of a sparse file
	Added        int    // new small files
	Deleted      int    // removed small files
	DirsRenamed  int    // renamed directories (their files unchanged)
	RenamedDir   string // the renamed directory, "old -> new", relative to the root
	BytesChanged int64  // bytes of new content: inserted, replaced, appended, added
	// Touched counts the files whose times alone Touch set.
	Touched int
	// Edits counts the places new content went: FilesEdited + Insertions +
	// Appends + HoleWrites + Added. A deduplicating backup should send about
	// BytesChanged plus one chunk per edit.
	Edits int
}

// MutationTime is the modification time Mutate gives what it touches (plus
// one second per change).
var MutationTime = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

// Touch sets the access and modification times of every regular file under
// dir to MutationTime and changes nothing else: what touch, chown -R or a
// copy that did not keep the times leave behind. Each file's ctime moves,
// so a backup reads every file again and finds its content unchanged.
func Touch(dir string, _ uint64) (MutationStats, error) {
	var st MutationStats
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if err := os.Chtimes(p, MutationTime, MutationTime); err != nil {
			return fmt.Errorf("touch: %w", err)
		}
		st.Touched++
		return nil
	})
	return st, err
}

// Mutate changes a generated corpus deterministically: edits in 1% of the
// small files, an insertion of a few KiB in the middle of three images, an
// append to the log, a write into a hole of a sparse file, then adds and
// deletes small files (50 each at scale 1, fewer in a smaller tree) and
// renames a package directory. The same tree and seed give the same result;
// a second call with another seed mutates again.
func Mutate(dir string, seed uint64) (MutationStats, error) {
	r := rand.New(rand.NewPCG(seed, 0x6d7574617465))
	var st MutationStats
	now := mutationClock()

	var files, pkgDirs []string
	src := filepath.Join(dir, SourceDir)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.Type().IsRegular():
			files = append(files, rel)
		case d.IsDir() && strings.Count(rel, string(filepath.Separator)) == 2:
			pkgDirs = append(pkgDirs, rel)
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("list corpus: %w", err)
	}
	if len(files) < 4 || len(pkgDirs) == 0 {
		return st, fmt.Errorf("mutate corpus: %s has no source tree; generate it with corpus.Generate first", dir)
	}

	// Edits in 1% of the small files.
	perm := r.Perm(len(files))
	nEdit := max(1, int(math.Round(float64(len(files))*0.01)))
	for _, i := range perm[:nEdit] {
		n, err := editText(filepath.Join(dir, files[i]), r, now())
		if err != nil {
			return st, err
		}
		st.FilesEdited++
		st.BytesChanged += n
	}

	// Insertions in the middle of every other image.
	imgs, err := filepath.Glob(filepath.Join(dir, ImageDir, "*.img"))
	if err != nil {
		return st, fmt.Errorf("list images: %w", err)
	}
	for i := 0; i < len(imgs); i += 2 {
		data := make([]byte, 4096+r.IntN(12288))
		fillRandom(data, r.Uint64())
		n, err := insertMiddle(imgs[i], data, r, now())
		if err != nil {
			return st, err
		}
		st.Insertions++
		st.BytesChanged += n
	}

	// The log grows by 1%.
	if n, err := appendLog(filepath.Join(dir, LogFile), seed, now()); err != nil {
		return st, err
	} else if n > 0 {
		st.Appends++
		st.BytesChanged += n
	}

	// A write into a hole of the first sparse file.
	sparse, err := filepath.Glob(filepath.Join(dir, SparseDir, "*.img"))
	if err != nil {
		return st, fmt.Errorf("list sparse files: %w", err)
	}
	if len(sparse) > 0 {
		data := make([]byte, 64<<10)
		fillRandom(data, r.Uint64())
		n, err := writeIntoHole(sparse[0], data, now())
		if err != nil {
			return st, err
		}
		if n > 0 {
			st.HoleWrites++
			st.BytesChanged += n
		}
	}

	// Adds and deletes.
	nAddDel := min(50, max(1, int(math.Round(float64(len(files))/120))))
	for i := range nAddDel {
		d := pkgDirs[r.IntN(len(pkgDirs))]
		f := smallFile{
			path:   filepath.Join(d, "added_"+strconv.FormatUint(seed, 10)+"_"+strconv.Itoa(i)+".go"),
			kind:   kindGo,
			module: strings.Split(d, string(filepath.Separator))[1],
			pkg:    "added",
			seed:   r.Uint64(),
			size:   int(math.Exp(math.Log(256) + r.Float64()*math.Log(512))),
			mtime:  now(),
			perm:   0o644,
		}
		if err := writeSmall(dir, f); err != nil {
			return st, err
		}
		st.Added++
		st.BytesChanged += int64(f.size)
	}
	for _, i := range perm[nEdit:] {
		if st.Deleted == nAddDel {
			break
		}
		if err := os.Remove(filepath.Join(dir, files[i])); err != nil {
			return st, fmt.Errorf("delete corpus file: %w", err)
		}
		st.Deleted++
	}

	// A directory rename: its files keep their content and times.
	from := pkgDirs[r.IntN(len(pkgDirs))]
	to := from + "_r" + strconv.FormatUint(seed, 10)
	if err := os.Rename(filepath.Join(dir, from), filepath.Join(dir, to)); err != nil {
		return st, fmt.Errorf("rename corpus dir: %w", err)
	}
	st.DirsRenamed = 1
	st.RenamedDir = from + " -> " + to

	st.Edits = st.FilesEdited + st.Insertions + st.Appends + st.HoleWrites + st.Added
	return st, nil
}

// mutationClock returns the times a mutation gives what it touches, in
// turn: MutationTime plus one second, two, and so on.
func mutationClock() func() time.Time {
	var tick int
	return func() time.Time {
		tick++
		return MutationTime.Add(time.Duration(tick) * time.Second)
	}
}

func fillRandom(b []byte, stream uint64) {
	_, _ = chacha(stream).Read(b)
}

// editText replaces the line at a quarter of the file and inserts a line in
// the middle; it returns the bytes of new content.
func editText(path string, r *rand.Rand, mtime time.Time) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("edit corpus file: %w", err)
	}
	g := textGen{r: r}
	repl := g.statement(nil, 1)
	ins := g.statement(nil, 1)
	lineAt := func(off int) (int, int) {
		start := bytes.LastIndexByte(b[:off], '\n') + 1
		end := bytes.IndexByte(b[off:], '\n')
		if end < 0 {
			return start, len(b)
		}
		return start, off + end + 1
	}
	var out []byte
	qs, qe := lineAt(len(b) / 4)
	ms, _ := lineAt(len(b) / 2)
	if ms < qe {
		ms = qe
	}
	out = append(out, b[:qs]...)
	out = append(out, repl...)
	out = append(out, b[qe:ms]...)
	out = append(out, ins...)
	out = append(out, b[ms:]...)
	if err := os.WriteFile(path, out, 0o644); err != nil {
		return 0, fmt.Errorf("edit corpus file: %w", err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		return 0, fmt.Errorf("edit corpus file: %w", err)
	}
	return int64(len(repl) + len(ins)), nil
}

// insertMiddle inserts data near the middle of a file, in place.
func insertMiddle(path string, data []byte, r *rand.Rand, mtime time.Time) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("insert into image: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("insert into image: %w", err)
	}
	size := fi.Size()
	off := size/2 - size/10 + r.Int64N(max(1, size/5))
	buf := make([]byte, bufSize)
	ins := int64(len(data))
	for pos := size; pos > off; {
		n := min(int64(len(buf)), pos-off)
		pos -= n
		if _, err := f.ReadAt(buf[:n], pos); err != nil {
			return 0, fmt.Errorf("insert into image: %w", err)
		}
		if _, err := f.WriteAt(buf[:n], pos+ins); err != nil {
			return 0, fmt.Errorf("insert into image: %w", err)
		}
	}
	if _, err := f.WriteAt(data, off); err != nil {
		return 0, fmt.Errorf("insert into image: %w", err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("insert into image: %w", err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		return 0, fmt.Errorf("insert into image: %w", err)
	}
	return ins, nil
}

func appendLog(path string, seed uint64, mtime time.Time) (int64, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("append to log: %w", err)
	}
	g := textGen{r: rand.New(rand.NewPCG(seed, 4))}
	ms := MutationTime.UnixMilli()
	b := g.logLines(nil, int(max(4096, fi.Size()/100)), &ms)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return 0, fmt.Errorf("append to log: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		return 0, fmt.Errorf("append to log: %w", err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("append to log: %w", err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		return 0, fmt.Errorf("append to log: %w", err)
	}
	return int64(len(b)), nil
}

// seekHole is lseek's SEEK_HOLE.
const seekHole = 4

// writeIntoHole writes data in the middle of the first hole past a third of
// the file that is big enough; it writes nothing when there is none.
func writeIntoHole(path string, data []byte, mtime time.Time) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("write into sparse file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("write into sparse file: %w", err)
	}
	size := fi.Size()
	need := int64(len(data)) + 8192
	for pos := size / 3 &^ 4095; pos < size; {
		h, err := f.Seek(pos, seekHole)
		if err != nil || h >= size {
			break
		}
		d, err := f.Seek(h, seekData)
		if errors.Is(err, syscall.ENXIO) {
			d = size
		} else if err != nil {
			return 0, fmt.Errorf("write into sparse file: %w", err)
		}
		if d-h >= need {
			off := (h + (d-h)/2) &^ 4095
			if _, err := f.WriteAt(data, off); err != nil {
				return 0, fmt.Errorf("write into sparse file: %w", err)
			}
			if err := f.Close(); err != nil {
				return 0, fmt.Errorf("write into sparse file: %w", err)
			}
			if err := os.Chtimes(path, mtime, mtime); err != nil {
				return 0, fmt.Errorf("write into sparse file: %w", err)
			}
			return int64(len(data)), nil
		}
		pos = d
	}
	return 0, nil
}

// MutateTree changes any tree, a copy the caller may change, as Mutate
// changes a generated one but without knowing its layout, so that an
// incremental backup can be measured on data the generator does not make:
//   - an insertion of 64 bytes to 4 KiB of random bytes at a random place
//     in the middle fifth of 1 % of the regular files (at least one),
//     shifting what follows, as an edit does;
//   - new files of text (one for every 120 files, 1 to 50) in random
//     directories, and as many files deleted (never an edited one);
//   - one directory renamed, its files unchanged.
//
// Files are chosen by seed among the tree's regular files in walk order, so
// the same tree and seed give the same result. Empty files, and files or
// directories this process may not change, are passed over.
func MutateTree(dir string, seed uint64) (MutationStats, error) {
	r := rand.New(rand.NewPCG(seed, 0x74726565))
	var st MutationStats
	now := mutationClock()
	var files, dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.Type().IsRegular():
			files = append(files, rel)
		case d.IsDir():
			dirs = append(dirs, rel)
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("mutate tree: %w", err)
	}
	if len(files) < 2 || len(dirs) == 0 {
		return st, fmt.Errorf("mutate tree: %s needs at least two files and a directory", dir)
	}

	perm := r.Perm(len(files))
	nEdit := max(1, int(math.Round(float64(len(files))*0.01)))
	edited := map[int]bool{}
	for _, i := range perm {
		if len(edited) == nEdit {
			break
		}
		p := filepath.Join(dir, files[i])
		if fi, err := os.Lstat(p); err != nil || fi.Size() == 0 {
			continue
		}
		data := make([]byte, 64+r.IntN(4033))
		fillRandom(data, r.Uint64())
		n, err := insertMiddle(p, data, r, now())
		if errors.Is(err, fs.ErrPermission) {
			continue
		}
		if err != nil {
			return st, err
		}
		edited[i] = true
		st.FilesEdited++
		st.BytesChanged += n
	}

	nAddDel := min(50, max(1, int(math.Round(float64(len(files))/120))))
	g := textGen{r: r}
	for i := range nAddDel {
		b := g.sentence(nil, 8)
		for want := 256 + r.IntN(16<<10); len(b) < want; {
			b = g.sentence(b, 12)
		}
		p := filepath.Join(dir, dirs[r.IntN(len(dirs))], "added_"+strconv.FormatUint(seed, 10)+"_"+strconv.Itoa(i)+".txt")
		err := os.WriteFile(p, b, 0o644)
		if errors.Is(err, fs.ErrPermission) {
			continue
		}
		if err != nil {
			return st, fmt.Errorf("mutate tree: %w", err)
		}
		t := now()
		if err := os.Chtimes(p, t, t); err != nil {
			return st, fmt.Errorf("mutate tree: %w", err)
		}
		st.Added++
		st.BytesChanged += int64(len(b))
	}
	for _, i := range perm {
		if st.Deleted == nAddDel {
			break
		}
		if edited[i] {
			continue
		}
		err := os.Remove(filepath.Join(dir, files[i]))
		if errors.Is(err, fs.ErrPermission) {
			continue
		}
		if err != nil {
			return st, fmt.Errorf("mutate tree: %w", err)
		}
		st.Deleted++
	}

	for _, k := range r.Perm(len(dirs)) {
		from := dirs[k]
		to := from + "_r" + strconv.FormatUint(seed, 10)
		err := os.Rename(filepath.Join(dir, from), filepath.Join(dir, to))
		if errors.Is(err, fs.ErrPermission) {
			continue
		}
		if err != nil {
			return st, fmt.Errorf("mutate tree: rename a directory: %w", err)
		}
		st.DirsRenamed = 1
		st.RenamedDir = from + " -> " + to
		break
	}
	st.Edits = st.FilesEdited + st.Added
	return st, nil
}
