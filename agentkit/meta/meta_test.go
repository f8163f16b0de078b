package meta

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"vaultnode/internal/tree"
)

// requireRoot fails loudly: these tests exercise privileged metadata and CI
// runs as root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (CAP_CHOWN, CAP_MKNOD, CAP_LINUX_IMMUTABLE, CAP_SYS_ADMIN for trusted.*); run it as root as CI does")
	}
}

func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not found: install Debian packages acl attr e2fsprogs (see .ci/run)", name)
	}
}

func openDir(t *testing.T, path string) int {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// unprotectAll clears immutable/append-only under dir so TempDir cleanup works.
func unprotectAll(t *testing.T, dir string) {
	t.Cleanup(func() {
		filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && (fi.Mode().IsRegular() || fi.IsDir()) {
				Unprotect(unix.AT_FDCWD, p)
			}
			return nil
		})
	})
}

func mustLstat(t *testing.T, dirfd int, name string) tree.Node {
	t.Helper()
	n, err := Lstat(dirfd, name)
	if err != nil {
		t.Fatalf("Lstat %q: %v", name, err)
	}
	return n
}

// restorable drops what a restore cannot reproduce.
func restorable(n tree.Node) tree.Node {
	n.Ctime, n.Btime, n.Dev, n.Ino, n.Nlink = tree.Timespec{}, tree.Timespec{}, 0, 0, 0
	n.Flags &= SettableFlags
	n.Extents, n.Sparse = nil, false
	return n
}

func TestLstatTypes(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	fd := openDir(t, dir)
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("hello"), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, mk := range []func() error{
		func() error { return unix.Mkdirat(fd, "d", 0o751) },
		func() error { return unix.Symlinkat("f\xff\nx", fd, "l") },
		func() error { return unix.Mknodat(fd, "c", unix.S_IFCHR|0o600, int(unix.Mkdev(4095, 1048575))) },
		func() error { return unix.Mknodat(fd, "b", unix.S_IFBLK|0o600, int(unix.Mkdev(7, 3))) },
		func() error { return unix.Mknodat(fd, "p", unix.S_IFIFO|0o600, 0) },
		func() error { return unix.Mknodat(fd, "s", unix.S_IFSOCK|0o755, 0) },
	} {
		if err := mk(); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name   string
		typ    tree.Type
		mode   uint32
		size   int64
		rdev   uint64
		target string
	}{
		{"f", tree.TypeFile, 0o640, 5, 0, ""},
		{"d", tree.TypeDir, 0o751, 0, 0, ""},
		{"l", tree.TypeSymlink, 0o777, 4, 0, "f\xff\nx"},
		{"c", tree.TypeChar, 0o600, 0, unix.Mkdev(4095, 1048575), ""},
		{"b", tree.TypeBlock, 0o600, 0, unix.Mkdev(7, 3), ""},
		{"p", tree.TypeFIFO, 0o600, 0, 0, ""},
		{"s", tree.TypeSocket, 0o755, 0, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := mustLstat(t, fd, tc.name)
			if n.Type != tc.typ || n.Mode != tc.mode || n.Size != tc.size || n.Rdev != tc.rdev || string(n.Target) != tc.target {
				t.Errorf("got type %v mode %o size %d rdev %x target %q, want %v %o %d %x %q",
					n.Type, n.Mode, n.Size, n.Rdev, n.Target, tc.typ, tc.mode, tc.size, tc.rdev, tc.target)
			}
			if n.User != "root" || n.Group != "root" || n.Ino == 0 || n.Dev == 0 || n.Nlink == 0 {
				t.Errorf("owner %q:%q ino %d dev %d nlink %d", n.User, n.Group, n.Ino, n.Dev, n.Nlink)
			}
			if n.Mtime.Sec == 0 || n.Ctime.Sec == 0 || n.Btime.Sec == 0 {
				t.Errorf("times not read: m %v c %v b %v", n.Mtime, n.Ctime, n.Btime)
			}
		})
	}
}

