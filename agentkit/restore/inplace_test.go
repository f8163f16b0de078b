package restore

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/chunker"
	"vaultnode/internal/loopfs"
	"vaultnode/internal/testtree"
	"vaultnode/internal/tree"
)

// fetched counts the chunks of n the source served.
func (c *idCountingSource) fetched(n tree.Node) int {
	k := 0
	for _, ch := range n.Chunks {
		k += c.served[ch.ID]
	}
	return k
}

// mustRestore restores nodes into h's target and requires no problem.
func (h *hostile) mustRestore(o Options, nodes ...tree.Node) *Result {
	h.t.Helper()
	res, err := h.restore(o, nodes...)
	if err != nil {
		h.t.Fatal(err)
	}
	if len(res.Problems) > 0 {
		h.t.Fatalf("problems: %q", res.Problems)
	}
	return res
}

// requireBytes requires the file p to hold want, saying where it differs.
func requireBytes(t *testing.T, p string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil {
		t.Errorf("%s: %v", p, err)
		return
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		t.Errorf("%s: %d bytes, want %d; they differ from byte %d", p, len(got), len(want), i)
	}
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(p, &st))
	return st.Ino
}

// A restore with -existing overwrite reads the files at the target first:
// a file holding the version's content is kept (same inode, metadata set,
// nothing downloaded); one that holds part of it gets a new file with
// those parts copied and only the rest downloaded; whatever the file
// there, the result is the version's content and metadata.
func TestOverwriteReusesWhatIsThere(t *testing.T) { forEachNaming(t, testOverwriteReusesWhatIsThere) }

