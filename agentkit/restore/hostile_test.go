package restore

// The hostile-vault suite: listings crafted as a hostile or damaged vault
// could send them, restored by the real restore into a real directory.
// Each test records everything outside the target before and after (the
// sentinel) and requires it unchanged, and requires every refusal to be
// reported naming the node.

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// hostile is a restore target with an outside world next to it.
type hostile struct {
	t       *testing.T
	base    string // holds target/ and outside/
	target  string
	outside string
	src     memSource
	before  map[string]sentinel
}

// sentinel is what must not change of one object outside the target.
type sentinel struct {
	mode     uint32
	uid, gid uint32
	size     int64
	nlink    uint64
	mtime    int64 // not atime: reading the sentinel changes it
	sum      [32]byte
	link     string
}

func newHostile(t *testing.T) *hostile {
	t.Helper()
	base := t.TempDir()
	h := &hostile{t: t, base: base, target: filepath.Join(base, "target"), outside: filepath.Join(base, "outside"), src: memSource{}}
	must(t, os.MkdirAll(filepath.Join(h.outside, "dir"), 0o755))
	must(t, os.Chmod(filepath.Join(h.outside, "dir"), 0o755))
	must(t, os.WriteFile(filepath.Join(h.outside, "secret"), []byte("outside secret\n"), 0o600))
	must(t, os.WriteFile(filepath.Join(h.outside, "dir", "x"), []byte("outside x\n"), 0o644))
	must(t, os.Symlink("secret", filepath.Join(h.outside, "sym")))
	must(t, os.Mkdir(h.target, 0o755))
	h.before = h.snapshot()
	return h
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// snapshot walks everything under base except the target.
func (h *hostile) snapshot() map[string]sentinel {
	h.t.Helper()
	out := map[string]sentinel{}
	err := filepath.WalkDir(h.base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == h.target {
			return filepath.SkipDir
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		s := sentinel{mode: st.Mode, uid: st.Uid, gid: st.Gid, size: st.Size, nlink: st.Nlink,
			mtime: st.Mtim.Nano()}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s.sum = sha256.Sum256(b)
		case unix.S_IFLNK:
			s.link, _ = os.Readlink(p)
		}
		rel, _ := filepath.Rel(h.base, p)
		out[rel] = s
		return nil
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

// requireOutsideUnchanged compares the outside world with the sentinel.
func (h *hostile) requireOutsideUnchanged() {
	h.t.Helper()
	after := h.snapshot()
	for p, s := range after {
		if b, ok := h.before[p]; !ok {
			h.t.Errorf("OUTSIDE THE TARGET: %s appeared (%+v)", p, s)
		} else if b != s {
			h.t.Errorf("OUTSIDE THE TARGET: %s changed: %+v, was %+v", p, s, b)
		}
	}
	for p := range h.before {
		if _, ok := after[p]; !ok {
			h.t.Errorf("OUTSIDE THE TARGET: %s disappeared", p)
		}
	}
}

// content makes a regular file node holding data.
func (h *hostile) content(p string, data string) tree.Node {
	n := file(p)
	n.Size = int64(len(data))
	n.Chunks = h.src.put([]byte(data), 1024)
	return n
}

func (h *hostile) options() Options {
	return Options{Source: h.src, ChunkKey: testKey, Target: h.target, Meta: meta.Options{SkipOwner: true}, Workers: 2}
}

// restore encodes nodes as a listing, as the vault would serve it, and
// restores it.
func (h *hostile) restore(o Options, nodes ...tree.Node) (*Result, error) {
	h.t.Helper()
	o.Manifest = wire.Manifest{Config: "c", Seq: 1, Listing: h.src.listing(h.t, nodes...)}
	return Run(context.Background(), o)
}

// restoreNodes hands nodes to restore directly, past the listing decoder's
// checks: restore must refuse them on its own.
func (h *hostile) restoreNodes(o Options, nodes ...tree.Node) *Result {
	h.t.Helper()
	res, err := run(context.Background(), o, &sliceNodes{nodes: nodes})
	if err != nil {
		h.t.Fatalf("restore: %v", err)
	}
	return res
}

type sliceNodes struct{ nodes []tree.Node }

func (s *sliceNodes) Next() (*tree.Node, error) {
	if len(s.nodes) == 0 {
		return nil, io.EOF
	}
	n := &s.nodes[0]
	s.nodes = s.nodes[1:]
	return n, nil
}

// requireReported requires a line of lines about p (quoted, or as is)
// that contains want.
func requireReported(t *testing.T, what string, lines []string, p, want string) {
	t.Helper()
	q := strconv.Quote(p)
	for _, l := range lines {
		if (strings.HasPrefix(l, q+":") || strings.HasPrefix(l, p+":")) && strings.Contains(l, want) {
			return
		}
	}
	t.Errorf("no %s names %s with %q: %q", what, q, want, lines)
}

func requireAbsent(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s exists (%v); it must not have been made", p, err)
	}
}

func requireContent(t *testing.T, p, want string) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil || string(got) != want {
		t.Errorf("%s: %q, %v; want %q", p, got, err, want)
	}
}

// Names that leave the target, or are no names, are refused one by one
// by restore itself, even when the listing decoder let them through; the
// rest is restored.
func TestHostileNames(t *testing.T) {
	h := newHostile(t)
	long := strings.Repeat("n", NameMax+1)
	bad := []string{
		"../escape",
		"a/../../escape2",
		h.outside + "/abs",
		"a//b",
		"a/./b",
		"./c",
		"a/",
		"x\x00y",
		long,
		"a/" + long + "/z",
	}
	nodes := []tree.Node{dir("a"), h.content("a/ok", "fine\n")}
	for _, p := range bad {
		nodes = append(nodes, h.content(p, "hostile\n"))
	}
	l := file("a/l")
	l.LinkTo = []byte("../outside/secret")
	nodes = append(nodes, l)
	res := h.restoreNodes(h.options(), nodes...)
	h.requireOutsideUnchanged()
	for _, p := range bad {
		requireReported(t, "problem", res.Problems, p, "refused")
	}
	requireReported(t, "problem", res.Problems, "a/l", "refused")
	requireContent(t, filepath.Join(h.target, "a/ok"), "fine\n")
	if len(res.Problems) != len(bad)+1 {
		t.Errorf("%d problems for %d hostile nodes: %q", len(res.Problems), len(bad)+1, res.Problems)
	}

	// Through the real decoder such a listing stops with an error naming
	// the node, before anything of it is made.
	h2 := newHostile(t)
	_, err := h2.restore(h2.options(), dir("a"), h2.content("a/../../escape", "hostile\n"))
	if err == nil || !strings.Contains(err.Error(), "a/../../escape") {
		t.Errorf("a listing holding a/../../escape restored with error %v", err)
	}
	h2.requireOutsideUnchanged()
}

// A hard link may only point at a hard-linked file restored earlier in the
// same run: not outside the target, not at a later node, not through a
// symlink; the rest of the restore goes on.
func TestHostileHardLinks(t *testing.T) {
	h := newHostile(t)
	link := func(p, to string) tree.Node {
		n := file(p)
		n.LinkTo, n.Nlink = []byte(to), 2
		return n
	}
	f := h.content("a/f", "linked\n")
	f.Nlink = 2
	z := h.content("a/z", "later\n")
	z.Nlink = 2
	one := h.content("a/b-one", "one link\n") // Nlink 1: nothing may link to it
	sym := tree.Node{Path: []byte("s"), Type: tree.TypeSymlink, Target: []byte(h.outside)}
	res, err := h.restore(h.options(),
		dir("a"),
		one,
		f,
		link("a/l1-escape", "../outside/secret"),
		link("a/l2-forward", "a/z"),
		link("a/l3-ok", "a/f"),
		link("a/l4-absolute", h.outside+"/secret"),
		link("a/l7-nlink1", "a/b-one"),
		z,
		sym,
		dir("t"),
		link("t/l5-via-symlink", "s/secret"),
		link("t/l6-self", "t/l6-self"),
	)
	if err != nil {
		t.Fatal(err)
	}
	h.requireOutsideUnchanged()
	for p, why := range map[string]string{
		"a/l1-escape":      `refused: hard link to "../outside/secret": ".." component`,
		"a/l2-forward":     "does not come before it",
		"a/l4-absolute":    "absolute path",
		"a/l7-nlink1":      "not a hard-linked file restored earlier",
		"t/l5-via-symlink": "not a hard-linked file restored earlier",
		"t/l6-self":        "does not come before it",
	} {
		requireReported(t, "problem", res.Problems, p, why)
		requireAbsent(t, filepath.Join(h.target, p))
	}
	var a, b unix.Stat_t
	must(t, unix.Lstat(filepath.Join(h.target, "a/f"), &a))
	if err := unix.Lstat(filepath.Join(h.target, "a/l3-ok"), &b); err != nil || a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("a/l3-ok is not a hard link of a/f: %v, inodes %d %d, nlink %d", err, a.Ino, b.Ino, a.Nlink)
	}
	requireContent(t, filepath.Join(h.target, "a/z"), "later\n")
	if len(res.Problems) != 6 {
		t.Errorf("problems: %q, want the six refused links", res.Problems)
	}
}