// copyNode recreates src/name as dst/name with this package's restore calls.
func copyNode(t *testing.T, srcfd int, dstfd int, name string, opts Options) tree.Node {
	t.Helper()
	n := mustLstat(t, srcfd, name)
	switch n.Type {
	case tree.TypeFile:
		in, err := os.OpenFile(xattrPath(srcfd, name), os.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		ext, sparse, err := DataExtents(in, n.Size)
		if err != nil {
			t.Fatal(err)
		}
		n.Extents, n.Sparse = ext, sparse
		out, err := CreateFile(dstfd, name, opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteSparse(out, &n, ExtentReader(in, ext)); err != nil {
			t.Fatal(err)
		}
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
	default:
		if err := Create(dstfd, name, &n, opts); err != nil {
			t.Fatal(err)
		}
	}
	if err := Apply(dstfd, name, &n, opts); err != nil {
		t.Fatalf("Apply %q: %v", name, err)
	}
	return n
}

func TestXattrsRoundTrip(t *testing.T) {
	requireRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	sfd, dfd := openDir(t, src), openDir(t, dst)
	// security.capability for cap_net_raw+ep, as setcap writes it (VFS_CAP_REVISION_2).
	capv := []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	want := []tree.Xattr{
		{Name: "security.capability", Value: capv},
		{Name: "security.selinux", Value: []byte("system_u:object_r:bin_t:s0\x00")},
		{Name: "trusted.bin", Value: []byte{0, 1, 2, 0xff}},
		{Name: "trusted.empty", Value: []byte{}},
		{Name: "user.comment", Value: []byte("hello\nworld")},
	}
	for _, x := range want {
		if err := unix.Lsetxattr(filepath.Join(src, "f"), x.Name, x.Value, 0); err != nil {
			t.Fatalf("set %s: %v", x.Name, err)
		}
	}
	if err := unix.Symlinkat("f", sfd, "l"); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(src, "l"), "trusted.onlink", []byte("L"), 0); err != nil {
		t.Fatal(err)
	}
	// The target already has an attribute the source lacks: Apply removes it.
	if err := os.WriteFile(filepath.Join(dst, "f"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(dst, "f"), "user.stale", []byte("old"), 0); err != nil {
		t.Fatal(err)
	}
	n := mustLstat(t, sfd, "f")
	if diff := cmp.Diff(want, n.Xattrs); diff != "" {
		t.Fatalf("Lstat xattrs (-want +got):\n%s", diff)
	}
	if err := Apply(dfd, "f", &n, Options{}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, mustLstat(t, dfd, "f").Xattrs); diff != "" {
		t.Errorf("restored xattrs (-want +got):\n%s", diff)
	}
	if out := run(t, "getcap", filepath.Join(dst, "f")); !strings.Contains(out, "cap_net_raw=ep") {
		t.Errorf("getcap on restored file: %q", out)
	}
	ln := copyNode(t, sfd, dfd, "l", Options{})
	if got := mustLstat(t, dfd, "l"); !cmp.Equal(ln.Xattrs, got.Xattrs) || len(got.Xattrs) != 1 {
		t.Errorf("symlink xattrs: got %v, want %v", got.Xattrs, ln.Xattrs)
	}
	// The symlink's target must not have gained the link's attribute.
	if _, err := unix.Getxattr(filepath.Join(dst, "f"), "trusted.onlink", nil); !errors.Is(err, unix.ENODATA) {
		t.Errorf("link xattr leaked to its target: %v", err)
	}
}

func TestACLs(t *testing.T) {
	requireRoot(t)
	requireTool(t, "setfacl")
	src, dst := t.TempDir(), t.TempDir()
	sfd, dfd := openDir(t, src), openDir(t, dst)
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(src, "d"), 0o2775); err != nil {
		t.Fatal(err)
	}
	run(t, "setfacl", "-m", "u:nobody:rx,g:nogroup:r,u:1234:rwx", filepath.Join(src, "f"))
	run(t, "setfacl", "-m", "u:nobody:rwx", "-d", "-m", "g:nogroup:rwx,u:4321:r", filepath.Join(src, "d"))
	for _, name := range []string{"f", "d"} {
		n := copyNode(t, sfd, dfd, name, Options{})
		a := run(t, "getfacl", "-n", "--omit-header", filepath.Join(src, name))
		b := run(t, "getfacl", "-n", "--omit-header", filepath.Join(dst, name))
		if a != b {
			t.Errorf("%s: getfacl differs:\n%s\nrestored:\n%s", name, a, b)
		}
		if !strings.Contains(a, "1234") && !strings.Contains(a, "4321") {
			t.Errorf("%s: ACL not set up: %s", name, a)
		}
		for _, x := range n.Xattrs {
			es, err := ParseACL(x.Value)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(EncodeACL(es), x.Value) {
				t.Errorf("%s: EncodeACL(ParseACL) changed the value", x.Name)
			}
			back, err := ParseACLText(ACLText(x.Value))
			if err != nil || !bytes.Equal(EncodeACL(back), x.Value) {
				t.Errorf("%s: text %q does not round trip: %v", x.Name, ACLText(x.Value), err)
			}
		}
		if got := mustLstat(t, dfd, name); got.Mode != n.Mode {
			t.Errorf("%s: mode %o, want %o", name, got.Mode, n.Mode)
		}
	}
}

func TestFlags(t *testing.T) {
	requireRoot(t)
	requireTool(t, "chattr")
	src, dst := t.TempDir(), t.TempDir()
	unprotectAll(t, src)
	unprotectAll(t, dst)
	sfd, dfd := openDir(t, src), openDir(t, dst)
	tests := []struct {
		name, chattr string
		want         uint32
		dir          bool
	}{
		{"immutable", "+i", FlagImmutable, false},
		{"append", "+a", FlagAppend, false},
		{"nodump", "+d", FlagNoDump, false},
		{"noatime", "+A", FlagNoAtime, false},
		{"all", "+iadA", FlagImmutable | FlagAppend | FlagNoDump | FlagNoAtime, false},
		{"dir", "+dA", FlagNoDump | FlagNoAtime, true},
		{"dir-immutable", "+i", FlagImmutable, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(src, tc.name)
			var err error
			if tc.dir {
				err = os.Mkdir(p, 0o755)
			} else {
				err = os.WriteFile(p, []byte("content of "+tc.name), 0o644)
			}
			if err != nil {
				t.Fatal(err)
			}
			run(t, "chattr", tc.chattr, p)
			n := copyNode(t, sfd, dfd, tc.name, Options{})
			if n.Flags&SettableFlags != tc.want {
				t.Errorf("Lstat flags %s, want %s", FlagString(n.Flags), FlagString(tc.want))
			}
			a := strings.Fields(run(t, "lsattr", "-d", p))[0]
			b := strings.Fields(run(t, "lsattr", "-d", filepath.Join(dst, tc.name)))[0]
			if a != b {
				t.Errorf("lsattr %s, restored %s", a, b)
			}
			if got := mustLstat(t, dfd, tc.name); got.Flags != n.Flags {
				t.Errorf("restored flags %s, want %s", FlagString(got.Flags), FlagString(n.Flags))
			}
		})
	}
	// Unprotect lets an immutable target be replaced.
	if err := Create(dfd, "immutable", &tree.Node{Type: tree.TypeFIFO}, Options{Replace: true}); err != nil {
		t.Fatalf("replace immutable file: %v", err)
	}
	if n := mustLstat(t, dfd, "immutable"); n.Type != tree.TypeFIFO {
		t.Errorf("replaced type %v", n.Type)
	}
	if FlagString(FlagImmutable|FlagAppend) != "ia" || FlagString(0) != "-" {
		t.Errorf("FlagString: %q %q", FlagString(FlagImmutable|FlagAppend), FlagString(0))
	}
}