func testOverwriteReusesWhatIsThere(t *testing.T) {
	h := newHostile(t)
	src := &idCountingSource{memSource: h.src, served: map[[32]byte]int{}}
	rng := rand.NewChaCha8([32]byte{3})
	random := func(n int) []byte {
		b := make([]byte, n)
		rng.Read(b)
		return b
	}
	const chunk = 4096
	type tc struct {
		name    string
		data    []byte // the version's content
		there   []byte // the file at the target
		mode    uint32 // of the file at the target
		kept    bool
		fetched int // chunks downloaded
	}
	// Every file its own content: no chunk repeats between them.
	same, writable, linked := random(50*chunk), random(50*chunk), random(20*chunk)
	edited := random(64 * chunk)
	editedThere := bytes.Clone(edited)
	editedThere[3*chunk+5] ^= 1
	editedThere[40*chunk] ^= 1
	large := random(3<<20 + 777) // its own job
	largeThere := bytes.Clone(large)
	largeThere[2<<20] ^= 0xff
	short, long, encrypted := random(10*chunk), random(10*chunk), random(10*chunk)
	cases := []tc{
		{name: "same", data: same, there: same, mode: 0o644, kept: true},
		{name: "empty", data: nil, there: nil, mode: 0o644, kept: true},
		{name: "edited", data: edited, there: editedThere, mode: 0o644, fetched: 2},
		{name: "large", data: large, there: largeThere, mode: 0o644, fetched: 1},
		// The same content, but others may write the file there: they
		// could have it open, so it is replaced (by a copy of itself).
		{name: "writable", data: writable, there: writable, mode: 0o646},
		// Truncated, and grown.
		{name: "short", data: short, there: short[:4*chunk+10], mode: 0o644, fetched: 6},
		{name: "long", data: long, there: append(bytes.Clone(long), 'x'), mode: 0o644},
		{name: "encrypted", data: encrypted, there: random(len(encrypted)), mode: 0o644, fetched: 10},
	}
	nodes := []tree.Node{dir("d")}
	must(t, os.Mkdir(filepath.Join(h.target, "d"), 0o755))
	at := func(name string) string { return filepath.Join(h.target, "d", name) }
	mtime := tree.Timespec{Sec: 1_600_000_000, Nsec: 7}
	for _, c := range cases {
		n := file("d/" + c.name)
		n.Size, n.Chunks, n.Mtime = int64(len(c.data)), h.src.put(c.data, chunk), mtime
		nodes = append(nodes, n)
		must(t, os.WriteFile(at(c.name), c.there, 0o600))
		must(t, os.Chmod(at(c.name), os.FileMode(c.mode)))
	}
	// Sparse: two extents of data; the file there has the data but junk
	// in the hole between them: not kept, and restored with the hole.
	sparseData := random(6 * chunk)
	sp := file("d/sparse")
	sp.Size, sp.Sparse, sp.Mtime = 1<<20, true, mtime
	sp.Extents = []tree.Extent{{Off: 0, Len: 3 * chunk}, {Off: 512 << 10, Len: 3 * chunk}}
	sp.Chunks = h.src.put(sparseData, chunk)
	full := make([]byte, sp.Size)
	copy(full, sparseData[:3*chunk])
	copy(full[512<<10:], sparseData[3*chunk:])
	junk := bytes.Clone(full)
	junk[300<<10] = 1
	must(t, os.WriteFile(at("sparse"), junk, 0o644))
	// The same sparse file, its hole a hole there: kept.
	sk := sp
	sk.Path = []byte("d/sparse-kept")
	writeSparse(t, at("sparse-kept"), &sk, sparseData)
	// Sparse, a chunk straddling its two extents (the data is chunked as
	// one stream), all of it there: kept.
	ss := file("d/sparse-straddling")
	ss.Size, ss.Sparse, ss.Mtime = 1<<20, true, mtime
	ss.Extents = []tree.Extent{{Off: 0, Len: 3*chunk + 100}, {Off: 512 << 10, Len: 3*chunk - 100}}
	straddling := random(6 * chunk)
	ss.Chunks = h.src.put(straddling, chunk)
	fullStraddling := make([]byte, ss.Size)
	copy(fullStraddling, straddling[:3*chunk+100])
	copy(fullStraddling[512<<10:], straddling[3*chunk+100:])
	writeSparse(t, at("sparse-straddling"), &ss, straddling)
	// A file with a second name: replaced, the other name keeps the old
	// inode.
	ln := file("d/linked")
	ln.Size, ln.Chunks, ln.Mtime = int64(len(linked)), h.src.put(linked, chunk), mtime
	must(t, os.WriteFile(at("linked"), linked, 0o644))
	must(t, os.Link(at("linked"), at("linked-elsewhere")))
	nodes = append(nodes, sp, sk, ss, ln)
	slices.SortFunc(nodes, func(a, b tree.Node) int { return tree.Compare(a.Path, b.Path) })

	before := map[string]uint64{}
	for _, n := range nodes[1:] {
		before[filepath.Base(string(n.Path))] = inode(t, filepath.Join(h.target, string(n.Path)))
	}
	o := h.options()
	o.Source, o.Existing = src, Overwrite
	res := h.mustRestore(o, nodes...)
	h.requireOutsideUnchanged()
	noTemporaries(t, h.target)
	byName := map[string]tree.Node{}
	for _, n := range nodes {
		byName[filepath.Base(string(n.Path))] = n
	}
	cases = append(cases,
		tc{name: "sparse", data: full, fetched: 0},
		tc{name: "sparse-kept", data: full, kept: true},
		tc{name: "sparse-straddling", data: fullStraddling, kept: true},
		tc{name: "linked", data: linked})
	var kept int64
	for _, c := range cases {
		n := byName[c.name]
		requireBytes(t, at(c.name), c.data)
		var st unix.Stat_t
		must(t, unix.Lstat(at(c.name), &st))
		if st.Mode&0o7777 != 0o644 || st.Mtim.Sec != 1_600_000_000 || st.Mtim.Nsec != 7 {
			t.Errorf("%s: mode %o, mtime %d.%d; want the version's", c.name, st.Mode&0o7777, st.Mtim.Sec, st.Mtim.Nsec)
		}
		if (st.Ino == before[c.name]) != c.kept {
			t.Errorf("%s: inode kept %v, want %v", c.name, st.Ino == before[c.name], c.kept)
		}
		if got := src.fetched(n); got != c.fetched {
			t.Errorf("%s: %d chunks downloaded, want %d", c.name, got, c.fetched)
		}
		if c.kept {
			kept++
		}
	}
	if st := res.Stats; st.Kept != kept || st.Files != int64(len(cases)) {
		t.Errorf("stats: %d files, %d kept; want %d, %d", st.Files, st.Kept, len(cases), kept)
	}
	requireBytes(t, at("linked-elsewhere"), linked)
	if inode(t, at("linked-elsewhere")) != before["linked"] {
		t.Errorf("linked-elsewhere is no longer the old inode")
	}
	// The hole is a hole again.
	fd, err := unix.Open(at("sparse"), unix.O_RDONLY, 0)
	must(t, err)
	off, err := unix.Seek(fd, 12*chunk, unix.SEEK_DATA)
	unix.Close(fd)
	if err != nil || off != 512<<10 {
		t.Errorf("sparse: data after its first extent at %d (%v), want the hole up to %d", off, err, 512<<10)
	}
}

