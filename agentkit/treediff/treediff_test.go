package treediff

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/testtree"
	"vaultnode/internal/tree"
)

func logDiffs(t *testing.T, diffs []Difference) {
	t.Helper()
	for i, d := range diffs {
		if i == 50 {
			t.Logf("... %d more", len(diffs)-50)
			break
		}
		t.Log(d)
	}
}

// TestRoundTrip generates every case, copies it with agentkit/meta, requires
// no difference (atime included), then mutates the copy and requires exactly
// the differences the mutations explain.
func TestRoundTrip(t *testing.T) {
	src, dst, m := newTree(t, testtree.Options{SparseSize: 100 << 30, Wide: 2000})
	if len(m.Dropped) != 0 {
		t.Fatalf("cases dropped: %v", m.Dropped)
	}
	copyTree(t, src, dst)
	diffs, err := Compare(src, dst, Options{Atime: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(diffs) != 0 {
		logDiffs(t, diffs)
		t.Fatalf("%d differences after copy", len(diffs))
	}
	// The copy is as sparse as the original.
	var a, b unix.Stat_t
	unix.Lstat(filepath.Join(src, "sparse/big"), &a)
	unix.Lstat(filepath.Join(dst, "sparse/big"), &b)
	if a.Size != 100<<30 || b.Blocks > a.Blocks {
		t.Errorf("sparse/big: original %d bytes in %d blocks, copy %d blocks", a.Size, a.Blocks, b.Blocks)
	}
	// getfacl and lsattr agree too.
	for _, p := range []string{"acl/dir", "acl/file", "acl/dir/inherited"} {
		x, _ := exec.Command("getfacl", "-n", "--omit-header", filepath.Join(src, p)).CombinedOutput()
		y, _ := exec.Command("getfacl", "-n", "--omit-header", filepath.Join(dst, p)).CombinedOutput()
		if !bytes.Equal(x, y) || len(x) == 0 {
			t.Errorf("getfacl %s:\n%s\ncopy:\n%s", p, x, y)
		}
	}

	changes, err := testtree.MutateReport(dst, 1)
	if err != nil {
		t.Fatal(err)
	}
	diffs, err = Compare(src, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkExplained(t, changes, diffs)
}

// TestRoundTripUnprivileged runs the round trip as an ordinary user (the
// cases that need root dropped), as an agent without root would: when run
// as root it runs itself again as nobody.
func TestRoundTripUnprivileged(t *testing.T) {
	if os.Geteuid() == 0 {
		// t.TempDir's parents are private to root: nobody needs its own.
		tmp, err := os.MkdirTemp("", "treediff-nobody-")
		must(t, err)
		t.Cleanup(func() { os.RemoveAll(tmp) })
		must(t, os.Chmod(tmp, 0o777))
		cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
			os.Args[0], "-test.run=^TestRoundTripUnprivileged$", "-test.v")
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
		out, err := cmd.CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("--- PASS")) {
			t.Fatalf("as nobody: %v\n%s", err, out)
		}
		return
	}
	src, dst, m := newTree(t, testtree.Options{Unprivileged: true, SparseSize: 1 << 30, Wide: 100})
	if m.Has(testtree.CaseOwners) || !m.Has(testtree.CaseACL) {
		t.Fatalf("manifest %+v", m)
	}
	copyTree(t, src, dst)
	diffs, err := Compare(src, dst, Options{Atime: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(diffs) != 0 {
		logDiffs(t, diffs)
		t.Fatalf("%d differences after copy", len(diffs))
	}
	changes, err := testtree.MutateReport(dst, 3)
	must(t, err)
	diffs, err = Compare(src, dst, Options{})
	must(t, err)
	checkExplained(t, changes, diffs)
}

// checkExplained requires every change to show and every difference to be
// explained by a change.
func checkExplained(t *testing.T, changes []testtree.Change, diffs []Difference) {
	t.Helper()
	allowed := map[string][]string{
		"edit":        {"content", "size", "mtime", "holes", "blocks"},
		"append":      {"size", "mtime"},
		"truncate":    {"size", "mtime"},
		"add":         {"extra"},
		"mkdir":       {"extra"},
		"delete":      {"missing"},
		"rename-from": {"missing"},
		"rename-to":   {"extra"},
		"chmod":       {"mode", "acl access"},
		"xattr":       {"xattr user.mutated"},
		"touch":       {"mtime"},
	}
	byPath := map[string][]string{} // path -> allowed fields
	shown := map[string]bool{}
	for _, c := range changes {
		byPath[string(c.Path)] = append(byPath[string(c.Path)], allowed[c.Kind]...)
		switch c.Kind {
		case "add", "mkdir", "delete", "rename-from", "rename-to":
			par := filepath.Dir(string(c.Path))
			byPath[par] = append(byPath[par], "mtime")
		}
	}
	for _, d := range diffs {
		p := string(d.Path)
		if !slices.Contains(byPath[p], d.Field) {
			t.Errorf("unexplained difference: %v", d)
		}
		shown[p] = true
	}
	for _, c := range changes {
		p := string(c.Path)
		ok := shown[p]
		for q := p; !ok && q != "."; q = filepath.Dir(q) {
			ok = shown[q] && c.Kind == "add" // inside a new directory, which is not entered
		}
		if !ok {
			t.Errorf("change not reported: %v", c)
		}
	}
	if t.Failed() {
		logDiffs(t, diffs)
	}
}

// TestGenerateDeterministic: two generations of the same options compare equal.
func TestGenerateDeterministic(t *testing.T) {
	opts := testtree.Options{SparseSize: 64 << 20, Wide: 10}
	a, _, _ := newTree(t, opts)
	b, _, _ := newTree(t, opts)
	diffs, err := Compare(a, b, Options{Atime: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(diffs) != 0 {
		logDiffs(t, diffs)
		t.Fatalf("%d differences between two generations", len(diffs))
	}
}

// TestDetects makes one change to a copy of a small tree and requires
// exactly the expected differences.
func TestDetects(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (chown, mknod, chattr +i); CI runs as root")
	}
	type diff struct{ path, field string }
	tests := []struct {
		name   string
		opts   Options
		change func(t *testing.T, dst string)
		want   []diff
	}{
		{"nothing", Options{}, func(*testing.T, string) {}, nil},
		{"chmod", Options{}, func(t *testing.T, d string) { must(t, unix.Chmod(filepath.Join(d, "f"), 0o4644)) }, []diff{{"f", "mode"}}},
		{"chown", Options{}, func(t *testing.T, d string) { must(t, os.Lchown(filepath.Join(d, "f"), 1, 2)) }, []diff{{"f", "owner"}}},
		{"chown-symlink", Options{}, func(t *testing.T, d string) { must(t, os.Lchown(filepath.Join(d, "link"), 1, 2)) }, []diff{{"link", "owner"}}},
		{"mtime", Options{}, func(t *testing.T, d string) { touch(t, d, "f", 0, 1) }, []diff{{"f", "mtime"}}},
		{"atime-ignored", Options{}, func(t *testing.T, d string) { touch(t, d, "f", 1, 0) }, nil},
		{"atime", Options{Atime: true}, func(t *testing.T, d string) { touch(t, d, "f", 1, 0) }, []diff{{"f", "atime"}}},
		{"dir-mtime", Options{}, func(t *testing.T, d string) { touch(t, d, "dir", 0, 1) }, []diff{{"dir", "mtime"}}},
		{"content", Options{}, func(t *testing.T, d string) { writeAt(t, filepath.Join(d, "f"), "X", 3) }, []diff{{"f", "content"}, {"f", "mtime"}}},
		{"size", Options{}, func(t *testing.T, d string) { must(t, os.Truncate(filepath.Join(d, "f"), 2)) }, []diff{{"f", "size"}, {"f", "mtime"}}},
		{"hole-filled-with-zeros", Options{}, func(t *testing.T, d string) {
			writeAt(t, filepath.Join(d, "sparse"), string(make([]byte, 4096)), 1<<20)
		}, []diff{{"sparse", "holes"}, {"sparse", "mtime"}}},
		{"hole-filled-with-data", Options{}, func(t *testing.T, d string) { writeAt(t, filepath.Join(d, "sparse"), "data", 1<<20) },
			[]diff{{"sparse", "holes"}, {"sparse", "content"}, {"sparse", "mtime"}}},
		{"preallocated", Options{}, func(t *testing.T, d string) {
			f, err := os.OpenFile(filepath.Join(d, "sparse"), os.O_WRONLY, 0)
			must(t, err)
			must(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 1<<20, 4<<20))
			f.Close()
			touch(t, d, "sparse", 0, 0)
		}, []diff{{"sparse", "blocks"}}},
		{"xattr-added", Options{}, func(t *testing.T, d string) { setx(t, d, "f", "user.new", "1") }, []diff{{"f", "xattr user.new"}}},
		{"xattr-changed", Options{}, func(t *testing.T, d string) { setx(t, d, "f", "user.a", "2") }, []diff{{"f", "xattr user.a"}}},
		{"xattr-removed", Options{}, func(t *testing.T, d string) { must(t, unix.Removexattr(filepath.Join(d, "f"), "user.a")) }, []diff{{"f", "xattr user.a"}}},
		{"xattr-ignored", Options{IgnoreXattrs: []string{"user."}}, func(t *testing.T, d string) { setx(t, d, "f", "user.new", "1") }, nil},
		{"trusted-on-symlink", Options{}, func(t *testing.T, d string) {
			must(t, unix.Lsetxattr(filepath.Join(d, "link"), "trusted.x", []byte("y"), 0))
		}, []diff{{"link", "xattr trusted.x"}}},
		{"acl", Options{}, func(t *testing.T, d string) { run(t, "setfacl", "-m", "u:nobody:r", filepath.Join(d, "f")) },
			[]diff{{"f", "acl access"}}},
		{"default-acl", Options{}, func(t *testing.T, d string) { run(t, "setfacl", "-d", "-m", "u:nobody:r", filepath.Join(d, "dir")) },
			[]diff{{"dir", "acl default"}}},
		{"flags", Options{}, func(t *testing.T, d string) { run(t, "chattr", "+d", filepath.Join(d, "f")) }, []diff{{"f", "flags"}}},
		{"immutable", Options{}, func(t *testing.T, d string) { run(t, "chattr", "+i", filepath.Join(d, "dir")) }, []diff{{"dir", "flags"}}},
		{"symlink-target", Options{}, func(t *testing.T, d string) { relink(t, d, "link", "f\xfe") }, []diff{{"link", "target"}}},
		{"device", Options{}, func(t *testing.T, d string) {
			must(t, os.Remove(filepath.Join(d, "dev")))
			must(t, unix.Mknod(filepath.Join(d, "dev"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 5))))
			touch(t, d, "dev", 0, 0)
			touch(t, d, ".", 0, 0)
		}, []diff{{"dev", "rdev"}}},
		{"type", Options{}, func(t *testing.T, d string) {
			must(t, os.Remove(filepath.Join(d, "fifo")))
			must(t, os.WriteFile(filepath.Join(d, "fifo"), nil, 0o600))
			touch(t, d, ".", 0, 0)
		}, []diff{{"fifo", "type"}}},
		{"missing", Options{}, func(t *testing.T, d string) {
			must(t, os.Remove(filepath.Join(d, "dir/inner")))
			touch(t, d, "dir", 0, 0)
		}, []diff{{"dir/inner", "missing"}}},
		{"missing-dir", Options{}, func(t *testing.T, d string) {
			must(t, os.RemoveAll(filepath.Join(d, "dir")))
			touch(t, d, ".", 0, 0)
		}, []diff{{"dir", "missing"}}},
		{"extra", Options{}, func(t *testing.T, d string) {
			must(t, os.WriteFile(filepath.Join(d, "dir/new\n"), nil, 0o600))
			touch(t, d, "dir", 0, 0)
		}, []diff{{"dir/new\n", "extra"}}},
		{"socket-not-restored", Options{}, func(*testing.T, string) {}, nil},
		{"socket-reported", Options{Sockets: true}, func(*testing.T, string) {}, []diff{{"sock", "missing"}}},
		{"hardlink-broken", Options{}, func(t *testing.T, d string) {
			p := filepath.Join(d, "sub/link-to-f")
			must(t, os.Remove(p))
			must(t, os.WriteFile(p, []byte("0123456789"), 0o644))
			must(t, unix.Setxattr(p, "user.a", []byte("1"), 0))
			touch(t, d, "sub/link-to-f", 0, 0)
			touch(t, d, "sub", 0, 0)
		}, []diff{{"sub/link-to-f", "hardlink"}}},
		{"hardlink-added", Options{}, func(t *testing.T, d string) {
			must(t, os.Remove(filepath.Join(d, "other")))
			must(t, os.Link(filepath.Join(d, "f"), filepath.Join(d, "other")))
			touch(t, d, ".", 0, 0)
		}, []diff{{"other", "hardlink"}, {"other", "size"}, {"other", "xattr user.a"}}},
		{"root-mode", Options{}, func(t *testing.T, d string) { must(t, os.Chmod(d, 0o700)) }, []diff{{".", "mode"}}},
		{"root-skipped", Options{SkipRoot: true}, func(t *testing.T, d string) { must(t, os.Chmod(d, 0o700)) }, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			t.Cleanup(func() { testtree.Unprotect(dst) })
			smallTree(t, src)
			must(t, os.Mkdir(dst, 0o700))
			copyTree(t, src, dst)
			tc.change(t, dst)
			diffs, err := Compare(src, dst, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			var got []diff
			for _, d := range diffs {
				got = append(got, diff{string(d.Path), d.Field})
				if !strings.HasPrefix(d.String(), quote(d.Path)+": "+d.Field) {
					t.Errorf("String() = %q", d.String())
				}
			}
			sortDiffs := func(a, b diff) int { return strings.Compare(a.path+"\x00"+a.field, b.path+"\x00"+b.field) }
			slices.SortFunc(got, sortDiffs)
			want := slices.Clone(tc.want)
			slices.SortFunc(want, sortDiffs)
			if !cmp.Equal(want, got, cmp.AllowUnexported(diff{})) {
				logDiffs(t, diffs)
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
}

// smallTree is a tree with one of each kind, times fixed.
func smallTree(t *testing.T, root string) {
	t.Helper()
	must(t, os.Mkdir(root, 0o755))
	must(t, os.WriteFile(filepath.Join(root, "f"), []byte("0123456789"), 0o644))
	setx(t, root, "f", "user.a", "1")
	must(t, os.WriteFile(filepath.Join(root, "other"), []byte("other"), 0o644))
	must(t, os.Mkdir(filepath.Join(root, "dir"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "dir/inner"), []byte("inner"), 0o600))
	must(t, os.Mkdir(filepath.Join(root, "sub"), 0o755))
	must(t, os.Link(filepath.Join(root, "f"), filepath.Join(root, "sub/link-to-f")))
	must(t, os.Symlink("f", filepath.Join(root, "link")))
	must(t, unix.Mknod(filepath.Join(root, "dev"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))))
	must(t, unix.Mkfifo(filepath.Join(root, "fifo"), 0o600))
	must(t, unix.Mknod(filepath.Join(root, "sock"), unix.S_IFSOCK|0o755, 0))
	f, err := os.Create(filepath.Join(root, "sparse"))
	must(t, err)
	f.WriteAt([]byte("head"), 0)
	f.WriteAt([]byte("tail"), 8<<20)
	f.Close()
	for _, p := range []string{"f", "other", "dir/inner", "link", "dev", "fifo", "sock", "sparse", "dir", "sub", "."} {
		touch(t, root, p, 0, 0)
	}
}

// touch sets fixed times; da and dm shift atime and mtime.
func touch(t *testing.T, root, rel string, da, dm int64) {
	t.Helper()
	ts := []unix.Timespec{{Sec: 1500000000 + da, Nsec: 5}, {Sec: 1400000000 + dm, Nsec: 7}}
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(root, rel), ts, unix.AT_SYMLINK_NOFOLLOW))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func setx(t *testing.T, root, rel, name, value string) {
	t.Helper()
	must(t, unix.Lsetxattr(filepath.Join(root, rel), name, []byte(value), 0))
}

func writeAt(t *testing.T, p, s string, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt([]byte(s), off)
	must(t, err)
	must(t, f.Close())
}

func relink(t *testing.T, root, rel, target string) {
	t.Helper()
	p := filepath.Join(root, rel)
	var st unix.Stat_t
	must(t, unix.Lstat(p, &st))
	must(t, os.Remove(p))
	must(t, os.Symlink(target, p))
	must(t, os.Lchown(p, int(st.Uid), int(st.Gid)))
	touch(t, root, rel, 0, 0)
	touch(t, root, filepath.Dir(rel), 0, 0)
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %q: %v\n%s (install Debian packages acl and e2fsprogs, see .ci/run)", name, args, err, out)
	}
}

// version is a recorded version: nodes in tree order with their content.
type version struct {
	nodes   []*tree.Node
	content map[string][]byte
}

func record(t *testing.T, root string) version {
	t.Helper()
	src, err := newDirSource(root, Options{})
	must(t, err)
	defer src.close()
	v := version{content: map[string][]byte{}}
	for {
		n, err := src.next()
		if err == io.EOF {
			break
		}
		must(t, err)
		if n.Type == tree.TypeFile && n.LinkTo == nil {
			r, err := src.open(n)
			must(t, err)
			b, err := io.ReadAll(r)
			must(t, err)
			v.content[string(n.Path)] = b
			for rest := len(b); rest > 0; rest -= 1 << 20 {
				n.Chunks = append(n.Chunks, tree.ChunkRef{Len: uint32(min(rest, 1<<20))})
			}
		}
		v.nodes = append(v.nodes, n)
	}
	if p := src.problems(); len(p) > 0 {
		t.Fatalf("recording: %v", p)
	}
	return v
}

func (v version) stream() (func() (*tree.Node, error), func(*tree.Node) (io.ReadCloser, error)) {
	i := 0
	next := func() (*tree.Node, error) {
		if i == len(v.nodes) {
			return nil, io.EOF
		}
		i++
		return v.nodes[i-1], nil
	}
	open := func(n *tree.Node) (io.ReadCloser, error) {
		b, ok := v.content[string(n.Path)]
		if !ok {
			return nil, fmt.Errorf("no content for %q", n.Path)
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	return next, open
}

// TestCompareVersion compares a recorded node stream (as a version holds it,
// LinkTo for hard links, extents for sparse files) with its directory, then
// with a mutated copy, through the encoded listing.
func TestCompareVersion(t *testing.T) {
	src, dst, _ := newTree(t, testtree.Options{Drop: []string{testtree.CaseLarge}, SparseSize: 256 << 20, Wide: 50})
	v := record(t, src)
	links := 0
	for _, n := range v.nodes {
		if n.LinkTo != nil {
			links++
		}
	}
	if links < 4 {
		t.Errorf("only %d LinkTo nodes recorded", links)
	}
	// Through the listing encoding, as a version is stored.
	var buf bytes.Buffer
	lw, err := tree.NewWriter(&buf)
	must(t, err)
	for _, n := range v.nodes {
		must(t, lw.Write(n))
	}
	lr, err := tree.NewReader(&buf)
	must(t, err)
	_, open := v.stream()
	diffs, err := CompareVersion(lr.Next, open, src, Options{Atime: true})
	must(t, err)
	if len(diffs) != 0 {
		logDiffs(t, diffs)
		t.Fatalf("%d differences between a tree and its own record", len(diffs))
	}
	copyTree(t, src, dst)
	changes, err := testtree.MutateReport(dst, 99)
	must(t, err)
	next, open := v.stream()
	diffs, err = CompareVersion(next, open, dst, Options{})
	must(t, err)
	checkExplained(t, changes, diffs)
}

func TestCompareVersionStatus(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644))
	v := record(t, dir)
	v.nodes[1].Status, v.nodes[1].Err = tree.StatusUnreadable, "permission denied"
	v.nodes = append(v.nodes, &tree.Node{Path: []byte("gone"), Type: tree.TypeDeleted})
	next, open := v.stream()
	diffs, err := CompareVersion(next, open, dir, Options{})
	must(t, err)
	if len(diffs) != 1 || diffs[0].Field != "status" || !strings.Contains(diffs[0].Got, "permission denied") {
		t.Errorf("diffs %v", diffs)
	}
}

func TestCompareVersionWithoutRoot(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644))
	v := record(t, dir)
	v.nodes = v.nodes[1:] // no "." node
	next, open := v.stream()
	diffs, err := CompareVersion(next, open, dir, Options{})
	must(t, err)
	if len(diffs) != 0 {
		t.Errorf("diffs %v", diffs)
	}
}

func TestLimitAndErrors(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for i := 0; i < 10; i++ {
		must(t, os.WriteFile(filepath.Join(a, fmt.Sprint(i)), nil, 0o644))
	}
	diffs, err := Compare(a, b, Options{Limit: 3, SkipRoot: true})
	must(t, err)
	if len(diffs) != 3 {
		t.Errorf("limit 3: %d differences", len(diffs))
	}
	if _, err := Compare(a, filepath.Join(b, "nonexistent"), Options{}); err == nil {
		t.Errorf("missing directory: no error")
	}
}

func TestDifferenceString(t *testing.T) {
	tests := []struct {
		d    Difference
		want string
	}{
		{Difference{Path: []byte("a/b"), Field: "mode", Want: "0644", Got: "0600"}, "a/b: mode: want 0644, got 0600"},
		{Difference{Path: []byte("new\nline"), Field: "missing", Want: "file", Got: "nothing"}, `"new\nline": missing: want file, got nothing`},
		{Difference{Path: []byte("\xff"), Field: "extra", Want: "nothing", Got: "fifo"}, `"\xff": extra: want nothing, got fifo`},
		{Difference{Path: []byte(" x"), Field: "content"}, `" x": content`},
	}
	for _, tc := range tests {
		if got := tc.d.String(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	if s := xattrString(meta.XattrACLAccess, meta.EncodeACL([]meta.ACLEntry{{Tag: meta.ACLUserObj, Perm: 6}, {Tag: meta.ACLOther, Perm: 4}})); s != "user::rw-,other::r--" {
		t.Errorf("acl text %q", s)
	}
	names := []string{"b", "a/c", "a", "a.b"}
	sort.Strings(names)
	_ = names
}
