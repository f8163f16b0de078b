package restore

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/tree"
)

// A file created under its own name in a directory the restore made does
// not keep what that directory passed on to it: a default POSIX ACL of the
// target inherited through the new directory, or the target's nodump flag.
// The restore skips reading a new file's xattrs and flags only where the
// directory passes nothing on.
func TestNewFilesKeepNothingInherited(t *testing.T) {
	h := newHostile(t)
	acl := meta.EncodeACL([]meta.ACLEntry{{Tag: meta.ACLUserObj, Perm: 7}, {Tag: meta.ACLUser, Perm: 7, ID: 65534},
		{Tag: meta.ACLGroupObj, Perm: 5}, {Tag: meta.ACLMask, Perm: 7}, {Tag: meta.ACLOther, Perm: 5}})
	if err := unix.Setxattr(h.target, meta.XattrACLDefault, acl, 0); err != nil {
		t.Skipf("no POSIX ACLs on %s: %v", h.target, err)
	}
	flags := setFlag(t, h.target, meta.FlagNoDump)

	f := h.content("d/f", "no xattrs\n")
	g := h.content("d/g", "one xattr\n")
	g.Xattrs = []tree.Xattr{{Name: "user.restored", Value: []byte("yes")}}
	plain := h.content("plain", "in the target itself\n")
	res, err := h.restore(h.options(), dir("d"), f, g, plain)
	if err != nil || len(res.Problems) > 0 {
		t.Fatalf("restore: %v, problems %q", err, res.Problems)
	}
	for p, want := range map[string][]string{"d/f": nil, "d/g": {"user.restored"}, "plain": nil} {
		got := xattrNames(t, filepath.Join(h.target, p))
		if !slices.Equal(got, want) {
			t.Errorf("%s: xattrs %q, want %q (inherited from the target's default ACL)", p, got, want)
		}
		if flags {
			fd, err := unix.Open(filepath.Join(h.target, p), unix.O_RDONLY|unix.O_NONBLOCK, 0)
			must(t, err)
			got, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
			unix.Close(fd)
			if err != nil || got&meta.FlagNoDump != 0 {
				t.Errorf("%s: flags %s, %v; want no nodump (inherited from the target)", p, meta.FlagString(got), err)
			}
		}
	}
	noTemporaries(t, h.target)
}

// setFlag sets flag on the directory p, reporting whether the filesystem
// took it.
func setFlag(t *testing.T, p string, flag uint32) bool {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	must(t, err)
	defer unix.Close(fd)
	cur, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return false
	}
	return unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(cur|flag)) == nil
}

func xattrNames(t *testing.T, p string) []string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	must(t, err)
	out := splitNUL(buf[:n])
	slices.Sort(out)
	return out
}

func splitNUL(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == 0 {
			if i > start {
				out = append(out, string(b[start:i]))
			}
			start = i + 1
		}
	}
	return out
}

// A file created with its own mode in a directory the restore made (no
// chmod afterwards) ends with exactly that mode, as does one whose mode the
// umask would cut, one with a sticky bit, one given an access ACL (which
// changes the mode's group bits) and one in the target itself; both ways of
// naming files.
func TestNewFilesModes(t *testing.T) { forEachNaming(t, testNewFilesModes) }

func testNewFilesModes(t *testing.T) {
	h := newHostile(t)
	modes := map[string]uint32{"d/a": 0o644, "d/b": 0o755, "d/c": 0o640, "d/e": 0o444, "d/f": 0o000, "d/g": 0o666,
		"d/h": 0o1755, "d/i": 0o600, "top": 0o664}
	nodes := []tree.Node{dir("d")}
	for p, m := range modes {
		n := h.content(p, p+"\n")
		n.Mode = m
		nodes = append(nodes, n)
	}
	acl := h.content("d/acl", "with an access ACL\n")
	acl.Mode = 0o650 // the group bits are the mask's, as a backup records them
	acl.Xattrs = []tree.Xattr{{Name: meta.XattrACLAccess, Value: meta.EncodeACL([]meta.ACLEntry{{Tag: meta.ACLUserObj, Perm: 6},
		{Tag: meta.ACLUser, Perm: 7, ID: 65534}, {Tag: meta.ACLGroupObj, Perm: 4}, {Tag: meta.ACLMask, Perm: 5}, {Tag: meta.ACLOther, Perm: 0}})}}
	nodes = append(nodes, acl)
	slices.SortFunc(nodes, func(a, b tree.Node) int { return tree.Compare(a.Path, b.Path) })
	res, err := h.restore(h.options(), nodes...)
	if err != nil || len(res.Problems) > 0 {
		t.Fatalf("restore: %v, problems %q", err, res.Problems)
	}
	modes["d/acl"] = 0o650
	for p, want := range modes {
		var st unix.Stat_t
		must(t, unix.Lstat(filepath.Join(h.target, p), &st))
		if got := st.Mode & 0o7777; got != want {
			t.Errorf("%s: mode %04o, want %04o", p, got, want)
		}
	}
	got, err := unix.Lgetxattr(filepath.Join(h.target, "d/acl"), meta.XattrACLAccess, make([]byte, 256))
	if err != nil || got == 0 {
		t.Errorf("d/acl: no access ACL (%v)", err)
	}
}