// A fragmented sparse file at the target that holds the version is read
// along its extents, the kernel asked to read the next ones before the
// first is read (reuse, meta.ExtentAdvisor): one cold read after another
// took 1.6 s for a file of 20,000 extents of 4 KiB (docs/performance.md,
// item 87). It is kept: its chunks, which straddle extents, are checked
// piece by piece.
func TestOverwriteReadsSparseFileAlongItsExtents(t *testing.T) {
	h := newHostile(t)
	var sfs unix.Statfs_t
	must(t, unix.Statfs(h.target, &sfs))
	if sfs.Type == unix.TMPFS_MAGIC {
		t.Skip("SKIPPED LOUDLY: the target is on tmpfs, where every page is in the cache; the test wants a disk filesystem")
	}
	src := &idCountingSource{memSource: h.src, served: map[[32]byte]int{}}
	const extents, every, size = 256, 68 << 10, 4096
	data := make([]byte, extents*size)
	rand.NewChaCha8([32]byte{11}).Read(data)
	n := file("frag")
	n.Size, n.Sparse = extents*every, true
	for i := range extents {
		n.Extents = append(n.Extents, tree.Extent{Off: int64(i) * every, Len: size})
	}
	n.Chunks = h.src.put(data, 64<<10) // each chunk spans 16 extents
	p := filepath.Join(h.target, "frag")
	writeSparse(t, p, &n, data)
	f, err := os.Open(p)
	must(t, err)
	must(t, f.Sync())
	must(t, unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED))
	must(t, f.Close())
	if c, err := testtree.CachedPages(p); err != nil || c > 0 {
		t.Fatalf("%d pages cached before the restore (%v)", c, err)
	}
	pages := extents * size / os.Getpagesize()
	asked := false
	testHookSparseRead = func(path []byte, fd int) {
		asked = true
		// Nothing read yet: the pages arrive because they were asked for.
		if short, err := testtree.WaitCached([]string{p}, pages, 10*time.Second); err != nil || short != nil {
			t.Errorf("the extents not asked for before the first read: %v cached of %d (%v)", short, pages, err)
		}
	}
	defer func() { testHookSparseRead = nil }()
	ino := inode(t, p)
	o := h.options()
	o.Source, o.Existing = src, Overwrite
	res := h.mustRestore(o, n)
	if !asked {
		t.Errorf("the sparse file's reads were not asked for")
	}
	if inode(t, p) != ino || res.Stats.Kept != 1 || src.fetched(n) != 0 {
		t.Errorf("not kept: inode %v, %d kept, %d chunks downloaded", inode(t, p) == ino, res.Stats.Kept, src.fetched(n))
	}
	// Only the data was read: the holes were not filled with pages of
	// zeros by the kernel's read-ahead.
	if cached, err := testtree.CachedPages(p); err != nil || cached > 2*pages {
		t.Errorf("%d pages of the file cached after reading its %d pages of data (%v)", cached, pages, err)
	}
}

// writeSparse makes the file p hold the sparse node n, data being its
// chunks' bytes (the extents' data in order), holes as holes.
func writeSparse(t *testing.T, p string, n *tree.Node, data []byte) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	must(t, err)
	must(t, meta.WriteSparse(f, n, bytes.NewReader(data)))
	must(t, f.Close())
}

