package restore

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/tree"
)

// The policies for objects already at the target: skip leaves them,
// overwrite replaces them, keep-both restores beside them; for regular
// files, hard links and symlinks alike, all beneath the target.
func TestExistingPolicies(t *testing.T) {
	for _, tc := range []struct {
		existing Existing
		skipped  int64
	}{{Skip, 3}, {Overwrite, 0}, {KeepBoth, 0}} {
		t.Run(string(tc.existing), func(t *testing.T) {
			h := newHostile(t)
			must(t, os.MkdirAll(filepath.Join(h.target, "d"), 0o755))
			for _, p := range []string{"d/f", "d/l"} {
				must(t, os.WriteFile(filepath.Join(h.target, p), []byte("old "+p+"\n"), 0o644))
			}
			must(t, os.Symlink("old-target", filepath.Join(h.target, "d/s")))
			g := h.content("d/a", "new a\n")
			g.Nlink = 2
			l := file("d/l")
			l.LinkTo, l.Nlink = []byte("d/a"), 2
			o := h.options()
			o.Existing = tc.existing
			res, err := h.restore(o, dir("d"), g, h.content("d/f", "new d/f\n"), l,
				tree.Node{Path: []byte("d/s"), Type: tree.TypeSymlink, Target: []byte("new-target")})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Problems) > 0 {
				t.Errorf("problems: %q", res.Problems)
			}
			if res.Stats.Skipped != tc.skipped {
				t.Errorf("skipped %d, want %d", res.Stats.Skipped, tc.skipped)
			}
			h.requireOutsideUnchanged()
			at := func(p string) string { return filepath.Join(h.target, p) }
			link := func(p string) string { s, _ := os.Readlink(at(p)); return s }
			requireContent(t, at("d/a"), "new a\n")
			switch tc.existing {
			case Skip:
				requireContent(t, at("d/f"), "old d/f\n")
				requireContent(t, at("d/l"), "old d/l\n")
				if link("d/s") != "old-target" {
					t.Errorf("d/s -> %q, want the old target kept", link("d/s"))
				}
			case Overwrite:
				requireContent(t, at("d/f"), "new d/f\n")
				requireContent(t, at("d/l"), "new a\n")
				if link("d/s") != "new-target" {
					t.Errorf("d/s -> %q, want new-target", link("d/s"))
				}
			case KeepBoth:
				requireContent(t, at("d/f"), "old d/f\n")
				requireContent(t, at("d/f.restored"), "new d/f\n")
				requireContent(t, at("d/l"), "old d/l\n")
				requireContent(t, at("d/l.restored"), "new a\n")
				if link("d/s") != "old-target" || link("d/s.restored") != "new-target" {
					t.Errorf("d/s -> %q, d/s.restored -> %q", link("d/s"), link("d/s.restored"))
				}
			}
		})
	}
}

// Hard links into an immutable directory, and to an immutable file, are
// made before the flags are set; the flags are all there at the end.
func TestHardLinksAndImmutable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: needs root (chattr +i); CI runs as root")
	}
	h := newHostile(t)
	t.Cleanup(func() {
		for _, p := range []string{"d/a", "d"} {
			if fd, err := unix.Open(filepath.Join(h.target, p), unix.O_RDONLY|unix.O_NONBLOCK, 0); err == nil {
				unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, 0)
				unix.Close(fd)
			}
		}
	})
	d := dir("d")
	d.Flags = meta.FlagImmutable
	a := h.content("d/a", "linked\n")
	a.Nlink, a.Flags = 2, meta.FlagImmutable
	l := file("d/l")
	l.LinkTo, l.Nlink = []byte("d/a"), 2
	res, err := h.restore(h.options(), d, a, l)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Problems) > 0 {
		t.Fatalf("problems: %q", res.Problems)
	}
	var sa, sl unix.Stat_t
	must(t, unix.Lstat(filepath.Join(h.target, "d/a"), &sa))
	must(t, unix.Lstat(filepath.Join(h.target, "d/l"), &sl))
	if sa.Ino != sl.Ino {
		t.Errorf("d/l is not a link of d/a")
	}
	for _, p := range []string{"d", "d/a"} {
		fd, err := unix.Open(filepath.Join(h.target, p), unix.O_RDONLY|unix.O_NONBLOCK, 0)
		must(t, err)
		f, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
		unix.Close(fd)
		if err != nil || f&meta.FlagImmutable == 0 {
			t.Errorf("%s: flags %s, %v; want immutable", p, meta.FlagString(f), err)
		}
	}
}