// Symlinks and FIFOs are made with their owner, mode, attributes and times
// whether their directory was made by the restore and passes nothing on
// (no lookups, no attributes read: meta.Options.New), made by the restore
// in a target with a default ACL (which it passes on to FIFOs) or a
// set-group-ID one (whose group new entries take), or is the target
// itself; none keeps an attribute its node lacks.
func TestNewOtherObjects(t *testing.T) {
	if unix.Geteuid() != 0 {
		t.Skip("needs root: owners and trusted attributes")
	}
	acl := meta.EncodeACL([]meta.ACLEntry{{Tag: meta.ACLUserObj, Perm: 7}, {Tag: meta.ACLUser, Perm: 7, ID: 65534},
		{Tag: meta.ACLGroupObj, Perm: 5}, {Tag: meta.ACLMask, Perm: 7}, {Tag: meta.ACLOther, Perm: 5}})
	for _, target := range []string{"plain", "setgid", "default ACL"} {
		h := newHostile(t)
		switch target {
		case "setgid":
			must(t, unix.Chown(h.target, 0, 4321))
			must(t, os.Chmod(h.target, 0o2755))
		case "default ACL":
			if err := unix.Setxattr(h.target, meta.XattrACLDefault, acl, 0); err != nil {
				t.Skipf("no POSIX ACLs on %s: %v", h.target, err)
			}
		}
		when := tree.Timespec{Sec: 1_600_000_000, Nsec: 123_456_789}
		link := func(p, target string, uid, gid uint32, xs ...tree.Xattr) tree.Node {
			return tree.Node{Path: []byte(p), Type: tree.TypeSymlink, Mode: 0o777, Target: []byte(target), UID: uid, GID: gid,
				Atime: when, Mtime: when, Xattrs: xs}
		}
		fifo := func(p string, mode, uid, gid uint32, xs ...tree.Xattr) tree.Node {
			return tree.Node{Path: []byte(p), Type: tree.TypeFIFO, Mode: mode, UID: uid, GID: gid, Atime: when, Mtime: when, Xattrs: xs}
		}
		note := tree.Xattr{Name: "trusted.note", Value: []byte("kept")}
		nodes := []tree.Node{
			dir("d"),
			link("d/a", "short", 0, 0),
			link("d/b", strings.Repeat("long/", 30), 1234, 5678, note),
			fifo("d/p", 0o640, 42, 43, note),
			fifo("d/q", 0o600, 0, 0),
			link("z", "in the target", 0, 0),
		}
		o := h.options()
		o.Meta.SkipOwner = false
		res, err := h.restore(o, nodes...)
		if err != nil || len(res.Problems) > 0 {
			t.Fatalf("%s target: restore: %v, problems %q", target, err, res.Problems)
		}
		for _, n := range nodes[1:] {
			p := filepath.Join(h.target, string(n.Path))
			var st unix.Stat_t
			must(t, unix.Lstat(p, &st))
			var names []string
			for _, x := range n.Xattrs {
				names = append(names, x.Name)
			}
			switch {
			case st.Uid != n.UID || st.Gid != n.GID:
				t.Errorf("%s target: %s owned by %d:%d, want %d:%d", target, n.Path, st.Uid, st.Gid, n.UID, n.GID)
			case n.Type == tree.TypeFIFO && st.Mode&0o7777 != n.Mode:
				t.Errorf("%s target: %s mode %04o, want %04o", target, n.Path, st.Mode&0o7777, n.Mode)
			case st.Mtim.Sec != when.Sec || st.Mtim.Nsec != when.Nsec:
				t.Errorf("%s target: %s mtime %v, want %v", target, n.Path, st.Mtim, when)
			case !slices.Equal(xattrNames(t, p), names):
				t.Errorf("%s target: %s xattrs %q, want %q", target, n.Path, xattrNames(t, p), names)
			}
			if n.Type == tree.TypeSymlink {
				if got, err := os.Readlink(p); err != nil || got != string(n.Target) {
					t.Errorf("%s target: %s points to %q (%v), want %q", target, n.Path, got, err, n.Target)
				}
			}
		}
	}
}

// Symlinks and FIFOs in directories the restore made go to the workers in
// batches: every one is made, and each directory's times are set after
// the last of them (making one later would change its mtime).
func TestOthersMadeByWorkers(t *testing.T) {
	h := newHostile(t)
	when := tree.Timespec{Sec: 1_500_000_000, Nsec: 5}
	var nodes []tree.Node
	count := map[string]int{"a": 700, "b": 3}
	for _, d := range []string{"a", "b"} {
		dn := dir(d)
		dn.Mtime, dn.Atime = when, when
		nodes = append(nodes, dn)
		for i := range count[d] {
			p := fmt.Sprintf("%s/%04d", d, i)
			if d == "b" {
				nodes = append(nodes, tree.Node{Path: []byte(p), Type: tree.TypeFIFO, Mode: 0o600})
				continue
			}
			nodes = append(nodes, tree.Node{Path: []byte(p), Type: tree.TypeSymlink, Mode: 0o777, Target: []byte("to-" + p)})
		}
	}
	nodes = append(nodes, h.content("c", "a file after them\n"))
	res, err := h.restore(h.options(), nodes...)
	if err != nil || len(res.Problems) > 0 {
		t.Fatalf("restore: %v, problems %q", err, res.Problems)
	}
	for d, n := range count {
		ents, err := os.ReadDir(filepath.Join(h.target, d))
		must(t, err)
		if len(ents) != n {
			t.Errorf("%s holds %d entries, want %d", d, len(ents), n)
		}
		var st unix.Stat_t
		must(t, unix.Lstat(filepath.Join(h.target, d), &st))
		if st.Mtim.Sec != when.Sec || st.Mtim.Nsec != when.Nsec {
			t.Errorf("%s: mtime %v, want %v (an entry made after its times were set?)", d, st.Mtim, when)
		}
	}
	if got, err := os.Readlink(filepath.Join(h.target, "a/0699")); err != nil || got != "to-a/0699" {
		t.Errorf("a/0699 points to %q (%v)", got, err)
	}
	requireContent(t, filepath.Join(h.target, "c"), "a file after them\n")
}