// A file changed after it was read, before its parts are copied: the copy
// checks what it reads, and downloads what no longer matches.
func TestOverwriteFileChangedMeanwhile(t *testing.T) {
	h := newHostile(t)
	src := &idCountingSource{memSource: h.src, served: map[[32]byte]int{}}
	data := make([]byte, 16*4096)
	rand.NewChaCha8([32]byte{4}).Read(data)
	n := h.content("f", "")
	n.Size, n.Chunks = int64(len(data)), h.src.put(data, 4096)
	there := bytes.Clone(data)
	there[100] = 'X'
	must(t, os.WriteFile(filepath.Join(h.target, "f"), there, 0o666)) // not kept: others may write
	testHookReused = func(p []byte) {
		if string(p) == "f" {
			b := bytes.Clone(there)
			// The first chunk found there changes: it is copied later
			// (those read after it were written into the new file as
			// they were read and checked).
			b[5000] = 'Y'
			must(t, os.WriteFile(filepath.Join(h.target, "f"), b, 0o666))
		}
	}
	defer func() { testHookReused = nil }()
	o := h.options()
	o.Source, o.Existing = src, Overwrite
	res := h.mustRestore(o, n)
	requireBytes(t, filepath.Join(h.target, "f"), data)
	// Chunk 0 differed when read, chunk 1 changed before its copy: both
	// downloaded, the other 14 taken from the file there.
	if got := src.fetched(n); got != 2 {
		t.Errorf("%d chunks downloaded, want 2", got)
	}
	if res.Stats.Reused != 14*4096 {
		t.Errorf("%d bytes reused from the file there, want %d", res.Stats.Reused, 14*4096)
	}
}

// A file whose access ACL lets another user write it is replaced, though
// its content and mode are the version's; the same ACL in the version
// keeps it.
func TestOverwriteKeepsNoForeignWriters(t *testing.T) {
	h := newHostile(t)
	data := "the version's content\n"
	aclFor := func(uid uint32) []byte {
		return meta.EncodeACL([]meta.ACLEntry{
			{Tag: 0x01, Perm: 6},          // user::rw-
			{Tag: 0x02, Perm: 6, ID: uid}, // user:UID:rw-
			{Tag: 0x04, Perm: 4},          // group::r--
			{Tag: 0x10, Perm: 6},          // mask::rw-
			{Tag: 0x20, Perm: 4},          // other::r--
		})
	}
	acl := aclFor(4242)
	foreign, other, mine := h.content("foreign", data), h.content("other", data), h.content("mine", data)
	// The mask shows as the group's bits: the mode is the same, only
	// the ACL differs (none, another user's, the same).
	foreign.Mode, other.Mode, mine.Mode = 0o664, 0o664, 0o664
	other.Xattrs = []tree.Xattr{{Name: meta.XattrACLAccess, Value: aclFor(4243)}}
	mine.Xattrs = []tree.Xattr{{Name: meta.XattrACLAccess, Value: acl}}
	ino := map[string]uint64{}
	for _, name := range []string{"foreign", "other", "mine"} {
		p := filepath.Join(h.target, name)
		must(t, os.WriteFile(p, []byte(data), 0o644))
		if err := unix.Setxattr(p, meta.XattrACLAccess, acl, 0); err != nil {
			t.Skipf("SKIPPED LOUDLY: no POSIX ACLs on %s: %v", h.target, err)
		}
		ino[name] = inode(t, p)
	}
	o := h.options()
	o.Existing = Overwrite
	h.mustRestore(o, foreign, mine, other)
	for _, name := range []string{"foreign", "other"} {
		if inode(t, filepath.Join(h.target, name)) == ino[name] {
			t.Errorf("%s: kept, though user 4242 may write it", name)
		}
	}
	if inode(t, filepath.Join(h.target, "mine")) != ino["mine"] {
		t.Errorf("mine: replaced, though its ACL is the version's")
	}
	for _, name := range []string{"foreign", "other", "mine"} {
		requireContent(t, filepath.Join(h.target, name), data)
	}
	if got, _ := unix.Getxattr(filepath.Join(h.target, "foreign"), meta.XattrACLAccess, make([]byte, 256)); got > 0 {
		t.Errorf("foreign still has an access ACL")
	}
}