// A file that appears at a name after the policy was checked is left as
// it is unless the policy is overwrite.
func TestExistingAppearsMeanwhile(t *testing.T) { forEachNaming(t, testExistingAppearsMeanwhile) }

func testExistingAppearsMeanwhile(t *testing.T) {
	for _, existing := range []Existing{Skip, KeepBoth, Overwrite} {
		t.Run(string(existing), func(t *testing.T) {
			h := newHostile(t)
			testHookBeforeRename = func(p []byte, _ int) {
				if string(p) == "f" {
					must(t, os.WriteFile(filepath.Join(h.target, "f"), []byte("made meanwhile\n"), 0o644))
				}
			}
			defer func() { testHookBeforeRename = nil }()
			o := h.options()
			o.Existing = existing
			res, err := h.restore(o, h.content("f", "restored\n"))
			if err != nil {
				t.Fatal(err)
			}
			h.requireOutsideUnchanged()
			noTemporaries(t, h.target)
			if existing == Overwrite {
				requireContent(t, filepath.Join(h.target, "f"), "restored\n")
				return
			}
			requireContent(t, filepath.Join(h.target, "f"), "made meanwhile\n")
			requireReported(t, "problem", res.Problems, "f", "appeared meanwhile")
		})
	}
}

// -existing overwrite where the object there is of another type than the
// version's: a file, symlink or FIFO where the version has a directory is
// replaced by it; an empty directory where it has a file or a symlink is
// replaced; a directory with something in it is left as it is, reported,
// since a restore deletes nothing the version lacks. Nothing else stays.
func TestOverwriteChangesTypes(t *testing.T) { forEachNaming(t, testOverwriteChangesTypes) }

func testOverwriteChangesTypes(t *testing.T) {
	h := newHostile(t)
	at := func(p string) string { return filepath.Join(h.target, p) }
	must(t, os.WriteFile(at("d"), []byte("a file where the version has a directory\n"), 0o644))
	must(t, os.Symlink("elsewhere", at("ds")))
	must(t, unix.Mkfifo(at("dp"), 0o600))
	for _, p := range []string{"e", "es", "full", "fulls"} {
		must(t, os.Mkdir(at(p), 0o755))
	}
	for _, p := range []string{"full/kept", "fulls/kept"} {
		must(t, os.WriteFile(at(p), []byte("not in the version\n"), 0o644))
	}
	o := h.options()
	o.Existing = Overwrite
	symlink := func(p string) tree.Node {
		return tree.Node{Path: []byte(p), Type: tree.TypeSymlink, Target: []byte("target-" + p)}
	}
	res, err := h.restore(o, dir("d"), h.content("d/in", "in d\n"), dir("dp"), dir("ds"),
		h.content("e", "was an empty directory\n"), symlink("es"),
		h.content("full", "the version's file\n"), symlink("fulls"))
	if err != nil {
		t.Fatal(err)
	}
	h.requireOutsideUnchanged()
	noTemporaries(t, h.target)
	requireContent(t, at("d/in"), "in d\n")
	for _, p := range []string{"dp", "ds"} {
		if fi, err := os.Lstat(at(p)); err != nil || !fi.IsDir() {
			t.Errorf("%s: %v, want the version's directory", p, err)
		}
	}
	requireContent(t, at("e"), "was an empty directory\n")
	if got, err := os.Readlink(at("es")); err != nil || got != "target-es" {
		t.Errorf("es -> %q (%v), want target-es", got, err)
	}
	for _, p := range []string{"full", "fulls"} {
		requireContent(t, at(p+"/kept"), "not in the version\n")
		requireReported(t, "problem", res.Problems, p, "not empty")
	}
	if len(res.Problems) != 2 {
		t.Errorf("problems %q, want the two full directories'", res.Problems)
	}
}