// A symlink restored earlier is never a way out: a file, a directory or a
// link below it is refused, not made where the symlink points.
func TestHostileSymlinkedParent(t *testing.T) {
	for _, existing := range []Existing{Skip, Overwrite, KeepBoth} {
		t.Run(string(existing), func(t *testing.T) {
			h := newHostile(t)
			f := h.content("a", "a\n")
			f.Nlink = 2
			l := file("d/l")
			l.LinkTo, l.Nlink = []byte("a"), 2
			o := h.options()
			o.Existing = existing
			res, err := h.restore(o, f,
				tree.Node{Path: []byte("d"), Type: tree.TypeSymlink, Target: []byte(h.outside + "/dir")},
				l,
				h.content("d/new", "hostile\n"),
				dir("d/sub"),
				h.content("d/sub/y", "hostile\n"),
				h.content("d/x", "hostile\n"),
			)
			if err != nil {
				t.Fatal(err)
			}
			h.requireOutsideUnchanged()
			for _, p := range []string{"d/l", "d/new", "d/sub", "d/sub/y", "d/x"} {
				requireReported(t, "problem", res.Problems, p, "")
			}
			if fi, err := os.Lstat(filepath.Join(h.target, "d")); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
				t.Errorf("d: %v, %v; want the symlink restored", fi, err)
			}
		})
	}
}