// A file with bytes inserted in its middle since: the chunks after the
// insertion are found where they moved (the file cut as a backup cuts
// it), so only those around it are downloaded. Without the chunker's key
// everything after the insertion is.
func TestOverwriteFindsMovedContent(t *testing.T) {
	gearKey := [32]byte{9}
	gear, err := chunker.NewGear(gearKey)
	must(t, err)
	rng := rand.NewChaCha8([32]byte{5})
	data := make([]byte, 24<<20)
	rng.Read(data)
	for _, withKey := range []bool{true, false} {
		t.Run(fmt.Sprintf("gear-key-%v", withKey), func(t *testing.T) {
			h := newHostile(t)
			src := &idCountingSource{memSource: h.src, served: map[[32]byte]int{}}
			n := file("f")
			n.Size = int64(len(data))
			ck := chunker.New(gear, bytes.NewReader(data), nil)
			for {
				b, err := ck.Next()
				if err != nil {
					break
				}
				n.Chunks = append(n.Chunks, h.src.put(b, len(b))...)
			}
			if len(n.Chunks) < 10 {
				t.Fatalf("%d chunks; the test wants at least 10", len(n.Chunks))
			}
			mid := len(data) / 2
			there := append(append(bytes.Clone(data[:mid]), bytes.Repeat([]byte("inserted"), 1280)...), data[mid:]...)
			must(t, os.WriteFile(filepath.Join(h.target, "f"), there, 0o644))
			o := h.options()
			o.Source, o.Existing = src, Overwrite
			if withKey {
				o.GearKey = gearKey
			}
			before := readBytes(t)
			res := h.mustRestore(o, n)
			read := readBytes(t) - before
			var reused int64
			for _, c := range n.Chunks {
				if src.served[c.ID] == 0 {
					reused += int64(c.Len)
				}
			}
			if res.Stats.Reused != reused {
				t.Errorf("%d bytes reported taken from the file there; the chunks not downloaded hold %d", res.Stats.Reused, reused)
			}
			requireBytes(t, filepath.Join(h.target, "f"), data)
			got := src.fetched(n)
			t.Logf("%d of %d chunks downloaded, %.2f times the file's size read", got, len(n.Chunks), float64(read)/float64(len(data)))
			// The half before the insertion read in place and again as
			// copied, the rest once, cut and written as found: 1.5
			// times the file (2.5 before: the whole file in place first,
			// the rest once more as copied).
			if withKey && read > int64(len(data))*16/10 {
				t.Errorf("read %.2f times the file's size; want at most 1.6", float64(read)/float64(len(data)))
			}
			if withKey && got > 2 {
				t.Errorf("%d of %d chunks downloaded; want those around the insertion, at most 2", got, len(n.Chunks))
			}
			if !withKey && got < len(n.Chunks)/3 {
				t.Errorf("%d of %d chunks downloaded without the chunker's key; the test wants the moved ones downloaded", got, len(n.Chunks))
			}
		})
	}
}

// A file there far larger than the version's (16 GiB of holes after the
// version's first chunk) is searched for moved content only as far as
// content moved by the version's size could be: the restore reads a few
// MiB of it, not 16 GiB.
func TestOverwriteBoundsTheSearch(t *testing.T) {
	h := newHostile(t)
	data := make([]byte, 4*4096)
	rand.NewChaCha8([32]byte{6}).Read(data)
	n := file("f")
	n.Size, n.Chunks = int64(len(data)), h.src.put(data, 4096)
	p := filepath.Join(h.target, "f")
	must(t, os.WriteFile(p, data[:4096], 0o644))
	must(t, os.Truncate(p, 16<<30))
	o := h.options()
	o.Existing, o.GearKey = Overwrite, [32]byte{9}
	before := readBytes(t)
	h.mustRestore(o, n)
	if read := readBytes(t) - before; read > 256<<20 {
		t.Errorf("the restore read %d MiB", read>>20)
	}
	requireBytes(t, p, data)
}

// readBytes is how many bytes this process has read (/proc/self/io's
// rchar).
func readBytes(t *testing.T) int64 { t.Helper(); return procIO(t, "rchar") }

// writtenBytes is how many bytes this process has written (wchar).
func writtenBytes(t *testing.T) int64 { t.Helper(); return procIO(t, "wchar") }