func blocks(t *testing.T, p string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks
}

func fileSum(t *testing.T, p string, ext []tree.Extent) [32]byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, ExtentReader(f, ext)); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func TestSparse(t *testing.T) {
	const gib = int64(1) << 30
	const mib = int64(1) << 20
	tests := []struct {
		name       string
		size       int64
		data       []tree.Extent // written ranges
		wantSparse bool
	}{
		{"100GiB-10MiB", 100 * gib, []tree.Extent{{Off: 0, Len: 3 * mib}, {Off: 30 * gib, Len: 2 * mib}, {Off: 77*gib + 4096, Len: 3 * mib}, {Off: 100*gib - 2*mib, Len: 2 * mib}}, true},
		{"trailing-hole", 64 * mib, []tree.Extent{{Off: 0, Len: mib}}, true},
		{"leading-hole", 64 * mib, []tree.Extent{{Off: 63 * mib, Len: mib}}, true},
		{"all-hole", 64 * mib, nil, true},
		{"dense", 3*mib + 17, []tree.Extent{{Off: 0, Len: 3*mib + 17}}, false},
		{"empty", 0, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			f, err := os.Create(src)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 1<<20)
			for i := range buf {
				buf[i] = byte(i*7 + i>>8 + 1)
			}
			for _, e := range tc.data {
				for off := e.Off; off < e.Off+e.Len; off += int64(len(buf)) {
					n := min(int64(len(buf)), e.Off+e.Len-off)
					if _, err := f.WriteAt(buf[:n], off); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := f.Truncate(tc.size); err != nil {
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			ext, sparse, err := DataExtents(f, tc.size)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			if sparse != tc.wantSparse {
				t.Errorf("sparse %v, want %v (extents %v)", sparse, tc.wantSparse, ext)
			}
			var data int64
			for _, e := range ext {
				data += e.Len
			}
			var written int64
			for _, e := range tc.data {
				written += e.Len
			}
			// Extents are block aligned: they cover what was written, at most a block more per extent.
			if data < written || data > written+int64(len(tc.data))*8192 {
				t.Errorf("extents %v hold %d bytes, wrote %d", ext, data, written)
			}
			n := tree.Node{Type: tree.TypeFile, Size: tc.size, Sparse: sparse, Extents: ext}
			in, err := os.Open(src)
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			out, err := os.Create(dst)
			if err != nil {
				t.Fatal(err)
			}
			if err := WriteSparse(out, &n, ExtentReader(in, ext)); err != nil {
				t.Fatal(err)
			}
			got, gotSparse, err := DataExtents(out, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			out.Close()
			if !cmp.Equal(got, ext) || gotSparse != sparse {
				t.Errorf("restored extents %v sparse %v, want %v %v", got, gotSparse, ext, sparse)
			}
			if a, b := blocks(t, src), blocks(t, dst); b != a {
				t.Errorf("restored file takes %d blocks, original %d", b, a)
			}
			if fi, err := os.Stat(dst); err != nil || fi.Size() != tc.size {
				t.Errorf("restored size %v, want %d (%v)", fi.Size(), tc.size, err)
			}
			if fileSum(t, src, ext) != fileSum(t, dst, ext) {
				t.Errorf("restored data differs")
			}
		})
	}
}

func TestWriteSparseShortData(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := tree.Node{Type: tree.TypeFile, Size: 100}
	if err := WriteSparse(f, &n, strings.NewReader("short")); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("got %v, want unexpected EOF", err)
	}
}

func TestNamesAndDeepPaths(t *testing.T) {
	requireRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	sfd, dfd := openDir(t, src), openDir(t, dst)
	// A chain of 255-byte directory names far deeper than PATH_MAX.
	long := strings.Repeat("d", 255)
	sdeep, ddeep := sfd, dfd
	for i := 0; i < 24; i++ {
		if err := unix.Mkdirat(sdeep, long, 0o755); err != nil {
			t.Fatal(err)
		}
		nd := copyNode(t, sdeep, ddeep, long, Options{})
		if nd.Type != tree.TypeDir {
			t.Fatalf("level %d: type %v", i, nd.Type)
		}
		var err error
		if sdeep, err = unix.Openat(sdeep, long, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
			t.Fatal(err)
		}
		if ddeep, err = unix.Openat(ddeep, long, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(sdeep)
		defer unix.Close(ddeep)
	}
	names := []string{
		"\xff\xfe not utf-8 \x80",
		"new\nline",
		strings.Repeat("n", 255),
		strings.Repeat("\xe2\x82\xac", 85), // 255 bytes of euro signs
		" lead and trail ",
		"-dash",
		"back\\slash",
	}
	for _, dirfd := range [][2]int{{sfd, dfd}, {sdeep, ddeep}} {
		for i, name := range names {
			fd, err := unix.Openat(dirfd[0], name, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o640)
			if err != nil {
				t.Fatalf("create %q: %v", name, err)
			}
			unix.Write(fd, []byte(name))
			unix.Close(fd)
			if err := unix.Lsetxattr(xattrPath(dirfd[0], name), "user.i", []byte{byte(i)}, 0); err != nil {
				t.Fatal(err)
			}
			if err := unix.UtimesNanoAt(dirfd[0], name, []unix.Timespec{{Sec: 1, Nsec: 2}, {Sec: -86400*365*30 - 7, Nsec: 999999999}}, 0); err != nil {
				t.Fatal(err)
			}
			want := copyNode(t, dirfd[0], dirfd[1], name, Options{})
			got := mustLstat(t, dirfd[1], name)
			if diff := cmp.Diff(restorable(want), restorable(got)); diff != "" {
				t.Errorf("%q: (-want +got)\n%s", name, diff)
			}
		}
	}
}

func TestModesOwnersTimes(t *testing.T) {
	requireRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	sfd, dfd := openDir(t, src), openDir(t, dst)
	capv := []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	tests := []struct {
		name     string
		mk       func(name string) error
		mode     uint32
		uid, gid int
		times    [2]unix.Timespec
		caps     bool
	}{
		{"setuid", file, 0o4755, 1234, 5678, [2]unix.Timespec{{Sec: 1700000000, Nsec: 123456789}, {Sec: 1234567890, Nsec: 987654321}}, true},
		{"setgid", file, 0o2711, 65534, 65534, [2]unix.Timespec{{Sec: 4102444800, Nsec: 1}, {Sec: 4102444800, Nsec: 999999999}}, false},
		{"sticky-dir", dir, 0o1777, 0, 0, [2]unix.Timespec{{Sec: -1, Nsec: 5}, {Sec: -1000000000, Nsec: 5}}, false},
		{"setgid-dir", dir, 0o2770, 1000, 1000, [2]unix.Timespec{{Sec: 0, Nsec: 0}, {Sec: 1, Nsec: 1}}, false},
		{"nothing", file, 0o000, 4000000000, 4000000001, [2]unix.Timespec{{Sec: 5, Nsec: 0}, {Sec: 6, Nsec: 0}}, false},
		{"symlink", func(n string) error { return unix.Symlinkat("/nowhere", sfd, n) }, 0o777, 33, 44, [2]unix.Timespec{{Sec: 7, Nsec: 8}, {Sec: 9, Nsec: 10}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.mk(filepath.Join(src, tc.name)); err != nil {
				t.Fatal(err)
			}
			if err := unix.Fchownat(sfd, tc.name, tc.uid, tc.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatal(err)
			}
			if tc.name != "symlink" {
				if err := unix.Fchmodat(sfd, tc.name, tc.mode, 0); err != nil {
					t.Fatal(err)
				}
			}
			if tc.caps {
				if err := unix.Setxattr(filepath.Join(src, tc.name), "security.capability", capv, 0); err != nil {
					t.Fatal(err)
				}
			}
			if err := unix.UtimesNanoAt(sfd, tc.name, tc.times[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatal(err)
			}
			want := mustLstat(t, sfd, tc.name)
			if want.Mode != tc.mode || want.UID != uint32(tc.uid) || want.Mtime.Nsec != tc.times[1].Nsec {
				t.Fatalf("setup: %+v", want)
			}
			// Created by root with the wrong mode, then applied. Reading a
			// symlink's target sets its atime, so compare with what the copy read.
			want = copyNode(t, sfd, dfd, tc.name, Options{})
			got := mustLstat(t, dfd, tc.name)
			if diff := cmp.Diff(restorable(want), restorable(got)); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
	// By name: the recorded name wins over the recorded number.
	if err := os.WriteFile(filepath.Join(dst, "byname"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	n := tree.Node{Type: tree.TypeFile, Mode: 0o644, UID: 777, GID: 888, User: "nobody", Group: "nogroup"}
	if err := Apply(dfd, "byname", &n, Options{ByName: true}); err != nil {
		t.Fatal(err)
	}
	uid, _ := LookupUser("nobody")
	gid, _ := LookupGroup("nogroup")
	if got := mustLstat(t, dfd, "byname"); got.UID != uid || got.GID != gid || got.User != "nobody" {
		t.Errorf("by name: %d:%d %q, want %d:%d", got.UID, got.GID, got.User, uid, gid)
	}
	n.User = "no-such-user-here"
	if err := Apply(dfd, "byname", &n, Options{ByName: true}); err != nil {
		t.Fatal(err)
	}
	if got := mustLstat(t, dfd, "byname"); got.UID != 777 {
		t.Errorf("unknown name: uid %d, want the number 777", got.UID)
	}
}

func file(p string) error { return os.WriteFile(p, []byte("#!/bin/sh\n"), 0o644) }
func dir(p string) error  { return os.Mkdir(p, 0o755) }

func TestSpecialFiles(t *testing.T) {
	requireRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	sfd, dfd := openDir(t, src), openDir(t, dst)
	unix.Mknodat(sfd, "null", unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))
	unix.Mknodat(sfd, "loop", unix.S_IFBLK|0o660, int(unix.Mkdev(7, 200)))
	unix.Mknodat(sfd, "big", unix.S_IFCHR|0o600, int(unix.Mkdev(4095, 1048575)))
	unix.Mknodat(sfd, "fifo", unix.S_IFIFO|0o620, 0)
	unix.Symlinkat("", sfd, "unused") // Linux refuses empty targets; ignore
	unix.Symlinkat("../dangling/\xff", sfd, "dangling")
	for _, name := range []string{"null", "loop", "big", "fifo", "dangling"} {
		want := copyNode(t, sfd, dfd, name, Options{})
		got := mustLstat(t, dfd, name)
		if diff := cmp.Diff(restorable(want), restorable(got)); diff != "" {
			t.Errorf("%s: (-want +got)\n%s", name, diff)
		}
	}
	unix.Mknodat(sfd, "sock", unix.S_IFSOCK|0o777, 0)
	n := mustLstat(t, sfd, "sock")
	if err := Create(dfd, "sock", &n, Options{}); !errors.Is(err, ErrSocket) {
		t.Errorf("socket: %v, want ErrSocket", err)
	}
	if err := Create(dfd, "f", &tree.Node{Type: tree.TypeFile}, Options{}); !errors.Is(err, ErrType) {
		t.Errorf("regular file: %v, want ErrType", err)
	}
	// Existing non-directories are kept unless Replace.
	if err := Create(dfd, "fifo", &tree.Node{Type: tree.TypeFIFO}, Options{}); !errors.Is(err, unix.EEXIST) {
		t.Errorf("existing fifo: %v, want EEXIST", err)
	}
	if err := Create(dfd, "fifo", &tree.Node{Type: tree.TypeSymlink, Target: []byte("x")}, Options{Replace: true}); err != nil {
		t.Errorf("replace fifo: %v", err)
	}
	if err := Create(dfd, ".", &tree.Node{Type: tree.TypeDir}, Options{}); err != nil {
		t.Errorf("existing dir: %v", err)
	}
}

func TestHardLinks(t *testing.T) {
	src := t.TempDir()
	sfd := openDir(t, src)
	os.Mkdir(filepath.Join(src, "a"), 0o755)
	os.Mkdir(filepath.Join(src, "b"), 0o755)
	os.WriteFile(filepath.Join(src, "a", "f"), []byte("x"), 0o644)
	if err := Link(sfd, "a/f", sfd, "b/g", Options{}); err != nil {
		t.Fatal(err)
	}
	if err := Link(sfd, "a/f", sfd, "b/g", Options{}); !errors.Is(err, unix.EEXIST) {
		t.Errorf("second link: %v, want EEXIST", err)
	}
	if err := Link(sfd, "a/f", sfd, "b/g", Options{Replace: true}); err != nil {
		t.Errorf("replace link: %v", err)
	}
	a, b := mustLstat(t, sfd, "a/f"), mustLstat(t, sfd, "b/g")
	if a.Ino != b.Ino || a.Dev != b.Dev || a.Nlink != 2 {
		t.Errorf("a %d/%d/%d b %d/%d", a.Dev, a.Ino, a.Nlink, b.Dev, b.Ino)
	}
	// A link that replaces another file, and one that is there already,
	// through a descriptor.
	os.WriteFile(filepath.Join(src, "b", "h"), []byte("other"), 0o644)
	fd, err := unix.Open(filepath.Join(src, "a", "f"), unix.O_PATH, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	bfd := openDir(t, filepath.Join(src, "b"))
	for _, name := range []string{"h", "g"} {
		if err := LinkFD(fd, bfd, name, Options{Replace: true}); err != nil {
			t.Errorf("replace %s by a link: %v", name, err)
		}
		if h := mustLstat(t, bfd, name); h.Ino != a.Ino {
			t.Errorf("%s is not a link of a/f", name)
		}
	}
	requireOnly(t, filepath.Join(src, "b"), "g", "h")
}

// Replacing a non-directory puts the new object at the name in one
// rename: no temporary name stays, whatever was there.
func TestCreateReplaces(t *testing.T) {
	dst := t.TempDir()
	dfd := openDir(t, dst)
	os.WriteFile(filepath.Join(dst, "f"), []byte("file"), 0o644)
	unix.Symlinkat("old", dfd, "s")
	unix.Mknodat(dfd, "p", unix.S_IFIFO|0o600, 0)
	for _, name := range []string{"f", "s", "p"} {
		if err := Create(dfd, name, &tree.Node{Type: tree.TypeSymlink, Target: []byte("new-" + name)}, Options{Replace: true}); err != nil {
			t.Errorf("replace %s by a symlink: %v", name, err)
		}
		if got, err := os.Readlink(filepath.Join(dst, name)); err != nil || got != "new-"+name {
			t.Errorf("%s -> %q (%v), want new-%s", name, got, err, name)
		}
	}
	if err := Create(dfd, "f", &tree.Node{Type: tree.TypeFIFO}, Options{Replace: true}); err != nil {
		t.Errorf("replace a symlink by a FIFO: %v", err)
	}
	if n := mustLstat(t, dfd, "f"); n.Type != tree.TypeFIFO {
		t.Errorf("f is a %v, want a FIFO", n.Type)
	}
	requireOnly(t, dst, "f", "p", "s")
	// What is already the object asked for is kept (same inode); a
	// symlink whose target only starts like the one asked for is not.
	unix.Symlinkat("new-s-and-more", dfd, "longer")
	for _, tc := range []struct {
		name string
		n    tree.Node
		kept bool
	}{
		{"s", tree.Node{Type: tree.TypeSymlink, Target: []byte("new-s")}, true},
		{"f", tree.Node{Type: tree.TypeFIFO}, true},
		{"p", tree.Node{Type: tree.TypeFIFO}, false},
		{"longer", tree.Node{Type: tree.TypeSymlink, Target: []byte("new-s")}, false},
		{"s", tree.Node{Type: tree.TypeSymlink, Target: []byte("new-s2")}, false},
	} {
		var before, after unix.Stat_t
		if err := unix.Fstatat(dfd, tc.name, &before, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
		if err := Create(dfd, tc.name, &tc.n, Options{Replace: true}); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if err := unix.Fstatat(dfd, tc.name, &after, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
		if kept := before.Ino == after.Ino; kept != tc.kept {
			t.Errorf("%s as %s %q: kept %v, want %v", tc.name, tc.n.Type, tc.n.Target, kept, tc.kept)
		}
		if tc.n.Type == tree.TypeSymlink {
			if got, _ := os.Readlink(filepath.Join(dst, tc.name)); got != string(tc.n.Target) {
				t.Errorf("%s -> %q, want %q", tc.name, got, tc.n.Target)
			}
		}
	}
	requireOnly(t, dst, "f", "longer", "p", "s")
}

// requireOnly fails unless dir holds exactly names.
func requireOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, names) {
		t.Errorf("%s holds %q, want %q", dir, got, names)
	}
}

func TestIDNames(t *testing.T) {
	if UserName(0) != "root" || GroupName(0) != "root" {
		t.Errorf("uid 0 %q gid 0 %q", UserName(0), GroupName(0))
	}
	if id, ok := LookupUser("root"); !ok || id != 0 {
		t.Errorf("LookupUser root: %d %v", id, ok)
	}
	if UserName(3999999999) != "" {
		t.Errorf("unknown uid has a name")
	}
	byID, byName := map[uint32]string{}, map[string]uint32{}
	parseIDs([]byte("# c\nroot:x:0:0::/root:/bin/sh\nbad\nalias:x:0:0\nuser:x:1000:1000\n+nis\n"), byID, byName)
	want := map[uint32]string{0: "root", 1000: "user"}
	if diff := cmp.Diff(want, byID); diff != "" {
		t.Errorf("parse: %s", diff)
	}
	if byName["alias"] != 0 || len(byName) != 3 {
		t.Errorf("byName %v", byName)
	}
}

// BenchmarkLstat measures the full capture of one file: statx, names,
// xattrs (three) and inode flags.
func BenchmarkLstat(b *testing.B) {
	dir := b.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		b.Fatal(err)
	}
	for _, a := range []string{"user.a", "user.b", "user.c"} {
		if err := unix.Setxattr(p, a, []byte("value"), 0); err != nil {
			b.Fatal(err)
		}
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Lstat(fd, "f"); err != nil {
			b.Fatal(err)
		}
	}
}

func TestTempName(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"f", ".f.vaultnode-tmp"},
		{"b/g", "b/.g.vaultnode-tmp"},
		{"a/b/" + strings.Repeat("x", 250), "a/b/." + strings.Repeat("x", 200) + ".vaultnode-tmp"},
	} {
		if got := TempName(tc.name); got != tc.want {
			t.Errorf("TempName(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// What a killed run left at a temporary name (a file, a symlink, an empty
// directory) is cleared by the next object made there; a directory with
// something in it is not.
func TestMakeTempClearsLeftovers(t *testing.T) {
	dst := t.TempDir()
	dfd := openDir(t, dst)
	os.WriteFile(filepath.Join(dst, ".f.vaultnode-tmp"), []byte("left"), 0o644)
	os.Symlink("x", filepath.Join(dst, ".s.vaultnode-tmp"))
	os.Mkdir(filepath.Join(dst, ".e.vaultnode-tmp"), 0o755)
	os.MkdirAll(filepath.Join(dst, ".full.vaultnode-tmp/in"), 0o755)
	for _, name := range []string{"f", "s", "e"} {
		tmp, err := MakeTemp(dfd, name, func(tmp string) error { return unix.Symlinkat("new", dfd, tmp) })
		if got, _ := os.Readlink(filepath.Join(dst, tmp)); err != nil || got != "new" {
			t.Errorf("%s: %q -> %q (%v), want a new symlink there", name, tmp, got, err)
		}
	}
	if _, err := MakeTemp(dfd, "full", func(tmp string) error { return unix.Symlinkat("new", dfd, tmp) }); err == nil {
		t.Errorf("a directory with something in it cleared")
	}
}