// A local user who can write into the target swaps a directory the
// restore just made for a symlink to outside: the files go into the
// directory the restore opened, its metadata goes on that directory, and a
// hard link below the swapped name is refused.
func TestHostileSwapMidRestore(t *testing.T) {
	h := newHostile(t)
	swapped := false
	testHookDir = func(p []byte) {
		if string(p) != "d" {
			return
		}
		d := filepath.Join(h.target, "d")
		must(t, os.Rename(d, d+".moved"))
		must(t, os.Symlink(filepath.Join(h.outside, "dir"), d))
		swapped = true
	}
	defer func() { testHookDir = nil }()
	f := h.content("a", "a\n")
	f.Nlink = 2
	d := dir("d")
	d.Mode = 0o777
	d.Mtime = tree.Timespec{Sec: 1e9}
	x := h.content("d/x", "restored\n")
	x.Mode = 0o666
	l := file("d/l")
	l.LinkTo, l.Nlink = []byte("a"), 2
	res, err := h.restore(h.options(), f, d, l, x)
	if err != nil {
		t.Fatal(err)
	}
	if !swapped {
		t.Fatal("the hook never swapped d")
	}
	h.requireOutsideUnchanged()
	requireReported(t, "problem", res.Problems, "d/l", "refused")
	requireContent(t, filepath.Join(h.target, "d.moved/x"), "restored\n")
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(h.target, "d.moved"), &st))
	if st.Mode&0o7777 != 0o777 || st.Mtim.Sec != 1e9 {
		t.Errorf("the directory restore made has mode %o, mtime %d; want 0777, 1e9", st.Mode&0o7777, st.Mtim.Sec)
	}
}