// procIO is the count field of /proc/self/io.
func procIO(t *testing.T, field string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	must(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+": "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			must(t, err)
			return n
		}
	}
	t.Fatalf("no %s in /proc/self/io", field)
	return 0
}

// Files found at the target are opened readAhead at a time, and the
// kernel starts reading every one of them before the first is read
// (openAhead): their pages arrive without a read; the files past the
// window, and those the restore does not read (none there), are not
// touched.
func TestOverwriteReadsAhead(t *testing.T) {
	dir := t.TempDir()
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(dfd)
	d := &dirEntry{fd: dfd}
	const files, size = readAhead + 4, 64 << 10
	rng := rand.NewChaCha8([32]byte{5})
	var jobs []fileJob
	var there []string
	for i := range files {
		name := fmt.Sprintf("f%02d", i)
		data := make([]byte, size)
		rng.Read(data)
		p := filepath.Join(dir, name)
		must(t, os.WriteFile(p, data, 0o600))
		f, err := os.Open(p)
		must(t, err)
		must(t, f.Sync()) // clean pages, so the kernel may drop them
		must(t, unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED))
		f.Close()
		if n := cachedPages(t, p); n != 0 {
			t.Fatalf("%s keeps %d pages cached after POSIX_FADV_DONTNEED: this filesystem cannot show read-ahead", p, n)
		}
		there = append(there, p)
		jobs = append(jobs, fileJob{dir: d, name: name, node: &tree.Node{Size: size}, existing: true})
		if i == 2 { // a file the restore creates: nothing there to open
			jobs = append(jobs, fileJob{dir: d, name: "f02", node: &tree.Node{Size: size}, fresh: true})
		}
	}
	got := openAhead(jobs, nil)
	defer func() {
		for _, f := range got {
			if f.fd >= 0 {
				unix.Close(f.fd)
			}
		}
	}()
	if len(got) != readAhead {
		t.Fatalf("opened %d files, want %d", len(got), readAhead)
	}
	for i, f := range got {
		if f.fd < 0 {
			t.Fatalf("file %d not opened", i)
		}
	}
	for _, p := range there[readAhead:] {
		if n := cachedPages(t, p); n != 0 {
			t.Errorf("%s, past the window, has %d pages cached", p, n)
		}
	}
	// The reads were started, not made: wait for them to land.
	pages := size / os.Getpagesize()
	short, err := testtree.WaitCached(there[:readAhead], pages, 10*time.Second)
	must(t, err)
	for p, n := range short {
		t.Errorf("%s opened ahead: %d of %d pages cached, its read was not started", p, n, pages)
	}
}

// cachedPages is how many pages of the file p are in the page cache.
func cachedPages(t *testing.T, p string) int {
	t.Helper()
	n, err := testtree.CachedPages(p)
	must(t, err)
	return n
}