// -existing overwrite over a file with several names that holds the
// version: kept (same inode, its links left as they are) when its names
// are the version's; when it has a name the version does not give it
// (a hard link elsewhere), the version's names get a copy of their own
// and the other name keeps the old inode.
func TestOverwriteKeepsLinkedFiles(t *testing.T) {
	for _, foreign := range []bool{false, true} {
		t.Run(map[bool]string{false: "the-versions-names", true: "a-foreign-name"}[foreign], func(t *testing.T) {
			h := newHostile(t)
			src := &idCountingSource{memSource: h.src, served: map[[32]byte]int{}}
			at := func(p string) string { return filepath.Join(h.target, p) }
			must(t, os.MkdirAll(at("d"), 0o755))
			must(t, os.MkdirAll(at("other"), 0o755))
			x := h.content("d/x", "linked content\n")
			x.Nlink = 2
			y := file("d/y")
			y.LinkTo, y.Nlink = []byte("d/x"), 2
			must(t, os.WriteFile(at("d/x"), []byte("linked content\n"), 0o644))
			second := "d/y"
			if foreign {
				second = "other/z" // the version's d/y is missing there
			}
			must(t, os.Link(at("d/x"), at(second)))
			old := inode(t, at("d/x"))
			o := h.options()
			o.Source, o.Existing = src, Overwrite
			res := h.mustRestore(o, dir("d"), x, y)
			requireContent(t, at("d/x"), "linked content\n")
			requireContent(t, at("d/y"), "linked content\n")
			if inode(t, at("d/x")) != inode(t, at("d/y")) {
				t.Errorf("d/x and d/y are not one file")
			}
			if got := src.fetched(x); got != 0 {
				t.Errorf("%d chunks downloaded, want none (the content is there)", got)
			}
			noTemporaries(t, h.target)
			if !foreign {
				if inode(t, at("d/x")) != old || res.Stats.Kept != 1 {
					t.Errorf("not kept: inode kept %v, %d kept", inode(t, at("d/x")) == old, res.Stats.Kept)
				}
				if len(res.Notes) > 0 {
					t.Errorf("notes %q", res.Notes)
				}
				return
			}
			if inode(t, at("d/x")) == old || inode(t, at("other/z")) != old {
				t.Errorf("the version's names still share the inode of other/z")
			}
			requireContent(t, at("other/z"), "linked content\n")
			requireReported(t, "note", res.Notes, "d/x", "names there are not the version's")
		})
	}
}

// copyData copies a file's data and leaves its holes holes.
func TestCopyDataKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	src, err := os.Create(filepath.Join(dir, "src"))
	must(t, err)
	defer src.Close()
	_, err = src.WriteAt([]byte("head"), 0)
	must(t, err)
	_, err = src.WriteAt([]byte("middle"), 1<<20)
	must(t, err)
	must(t, src.Truncate(3<<20))
	dst, err := os.Create(filepath.Join(dir, "dst"))
	must(t, err)
	defer dst.Close()
	must(t, copyData(int(dst.Fd()), src, 3<<20))
	want, err := os.ReadFile(src.Name())
	must(t, err)
	got, err := os.ReadFile(dst.Name())
	must(t, err)
	if !bytes.Equal(got, want) {
		t.Fatalf("copy differs (%d bytes, want %d)", len(got), len(want))
	}
	if off, err := unix.Seek(int(dst.Fd()), 4096, unix.SEEK_DATA); err != nil || off != 1<<20 {
		t.Errorf("data after the first block at %d (%v), want the hole up to %d", off, err, 1<<20)
	}
	if off, err := unix.Seek(int(dst.Fd()), 1<<20+4096, unix.SEEK_DATA); err != unix.ENXIO {
		t.Errorf("data at %d (%v) in the trailing hole", off, err)
	}
}