// Device nodes and set-id bits (and file capabilities) come back only as
// root and when asked; otherwise they are skipped or stripped, each with a
// note, and FIFOs are restored as always.
func TestHostileDevicesAndSetID(t *testing.T) {
	capNetRaw := []byte{0x00, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	nodes := func(h *hostile) []tree.Node {
		suid := h.content("suid", "#!/bin/sh\n")
		suid.Mode = 0o4755
		sgid := h.content("sgid", "#!/bin/sh\n")
		sgid.Mode = 0o2711
		capf := h.content("cap", "#!/bin/sh\n")
		capf.Mode = 0o755
		capf.Xattrs = []tree.Xattr{{Name: "security.capability", Value: capNetRaw}}
		return []tree.Node{
			{Path: []byte("blk"), Type: tree.TypeBlock, Mode: 0o660, Rdev: unix.Mkdev(7, 0)},
			capf,
			{Path: []byte("dev"), Type: tree.TypeChar, Mode: 0o666, Rdev: unix.Mkdev(1, 2)},
			{Path: []byte("fifo"), Type: tree.TypeFIFO, Mode: 0o640},
			sgid,
			suid,
		}
	}
	for _, tc := range []struct {
		name          string
		root, devices bool
		setid         bool
	}{
		{"not root, asked", false, true, true},
		{"root, not asked", true, false, false},
		{"root, asked", true, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("SKIPPED LOUDLY: needs root (mknod, security.capability); CI runs as root")
			}
			if !tc.root {
				geteuid = func() int { return 1000 }
				defer func() { geteuid = os.Geteuid }()
			}
			h := newHostile(t)
			o := h.options()
			o.Devices, o.SetID = tc.devices, tc.setid
			res, err := h.restore(o, nodes(h)...)
			if err != nil {
				t.Fatal(err)
			}
			h.requireOutsideUnchanged()
			if len(res.Problems) > 0 {
				t.Errorf("problems: %q", res.Problems)
			}
			var st unix.Stat_t
			must(t, unix.Lstat(filepath.Join(h.target, "fifo"), &st))
			if st.Mode&unix.S_IFMT != unix.S_IFIFO || st.Mode&0o7777 != 0o640 {
				t.Errorf("fifo: mode %o", st.Mode)
			}
			modes := map[string]uint32{"suid": 0o4755, "sgid": 0o2711}
			granted := tc.root && tc.setid
			for p, m := range modes {
				must(t, unix.Lstat(filepath.Join(h.target, p), &st))
				want := m
				if !granted {
					want &^= 0o6000
					requireReported(t, "note", res.Notes, p, "stripped")
				}
				if st.Mode&0o7777 != want {
					t.Errorf("%s: mode %04o, want %04o", p, st.Mode&0o7777, want)
				}
			}
			b := make([]byte, 64)
			_, err = unix.Lgetxattr(filepath.Join(h.target, "cap"), "security.capability", b)
			if granted && err != nil {
				t.Errorf("cap: capability not restored as root with -setid: %v", err)
			}
			if !granted {
				if err == nil {
					t.Errorf("cap: file capability restored without -setid as root")
				}
				requireReported(t, "note", res.Notes, "cap", "stripped")
			}
			for _, p := range []string{"dev", "blk"} {
				if tc.root && tc.devices {
					must(t, unix.Lstat(filepath.Join(h.target, p), &st))
					continue
				}
				requireAbsent(t, filepath.Join(h.target, p))
				requireReported(t, "note", res.Notes, p, "not recreated")
			}
		})
	}
}

// Nodes of absurd size are refused by name before anything is written.
func TestHostileAbsurdSizes(t *testing.T) {
	h := newHostile(t)
	big := h.content("big", "four")
	big.Size = 1 << 62 // few chunks for its size: past the decoder only
	past := h.content("past", "four")
	past.Size, past.Sparse = 100, true
	past.Extents = []tree.Extent{{Off: 200, Len: 4}}
	neg := h.content("negative", "")
	neg.Size = -1
	res := h.restoreNodes(h.options(), big, neg, past)
	for _, p := range []string{"big", "negative", "past"} {
		requireReported(t, "problem", res.Problems, p, "refused")
		requireAbsent(t, filepath.Join(h.target, p))
	}

	// Through the real decoder: a sparse file of 2^62 bytes holding four.
	sparse := h.content("sparse-big", "four")
	sparse.Size, sparse.Sparse = 1<<62, true
	sparse.Extents = []tree.Extent{{Off: 1<<62 - 4, Len: 4}}
	res, err := h.restore(h.options(), h.content("small", "ok\n"), sparse)
	if err != nil {
		t.Fatal(err)
	}
	requireReported(t, "problem", res.Problems, "sparse-big", "limit")
	requireAbsent(t, filepath.Join(h.target, "sparse-big"))
	requireContent(t, filepath.Join(h.target, "small"), "ok\n")
	h.requireOutsideUnchanged()
	noTemporaries(t, h.target)
}