// A file there that is replaced but holds most of the version's content
// (a disk image written in place in two places) is read about once: the
// chunks read after the first change are written into the new file as
// they are read, not read again to be copied. A sparse file, so read at
// its chunks' offsets only (no search for moved content); its holes stay
// holes.
func TestOverwriteWritesWhatItReads(t *testing.T) {
	h := newHostile(t)
	src := &idCountingSource{memSource: h.src, served: map[[32]byte]int{}}
	const chunk, extent, gap, last = 64 << 10, 1 << 20, 8 << 20, 5000
	data := make([]byte, 2*extent+last)
	rand.NewChaCha8([32]byte{8}).Read(data)
	// The last chunk is zeros in the version, of a length the restore
	// does not know as zeros before it is downloaded: it is then written
	// as an allocation (over a new file's nothing), so what was read there
	// and written before the chunk failed its check must not stay.
	clear(data[2*extent:])
	n := file("image")
	n.Size, n.Sparse = gap+extent+last, true
	n.Extents = []tree.Extent{{Off: 0, Len: extent}, {Off: gap, Len: extent + last}}
	n.Chunks = h.src.put(data, chunk)
	p := filepath.Join(h.target, "image")
	f, err := os.Create(p)
	must(t, err)
	_, err = f.WriteAt(data[:extent], 0)
	must(t, err)
	tail := bytes.Clone(data[extent:])
	tail[5*chunk+7] ^= 1                             // chunk 21
	rand.NewChaCha8([32]byte{9}).Read(tail[extent:]) // junk where the last chunk's zeros go
	_, err = f.WriteAt(tail, gap)
	must(t, err)
	_, err = f.WriteAt([]byte{data[chunk+3] ^ 1}, chunk+3) // chunk 1
	must(t, err)
	must(t, f.Close())
	o := h.options()
	o.Source, o.Existing = src, Overwrite
	before := readBytes(t)
	res := h.mustRestore(o, n)
	read := readBytes(t) - before
	full := make([]byte, n.Size)
	copy(full, data[:extent])
	copy(full[gap:], data[extent:])
	requireBytes(t, p, full)
	if got := src.fetched(n); got != 3 {
		t.Errorf("%d chunks downloaded, want the 3 changed", got)
	}
	if want := int64(len(data) - 2*chunk - last); res.Stats.Reused != want {
		t.Errorf("%d bytes reported taken from the file there, want %d", res.Stats.Reused, want)
	}
	// Chunk 0 is read twice (found before the file was known to be
	// replaced); every other chunk once.
	if limit := int64(len(data) + 2*chunk); read > limit {
		t.Errorf("read %d KiB of the file there, want at most %d KiB (its data once, and a chunk again)", read>>10, limit>>10)
	}
	fd, err := unix.Open(p, unix.O_RDONLY, 0)
	must(t, err)
	defer unix.Close(fd)
	if off, err := unix.Seek(fd, extent, unix.SEEK_DATA); err != nil || off != gap {
		t.Errorf("data after the first extent at %d (%v), want the hole up to %d", off, err, gap)
	}
}

// On a filesystem with reflinks (btrfs, XFS) a large file there that is
// replaced starts as a clone of itself: the chunks found stay where they
// are, the others are downloaded into it, and what the clone held where the
// version has other content, zeros or holes is cleared. The result is the
// version's content and holes, written with a small part of the files'
// bytes; a kept file leaves no clone behind.
func TestOverwriteClonesWhereItCan(t *testing.T) {
	for _, fstype := range []string{"btrfs", "xfs"} {
		t.Run(fstype, func(t *testing.T) { testOverwriteClones(t, loopfs.Mount(t, t.TempDir(), fstype, 512<<20)) })
	}
}

