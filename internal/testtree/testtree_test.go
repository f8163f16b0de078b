package testtree

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

func generate(t *testing.T, opts Options) (string, Manifest) {
	t.Helper()
	if os.Geteuid() != 0 && !opts.Unprivileged {
		t.Fatal("this test needs root to make every case (devices, owners, trusted xattrs, immutable flags); CI runs as root")
	}
	root := filepath.Join(t.TempDir(), "tree")
	t.Cleanup(func() {
		if err := Unprotect(root); err != nil {
			t.Errorf("Unprotect: %v", err)
		}
	})
	m, err := Generate(root, opts)
	if err != nil {
		t.Fatal(err)
	}
	return root, m
}

func TestGenerateEveryCase(t *testing.T) {
	root, m := generate(t, Options{})
	if diff := cmp.Diff(AllCases(), m.Made); diff != "" || len(m.Dropped) != 0 {
		t.Fatalf("made (-all +made):\n%s dropped %v", diff, m.Dropped)
	}
	lstat := func(rel string) unix.Stat_t {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, rel), &st); err != nil {
			t.Fatalf("lstat %q: %v", rel, err)
		}
		return st
	}
	tests := []struct {
		rel  string
		mode uint32
	}{
		{"regular/one", unix.S_IFREG | 0o644},
		{"modes/setuid", unix.S_IFREG | 0o4755},
		{"modes/all-bits", unix.S_IFREG | 0o7777},
		{"modes/sticky-dir", unix.S_IFDIR | 0o1777},
		{"owners/setuid-nobody", unix.S_IFREG | 0o4755},
		{"devices/null", unix.S_IFCHR | 0o666},
		{"devices/sda", unix.S_IFBLK | 0o640},
		{"fifo/pipe", unix.S_IFIFO | 0o644},
		{"socket/listener.sock", unix.S_IFSOCK | 0o755},
		{"symlinks/non-utf8", unix.S_IFLNK | 0o777},
		{"names/new\nline", unix.S_IFREG | 0o644},
		{"restrictive/none", unix.S_IFDIR},
	}
	for _, tc := range tests {
		if st := lstat(tc.rel); st.Mode != tc.mode {
			t.Errorf("%q: mode %o, want %o", tc.rel, st.Mode, tc.mode)
		}
	}
	if st := lstat("sparse/big"); st.Size != 1<<30 || st.Blocks*512 > 2<<20 {
		t.Errorf("sparse/big: size %d, %d bytes allocated", st.Size, st.Blocks*512)
	}
	if st := lstat("hardlinks/a/shared"); st.Nlink != 4 {
		t.Errorf("hard link group: nlink %d", st.Nlink)
	}
	if st := lstat("times/nanoseconds"); st.Mtim != (unix.Timespec{Sec: 1600000000, Nsec: 987654321}) {
		t.Errorf("mtime %v", st.Mtim)
	}
	if st := lstat("times/before-1970"); st.Mtim.Sec != -1000000000 {
		t.Errorf("mtime %v", st.Mtim)
	}
	// The deep case goes past PATH_MAX.
	depth := 0
	if err := walk(filepath.Join(root, "deep"), false, func(e *entry) error {
		depth = max(depth, len(e.rel))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if depth <= unix.PathMax {
		t.Errorf("deepest path %d bytes, want more than %d", depth, unix.PathMax)
	}
	fd, _ := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	defer unix.Close(fd)
	for rel, want := range map[string]uint32{
		"flags-protect/immutable":     flagImmutable,
		"flags-protect/append-only":   flagAppend,
		"flags-protect/immutable-dir": flagImmutable,
		"flags/noatime":               flagNoAtime,
		"flags/nodump-dir":            flagNoDump,
	} {
		f, err := getFlags(fd, rel)
		if err != nil || f&want != want {
			t.Errorf("%s: flags %#x (%v), want %#x", rel, f, err, want)
		}
	}
	for rel, name := range map[string]string{
		"acl/dir":                 "system.posix_acl_default",
		"acl/dir/inherited":       "system.posix_acl_access",
		"xattr-security/ping":     "security.capability",
		"xattr-trusted/link":      "trusted.on-link",
		"xattr-user/file":         "user.binary",
		"xattr-security/labelled": "security.selinux",
	} {
		if _, err := unix.Lgetxattr(filepath.Join(root, rel), name, nil); err != nil {
			t.Errorf("%s: xattr %s: %v", rel, name, err)
		}
	}
	if err := Unprotect(root); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "flags-protect/immutable")); err != nil {
		t.Errorf("remove after Unprotect: %v", err)
	}
}

func TestGenerateOptions(t *testing.T) {
	_, m := generate(t, Options{Unprivileged: true, Drop: []string{CaseWide, CaseLarge}, Wide: 3})
	for _, c := range PrivilegedCases() {
		if m.Has(c) || !slices.Contains(m.Dropped, c) {
			t.Errorf("privileged case %s made in an unprivileged tree", c)
		}
	}
	if m.Has(CaseWide) || m.Has(CaseLarge) || !m.Has(CaseSparse) {
		t.Errorf("manifest %+v", m)
	}
	if _, err := Generate(t.TempDir(), Options{Drop: []string{"no-such-case"}}); err == nil || !strings.Contains(err.Error(), "unknown case") {
		t.Errorf("unknown case: %v", err)
	}
}

func TestMutateDeterministic(t *testing.T) {
	opts := Options{Drop: []string{CaseWide}, SparseSize: 64 << 20}
	a, _ := generate(t, opts)
	b, _ := generate(t, opts)
	ca, err := MutateReport(a, 42)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := MutateReport(b, 42)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ca, cb); diff != "" {
		t.Errorf("same seed, different changes:\n%s", diff)
	}
	if len(ca) < 10 {
		t.Errorf("only %d changes: %v", len(ca), ca)
	}
	for _, c := range ca {
		_, err := os.Lstat(filepath.Join(a, string(c.Path)))
		gone := c.Kind == "delete" || c.Kind == "rename-from"
		if gone != os.IsNotExist(err) {
			t.Errorf("%v: lstat %v", c, err)
		}
	}
	cc, err := MutateReport(b, 7)
	if err != nil {
		t.Fatal(err)
	}
	if cmp.Equal(ca, cc) {
		t.Errorf("different seeds gave the same changes")
	}
}