// Symlinks to outside planted in the target before the restore, at the
// names of a directory, a file and a hard link, are never written
// through, whatever the policy for existing objects; overwrite replaces
// them.
func TestHostileExistingSymlinks(t *testing.T) {
	for _, existing := range []Existing{Skip, Overwrite, KeepBoth} {
		t.Run(string(existing), func(t *testing.T) {
			h := newHostile(t)
			for name, to := range map[string]string{"d": "dir", "f": "secret", "l": "secret", "d2": "dir"} {
				must(t, os.Symlink(filepath.Join(h.outside, to), filepath.Join(h.target, name)))
			}
			d := dir("d")
			d.Mode = 0o777
			f := h.content("f", "restored f\n")
			f.Mode = 0o666
			g := h.content("g", "restored g\n")
			g.Nlink = 2
			l := file("l")
			l.LinkTo, l.Nlink = []byte("g"), 2
			o := h.options()
			o.Existing = existing
			res, err := h.restore(o, d, h.content("d/x", "restored x\n"), dir("d2"), f, g, l)
			if err != nil {
				t.Fatal(err)
			}
			h.requireOutsideUnchanged()
			if existing == Overwrite {
				// The symlink is replaced by the directory, which is
				// restored into (nothing outside is touched: above).
				if fi, err := os.Lstat(filepath.Join(h.target, "d")); err != nil || !fi.IsDir() {
					t.Errorf("d: %v, want the version's directory in place of the symlink", err)
				}
				requireContent(t, filepath.Join(h.target, "d/x"), "restored x\n")
			} else {
				// Otherwise a directory never replaces what is there.
				requireReported(t, "problem", res.Problems, "d", "exists")
				requireReported(t, "problem", res.Problems, "d/x", "not a directory")
			}
			if existing == Overwrite {
				requireContent(t, filepath.Join(h.target, "f"), "restored f\n")
				requireContent(t, filepath.Join(h.target, "l"), "restored g\n")
			}
			if existing == KeepBoth {
				requireContent(t, filepath.Join(h.target, "f.restored"), "restored f\n")
				requireContent(t, filepath.Join(h.target, "l.restored"), "restored g\n")
			}
		})
	}
}

// swapSource answers, for one chunk id, another chunk the vault holds: a
// valid chunk, at the wrong place.
type swapSource struct {
	memSource
	from, to [32]byte
}

func (s swapSource) GetChunks(ctx context.Context, ids [][32]byte, fn func(f *wire.Frame) error) error {
	asked := make([][32]byte, len(ids))
	for i, id := range ids {
		asked[i] = id
		if id == s.from {
			asked[i] = s.to
		}
	}
	return s.memSource.GetChunks(ctx, asked, fn)
}

// A vault answering another valid chunk in place of the one asked for
// never puts foreign content into a file: the file is refused by name,
// the others restore, and dump's reader refuses it too.
func TestHostileChunkSwapped(t *testing.T) {
	h := newHostile(t)
	victim := h.content("victim", "the victim's content\n")
	other := h.content("other", "other file's secret!\n")
	o := h.options()
	src := swapSource{memSource: h.src, from: victim.Chunks[0].ID, to: other.Chunks[0].ID}
	o.Source = src
	res, err := h.restore(o, other, victim)
	if err != nil {
		t.Fatal(err)
	}
	requireReported(t, "problem", res.Problems, "victim", "in its place")
	requireAbsent(t, filepath.Join(h.target, "victim"))
	requireContent(t, filepath.Join(h.target, "other"), "other file's secret!\n")
	h.requireOutsideUnchanged()
	if b, err := io.ReadAll(OpenContent(context.Background(), src, testKey, &victim)); err == nil {
		t.Errorf("OpenContent read %q through a swapped chunk", b)
	}
}