func testOverwriteClones(t *testing.T, mnt string) {
	h := newHostile(t)
	h.target = filepath.Join(mnt, "target")
	must(t, os.Mkdir(h.target, 0o755))
	src := &idCountingSource{memSource: h.src, served: map[[32]byte]int{}}
	rng := rand.NewChaCha8([32]byte{10})
	random := func(n int) []byte {
		b := make([]byte, n)
		rng.Read(b)
		return b
	}
	const chunk, size = 64 << 10, 4 << 20
	gearKey := [32]byte{9}
	gear, err := chunker.NewGear(gearKey)
	must(t, err)
	type tc struct {
		name        string
		data, there []byte
		node        func(n *tree.Node) // a sparse layout, when not nil
		cut         bool               // chunked as backups cut, else every 64 KiB
		fetched     int                // chunks downloaded, -1: not checked
	}
	edited := random(size)
	editedThere := bytes.Clone(edited)
	editedThere[size/2+5] ^= 1
	inserted := random(size)
	insertedThere := append(append(bytes.Clone(inserted[:size/2]), random(10000)...), inserted[size/2:]...)
	zeros := random(size + 5000)
	clear(zeros[chunk : 2*chunk]) // a chunk of zeros the restore knows as such
	clear(zeros[size:])           // an odd-length last chunk of zeros, known once downloaded
	zerosThere := random(len(zeros))
	copy(zerosThere[:chunk], zeros[:chunk])
	copy(zerosThere[2*chunk:size], zeros[2*chunk:size])
	sparse := random(2 << 20)
	sparseThere := make([]byte, 8<<20+1<<20)
	rng.Read(sparseThere) // data where the version has a hole
	copy(sparseThere, sparse[:1<<20])
	copy(sparseThere[8<<20:], sparse[1<<20:])
	sparseThere[8<<20+100] ^= 1
	same := random(size)
	larger := random(size)
	largerThere := append(bytes.Clone(larger), random(1<<20)...)
	largerThere[100] ^= 1
	cases := []tc{
		{name: "edited", data: edited, there: editedThere, fetched: 1},
		{name: "inserted", data: inserted, there: insertedThere, cut: true, fetched: -1},
		{name: "zeros", data: zeros, there: zerosThere, fetched: 1},
		{name: "sparse", data: sparse, there: sparseThere, fetched: 1, node: func(n *tree.Node) {
			n.Size, n.Sparse = 9<<20, true
			n.Extents = []tree.Extent{{Off: 0, Len: 1 << 20}, {Off: 8 << 20, Len: 1 << 20}}
		}},
		{name: "same", data: same, there: same, fetched: 0},
		{name: "encrypted", data: random(size), there: random(size), fetched: size / chunk},
		{name: "larger", data: larger, there: largerThere, fetched: 1},
	}
	slices.SortFunc(cases, func(a, b tc) int { return strings.Compare(a.name, b.name) }) // the listing's order
	var nodes []tree.Node
	want := map[string][]byte{}
	for _, c := range cases {
		n := file(c.name)
		n.Size = int64(len(c.data))
		if c.cut {
			ck := chunker.New(gear, bytes.NewReader(c.data), nil)
			for {
				b, err := ck.Next()
				if err != nil {
					break
				}
				n.Chunks = append(n.Chunks, h.src.put(b, len(b))...)
			}
		} else {
			n.Chunks = h.src.put(c.data, chunk)
		}
		full := c.data
		if c.node != nil {
			c.node(&n)
			full = make([]byte, n.Size)
			copy(full, c.data[:1<<20])
			copy(full[8<<20:], c.data[1<<20:])
		}
		want[c.name] = full
		nodes = append(nodes, n)
		must(t, os.WriteFile(filepath.Join(h.target, c.name), c.there, 0o644))
	}
	sameIno := inode(t, filepath.Join(h.target, "same"))
	// Two restores: the files cut every 64 KiB without the chunker's key
	// (so read at their chunks' offsets only), the one cut as backups cut
	// with it (so searched for moved content).
	var fixed, cut []tree.Node
	for i, c := range cases {
		if c.cut {
			cut = append(cut, nodes[i])
		} else {
			fixed = append(fixed, nodes[i])
		}
	}
	o := h.options()
	o.Source, o.Existing = src, Overwrite
	before := writtenBytes(t)
	h.mustRestore(o, fixed...)
	o.GearKey = gearKey
	h.mustRestore(o, cut...)
	written := writtenBytes(t) - before
	for i, c := range cases {
		p := filepath.Join(h.target, c.name)
		requireBytes(t, p, want[c.name])
		if got := src.fetched(nodes[i]); c.fetched >= 0 && got != c.fetched {
			t.Errorf("%s: %d chunks downloaded, want %d", c.name, got, c.fetched)
		}
	}
	if inode(t, filepath.Join(h.target, "same")) != sameIno {
		t.Errorf("same: replaced, want kept")
	}
	fd, err := unix.Open(filepath.Join(h.target, "sparse"), unix.O_RDONLY, 0)
	must(t, err)
	defer unix.Close(fd)
	if off, err := unix.Seek(fd, 1<<20, unix.SEEK_DATA); err != nil || off != 8<<20 {
		t.Errorf("sparse: data after its first extent at %d (%v), want the hole up to %d", off, err, 8<<20)
	}
	ents, err := os.ReadDir(h.target)
	must(t, err)
	if len(ents) != len(cases) {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("the target holds %q, want only the %d files", names, len(cases))
	}
	// Written: the encrypted file (4 MiB), the inserted file's second half
	// (moved: 2 MiB), a chunk here and there. Without clones, every file
	// replaced is written whole (about 26 MiB).
	t.Logf("%.1f MiB written", float64(written)/(1<<20))
	if written > 8<<20 {
		t.Errorf("%.1f MiB written; want at most 8", float64(written)/(1<<20))
	}
}
