// Package testtree builds deterministic directory trees holding every case
// a backup must keep (issue 3: content, sparse files, every xattr
// namespace, POSIX ACLs, inode flags, device nodes, FIFOs, sockets,
// symlinks, hard links across directories, arbitrary names, paths deeper
// than PATH_MAX, special modes, foreign owners, odd times), and mutates
// them the way users do. Tests back a tree up, restore it elsewhere and
// compare (agentkit/treediff).
//
// The same Options give the same tree: names, content, modes, owners,
// xattrs, flags and atime/mtime are fixed; only inode numbers, ctimes and
// birth times differ between runs.
package testtree

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// The cases Generate makes, each under a top-level directory of its name.
const (
	CaseRegular     = "regular"        // small files: empty, 1 byte, around a block, 100 KiB
	CaseLarge       = "large"          // one incompressible file of LargeSize bytes
	CaseSparse      = "sparse"         // holes at the start, middle and end; a file that is one hole
	CaseXattrUser   = "xattr-user"     // user.* on files and directories, binary and empty values
	CaseXattrTrust  = "xattr-trusted"  // trusted.* on a file and on a symlink (root)
	CaseXattrSecure = "xattr-security" // security.selinux label and security.capability (root)
	CaseACL         = "acl"            // POSIX access and default ACLs, a file inheriting a default ACL
	CaseFlags       = "flags"          // nodump and noatime on files and a directory
	CaseProtect     = "flags-protect"  // immutable and append-only files and an immutable directory (root)
	CaseDevices     = "devices"        // character and block device nodes (root)
	CaseFIFO        = "fifo"           // named pipes
	CaseSocket      = "socket"         // a unix socket inode
	CaseSymlinks    = "symlinks"       // relative, absolute, dangling, looping, non-UTF-8, newline, 4000-byte targets
	CaseHardlinks   = "hardlinks"      // link groups within and across directories
	CaseNames       = "names"          // non-UTF-8, newlines, tabs, 255-byte names
	CaseDeep        = "deep"           // a path deeper than PATH_MAX
	CaseModes       = "modes"          // setuid, setgid, sticky, 07777
	CaseOwners      = "owners"         // owners other than root, with and without names (root)
	CaseTimes       = "times"          // nanoseconds, before 1970, after 2038, year 2100
	CaseEmptyDirs   = "empty-dirs"     // empty directories, nested
	CaseRestrictive = "restrictive"    // files with modes 0000 and 0222, directories with 0000, 0500, 0300 holding files (root)
	CaseWide        = "wide"           // one directory with Wide entries
)

type caseDef struct {
	name       string
	privileged bool
	make       func(g *gen) error
}

var cases = []caseDef{
	{CaseRegular, false, (*gen).regular},
	{CaseLarge, false, (*gen).large},
	{CaseSparse, false, (*gen).sparse},
	{CaseXattrUser, false, (*gen).xattrUser},
	{CaseXattrTrust, true, (*gen).xattrTrusted},
	{CaseXattrSecure, true, (*gen).xattrSecurity},
	{CaseACL, false, (*gen).acl},
	{CaseFlags, false, (*gen).flagsPlain},
	{CaseProtect, true, (*gen).flagsProtect},
	{CaseDevices, true, (*gen).devices},
	{CaseFIFO, false, (*gen).fifo},
	{CaseSocket, false, (*gen).socket},
	{CaseSymlinks, false, (*gen).symlinks},
	{CaseHardlinks, false, (*gen).hardlinks},
	{CaseNames, false, (*gen).names},
	{CaseDeep, false, (*gen).deep},
	{CaseModes, false, (*gen).modes},
	{CaseOwners, true, (*gen).owners},
	{CaseTimes, false, (*gen).times},
	{CaseEmptyDirs, false, (*gen).emptyDirs},
	{CaseRestrictive, true, (*gen).restrictive},
	{CaseWide, false, (*gen).wide},
}

// AllCases lists every case in the order Generate makes them.
func AllCases() []string {
	out := make([]string, len(cases))
	for i, c := range cases {
		out[i] = c.name
	}
	return out
}

// PrivilegedCases lists the cases that need root (CAP_CHOWN, CAP_MKNOD,
// CAP_LINUX_IMMUTABLE, CAP_SYS_ADMIN, CAP_DAC_OVERRIDE).
func PrivilegedCases() []string {
	var out []string
	for _, c := range cases {
		if c.privileged {
			out = append(out, c.name)
		}
	}
	return out
}

// Options select and size the cases.
type Options struct {
	// Unprivileged drops the cases that need root.
	Unprivileged bool
	// Drop names cases not to make.
	Drop []string
	// LargeSize is the size of the large file (default 5 MiB + 123 bytes).
	LargeSize int64
	// SparseSize is the apparent size of the big sparse file (default
	// 1 GiB); it holds about 1.1 MiB of data wherever it is.
	SparseSize int64
	// Wide is the number of entries in the wide directory (default 1000).
	Wide int
}

// Manifest says which cases a tree holds.
type Manifest struct {
	Made    []string // in AllCases order
	Dropped []string // dropped by Options
}

// Has reports whether case c was made.
func (m Manifest) Has(c string) bool { return slices.Contains(m.Made, c) }

// Generate builds the tree in root, which must be an empty or missing
// directory on a filesystem with xattrs, ACLs and inode flags (ext4, xfs,
// btrfs). A case that cannot be made is an error, never a silent skip; drop
// it with Options instead. Trees with CaseProtect need Unprotect before they
// can be removed.
func Generate(root string, opts Options) (Manifest, error) {
	if opts.LargeSize <= 0 {
		opts.LargeSize = 5<<20 + 123
	}
	if opts.SparseSize <= 0 {
		opts.SparseSize = 1 << 30
	}
	if opts.Wide <= 0 {
		opts.Wide = 1000
	}
	for _, d := range opts.Drop {
		if !slices.Contains(AllCases(), d) {
			return Manifest{}, fmt.Errorf("generate test tree: unknown case %q (known: %s)", d, strings.Join(AllCases(), ", "))
		}
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return Manifest{}, fmt.Errorf("generate test tree: %w", err)
	}
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Manifest{}, fmt.Errorf("generate test tree: open %s: %w", root, err)
	}
	defer unix.Close(fd)
	g := &gen{root: root, fd: fd, opts: opts, fixed: map[string][2]unix.Timespec{}}
	var m Manifest
	for _, c := range cases {
		if slices.Contains(opts.Drop, c.name) || (c.privileged && opts.Unprivileged) {
			m.Dropped = append(m.Dropped, c.name)
			continue
		}
		if c.privileged && os.Geteuid() != 0 {
			return m, fmt.Errorf("generate test tree: case %s needs root: run as root or set Options.Unprivileged", c.name)
		}
		if err := g.dir(c.name, 0o755); err != nil {
			return m, fmt.Errorf("generate test tree: case %s: %w", c.name, err)
		}
		if err := c.make(g); err != nil {
			return m, fmt.Errorf("generate test tree: case %s: %w", c.name, err)
		}
		m.Made = append(m.Made, c.name)
	}
	if err := g.setTimes(); err != nil {
		return m, fmt.Errorf("generate test tree: %w", err)
	}
	for _, f := range g.flags {
		if err := setFlags(fd, f.rel, f.flags, f.flags); err != nil {
			return m, fmt.Errorf("generate test tree: %w (the filesystem of %s must support inode flags, e.g. ext4)", err, root)
		}
	}
	return m, nil
}

type gen struct {
	root  string
	fd    int
	opts  Options
	flags []struct {
		rel   string
		flags uint32
	}
	fixed map[string][2]unix.Timespec // rel path -> atime, mtime
}

func (g *gen) path(rel string) string { return filepath.Join(g.root, rel) }

// content is len bytes determined by name.
func content(name string, n int64) []byte {
	seed := sha256.Sum256([]byte(name))
	r := rand.NewChaCha8(seed)
	b := make([]byte, n)
	r.Read(b)
	return b
}

func (g *gen) file(rel string, data []byte, mode uint32) error {
	p := g.path(rel)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		return err
	}
	return unix.Chmod(p, mode)
}

func (g *gen) dir(rel string, mode uint32) error {
	p := g.path(rel)
	if err := os.Mkdir(p, 0o700); err != nil {
		return err
	}
	return unix.Chmod(p, mode)
}

func (g *gen) xattr(rel, name string, value []byte) error {
	if err := unix.Lsetxattr(g.path(rel), name, value, 0); err != nil {
		return fmt.Errorf("set xattr %s on %q: %w", name, rel, err)
	}
	return nil
}

func (g *gen) flag(rel string, f uint32) {
	g.flags = append(g.flags, struct {
		rel   string
		flags uint32
	}{rel, f})
}

func (g *gen) regular() error {
	for _, f := range []struct {
		name string
		size int64
		mode uint32
	}{
		{"empty", 0, 0o644}, {"one", 1, 0o644}, {"block-1", 4095, 0o640},
		{"block", 4096, 0o600}, {"block+1", 4097, 0o664}, {"100k", 100 << 10, 0o755},
		{"text", -1, 0o644},
	} {
		data := content("regular/"+f.name, max(f.size, 0))
		if f.size < 0 {
			data = []byte(strings.Repeat("the quick brown fox jumps over the lazy dog\n", 100))
		}
		if err := g.file("regular/"+f.name, data, f.mode); err != nil {
			return err
		}
	}
	if err := g.dir("regular/sub", 0o755); err != nil {
		return err
	}
	return g.file("regular/sub/nested", content("nested", 3000), 0o644)
}

func (g *gen) large() error {
	return g.file("large/random", content("large", g.opts.LargeSize), 0o644)
}

func (g *gen) sparse() error {
	type piece struct{ off, n int64 }
	size := g.opts.SparseSize
	files := []struct {
		name   string
		size   int64
		pieces []piece
	}{
		{"big", size, []piece{{0, 1 << 20}, {size / 2, 64 << 10}, {size - 4096, 4096}}},
		{"hole-only", 16 << 20, nil},
		{"trailing-hole", 16 << 20, []piece{{0, 1 << 20}}},
		{"leading-hole", 16 << 20, []piece{{15 << 20, 1 << 20}}},
		{"middle-hole", 8 << 20, []piece{{0, 1 << 20}, {7 << 20, 1 << 20}}},
	}
	for _, f := range files {
		p := g.path("sparse/" + f.name)
		fh, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		for _, pc := range f.pieces {
			if _, err := fh.WriteAt(content(fmt.Sprintf("sparse/%s/%d", f.name, pc.off), pc.n), pc.off); err != nil {
				fh.Close()
				return err
			}
		}
		if err := fh.Truncate(f.size); err != nil {
			fh.Close()
			return err
		}
		if err := fh.Close(); err != nil {
			return err
		}
	}
	return nil
}

func (g *gen) xattrUser() error {
	if err := g.file("xattr-user/file", []byte("has user xattrs\n"), 0o644); err != nil {
		return err
	}
	for _, x := range []struct {
		name  string
		value []byte
	}{
		{"user.text", []byte("hello")},
		{"user.binary", []byte{0, 1, 2, 0xfe, 0xff, 0}},
		{"user.empty", []byte{}},
		{"user.newline", []byte("a\nb")},
		{"user.big", content("xattr big", 2000)},
		{"user.mime_type", []byte("text/plain")},
	} {
		if err := g.xattr("xattr-user/file", x.name, x.value); err != nil {
			return err
		}
	}
	if err := g.dir("xattr-user/dir", 0o755); err != nil {
		return err
	}
	return g.xattr("xattr-user/dir", "user.dir", []byte("on a directory"))
}

func (g *gen) xattrTrusted() error {
	if err := g.file("xattr-trusted/file", []byte("trusted\n"), 0o644); err != nil {
		return err
	}
	if err := g.xattr("xattr-trusted/file", "trusted.app.marker", []byte("y")); err != nil {
		return err
	}
	if err := g.xattr("xattr-trusted/file", "trusted.bin", []byte{0xff, 0, 0x80}); err != nil {
		return err
	}
	if err := os.Symlink("file", g.path("xattr-trusted/link")); err != nil {
		return err
	}
	return g.xattr("xattr-trusted/link", "trusted.on-link", []byte("the link's own"))
}

// capNetRawEP is security.capability for cap_net_raw+ep (VFS_CAP_REVISION_2).
var capNetRawEP = []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

func (g *gen) xattrSecurity() error {
	if err := g.file("xattr-security/ping", []byte("#!/bin/sh\necho ping\n"), 0o755); err != nil {
		return err
	}
	if err := g.xattr("xattr-security/ping", "security.capability", capNetRawEP); err != nil {
		return err
	}
	if err := g.file("xattr-security/labelled", []byte("selinux label\n"), 0o644); err != nil {
		return err
	}
	if err := g.xattr("xattr-security/labelled", "security.selinux", []byte("system_u:object_r:etc_t:s0\x00")); err != nil {
		return err
	}
	if err := os.Symlink("labelled", g.path("xattr-security/link")); err != nil {
		return err
	}
	return g.xattr("xattr-security/link", "security.selinux", []byte("system_u:object_r:bin_t:s0\x00"))
}

// ACL xattr encoding (linux/posix_acl_xattr.h).
const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
)

func encodeACL(entries ...[3]uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		id := e[2]
		if e[0] != aclUser && e[0] != aclGroup {
			id = 0xffffffff
		}
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, id)
	}
	return b
}

func (g *gen) acl() error {
	if err := g.file("acl/file", []byte("acl\n"), 0o640); err != nil {
		return err
	}
	access := encodeACL(
		[3]uint32{aclUserObj, 6, 0}, [3]uint32{aclUser, 5, 65534}, [3]uint32{aclUser, 7, 1234},
		[3]uint32{aclGroupObj, 4, 0}, [3]uint32{aclGroup, 4, 65534},
		[3]uint32{aclMask, 7, 0}, [3]uint32{aclOther, 0, 0})
	if err := g.xattr("acl/file", "system.posix_acl_access", access); err != nil {
		return err
	}
	if err := g.dir("acl/dir", 0o750); err != nil {
		return err
	}
	def := encodeACL(
		[3]uint32{aclUserObj, 7, 0}, [3]uint32{aclUser, 5, 4321},
		[3]uint32{aclGroupObj, 5, 0}, [3]uint32{aclGroup, 7, 65534},
		[3]uint32{aclMask, 7, 0}, [3]uint32{aclOther, 1, 0})
	dirAccess := encodeACL(
		[3]uint32{aclUserObj, 7, 0}, [3]uint32{aclUser, 5, 65534},
		[3]uint32{aclGroupObj, 5, 0}, [3]uint32{aclGroup, 1, 1234},
		[3]uint32{aclMask, 5, 0}, [3]uint32{aclOther, 1, 0})
	if err := g.xattr("acl/dir", "system.posix_acl_access", dirAccess); err != nil {
		return err
	}
	if err := g.xattr("acl/dir", "system.posix_acl_default", def); err != nil {
		return err
	}
	// Created after the default ACL: the kernel gives it an inherited ACL.
	f, err := os.OpenFile(g.path("acl/dir/inherited"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o666)
	if err != nil {
		return err
	}
	f.WriteString("inherited\n")
	if err := f.Close(); err != nil {
		return err
	}
	return g.dir("acl/dir/subdir-inherits", 0o777)
}

func (g *gen) flagsPlain() error {
	for _, f := range []struct {
		rel   string
		flags uint32
		dir   bool
	}{
		{"flags/nodump", flagNoDump, false},
		{"flags/noatime", flagNoAtime, false},
		{"flags/both", flagNoDump | flagNoAtime, false},
		{"flags/nodump-dir", flagNoDump, true},
	} {
		var err error
		if f.dir {
			err = g.dir(f.rel, 0o755)
		} else {
			err = g.file(f.rel, content(f.rel, 100), 0o644)
		}
		if err != nil {
			return err
		}
		g.flag(f.rel, f.flags)
	}
	return g.file("flags/nodump-dir/inside", []byte("x"), 0o644)
}

func (g *gen) flagsProtect() error {
	if err := g.file("flags-protect/immutable", []byte("cannot change\n"), 0o644); err != nil {
		return err
	}
	g.flag("flags-protect/immutable", flagImmutable)
	if err := g.file("flags-protect/append-only", []byte("log line 1\n"), 0o644); err != nil {
		return err
	}
	g.flag("flags-protect/append-only", flagAppend)
	if err := g.dir("flags-protect/immutable-dir", 0o755); err != nil {
		return err
	}
	if err := g.file("flags-protect/immutable-dir/inside", []byte("inside an immutable directory\n"), 0o644); err != nil {
		return err
	}
	g.flag("flags-protect/immutable-dir", flagImmutable)
	if err := g.file("flags-protect/everything", []byte("iadA\n"), 0o644); err != nil {
		return err
	}
	g.flag("flags-protect/everything", flagImmutable|flagAppend|flagNoDump|flagNoAtime)
	return nil
}

func (g *gen) devices() error {
	for _, d := range []struct {
		rel          string
		mode         uint32
		major, minor uint32
	}{
		{"devices/null", unix.S_IFCHR | 0o666, 1, 3},
		{"devices/big-numbers", unix.S_IFCHR | 0o600, 4095, 1048575},
		{"devices/loop200", unix.S_IFBLK | 0o660, 7, 200},
		{"devices/sda", unix.S_IFBLK | 0o640, 8, 0},
	} {
		if err := unix.Mknod(g.path(d.rel), d.mode, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("mknod %s: %w", d.rel, err)
		}
		if err := unix.Chmod(g.path(d.rel), d.mode&0o7777); err != nil {
			return err
		}
	}
	return nil
}

func (g *gen) fifo() error {
	for _, f := range []struct {
		rel  string
		mode uint32
	}{{"fifo/pipe", 0o644}, {"fifo/private", 0o600}} {
		if err := unix.Mkfifo(g.path(f.rel), f.mode); err != nil {
			return fmt.Errorf("mkfifo %s: %w", f.rel, err)
		}
		if err := unix.Chmod(g.path(f.rel), f.mode); err != nil {
			return err
		}
	}
	return nil
}

// socket binds a unix socket and closes it, leaving its inode behind as a
// server that stopped does. The address goes through /proc/self/fd so
// sun_path's 108-byte limit does not depend on where the tree is.
func (g *gen) socket() error {
	dfd, err := unix.Openat(g.fd, "socket", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	err = unix.Bind(s, &unix.SockaddrUnix{Name: fmt.Sprintf("/proc/self/fd/%d/listener.sock", dfd)})
	unix.Close(s)
	if err != nil {
		return fmt.Errorf("bind socket: %w", err)
	}
	return unix.Fchmodat(dfd, "listener.sock", 0o755, 0)
}

func (g *gen) symlinks() error {
	for _, l := range []struct{ name, target string }{
		{"relative", "../regular/one"},
		{"absolute", "/etc/hostname"},
		{"dangling", "does/not/exist"},
		{"loop", "loop"},
		{"to-dir", "../regular/sub"},
		{"non-utf8", "\xff\xfe/\x80name"},
		{"newline", "first\nsecond"},
		{"long", strings.Repeat("abcdefghi/", 400)},
		{"dot", "."},
	} {
		if err := unix.Symlink(l.target, g.path("symlinks/"+l.name)); err != nil {
			return fmt.Errorf("symlink %s: %w", l.name, err)
		}
	}
	return nil
}

func (g *gen) hardlinks() error {
	for _, d := range []string{"hardlinks/a", "hardlinks/b", "hardlinks/b/deeper"} {
		if err := g.dir(d, 0o755); err != nil {
			return err
		}
	}
	if err := g.file("hardlinks/a/shared", content("hardlinks shared", 10000), 0o644); err != nil {
		return err
	}
	if err := g.xattr("hardlinks/a/shared", "user.linked", []byte("one inode")); err != nil {
		return err
	}
	for _, l := range []string{"hardlinks/b/deeper/shared-again", "hardlinks/z-third", "hardlinks/a/shared-too"} {
		if err := os.Link(g.path("hardlinks/a/shared"), g.path(l)); err != nil {
			return err
		}
	}
	if err := g.file("hardlinks/b/pair-1", []byte("pair\n"), 0o600); err != nil {
		return err
	}
	if err := os.Link(g.path("hardlinks/b/pair-1"), g.path("hardlinks/b/pair-2")); err != nil {
		return err
	}
	// Same content, different inodes: must stay separate files.
	if err := g.file("hardlinks/b/copy-1", []byte("pair\n"), 0o600); err != nil {
		return err
	}
	return g.file("hardlinks/empty-linked", nil, 0o644)
}

func (g *gen) names() error {
	for _, n := range []string{
		"\xff\xfe not utf-8 \x80",
		"new\nline",
		"tab\there",
		strings.Repeat("n", 255),
		strings.Repeat("\xe2\x82\xac", 85), // 255 bytes of euro signs
		" leading and trailing ",
		"-dash",
		"back\\slash",
		"quote\"'",
		"star*?[glob]",
		"\x01control\x7f",
		"..dots..",
		"UPPER", "upper",
	} {
		if err := g.file("names/"+n, []byte(n), 0o644); err != nil {
			return fmt.Errorf("file %q: %w", n, err)
		}
	}
	if err := g.dir("names/dir\xc3(", 0o755); err != nil {
		return err
	}
	return g.file("names/dir\xc3(/inside\n", []byte("x"), 0o644)
}

// deep makes deep/ + 20 directories of 250-byte names (over 5000 bytes) with
// a file, a symlink and a directory at the bottom, with descriptors only.
func (g *gen) deep() error {
	cur, err := unix.Openat(g.fd, "deep", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer func() { unix.Close(cur) }()
	for i := 0; i < 20; i++ {
		name := strings.Repeat(string(rune('a'+i)), 250)
		if err := unix.Mkdirat(cur, name, 0o755); err != nil {
			return fmt.Errorf("level %d: %w", i, err)
		}
		next, err := unix.Openat(cur, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("level %d: %w", i, err)
		}
		unix.Close(cur)
		cur = next
	}
	fd, err := unix.Openat(cur, "leaf", unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o640)
	if err != nil {
		return err
	}
	_, err = unix.Write(fd, content("deep leaf", 5000))
	unix.Close(fd)
	if err != nil {
		return err
	}
	if err := unix.Fchmodat(cur, "leaf", 0o640, 0); err != nil {
		return err
	}
	if err := unix.Lsetxattr(fmt.Sprintf("/proc/self/fd/%d/leaf", cur), "user.deep", []byte("yes"), 0); err != nil {
		return err
	}
	if err := unix.Symlinkat("leaf", cur, "link"); err != nil {
		return err
	}
	return unix.Mkdirat(cur, "bottom", 0o700)
}

func (g *gen) modes() error {
	for _, f := range []struct {
		rel  string
		mode uint32
		dir  bool
	}{
		{"modes/setuid", 0o4755, false},
		{"modes/setgid", 0o2755, false},
		{"modes/all-bits", 0o7777, false},
		{"modes/sticky-dir", 0o1777, true},
		{"modes/setgid-dir", 0o2775, true},
	} {
		var err error
		if f.dir {
			err = g.dir(f.rel, f.mode)
		} else {
			err = g.file(f.rel, []byte("#!/bin/sh\n"), f.mode)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (g *gen) owners() error {
	for _, f := range []struct {
		rel      string
		uid, gid int
		kind     byte // f file, d dir, l symlink
	}{
		{"owners/nobody", 65534, 65534, 'f'},
		{"owners/numeric-only", 1234, 5678, 'f'},
		{"owners/high-ids", 4000000000, 4000000001, 'f'},
		{"owners/user-dir", 1000, 1000, 'd'},
		{"owners/link", 33, 44, 'l'},
		{"owners/setuid-nobody", 65534, 0, 'f'},
	} {
		var err error
		switch f.kind {
		case 'f':
			err = g.file(f.rel, []byte(f.rel), 0o644)
		case 'd':
			err = g.dir(f.rel, 0o755)
		case 'l':
			err = os.Symlink("nobody", g.path(f.rel))
		}
		if err != nil {
			return err
		}
		if err := os.Lchown(g.path(f.rel), f.uid, f.gid); err != nil {
			return err
		}
	}
	return unix.Chmod(g.path("owners/setuid-nobody"), 0o4755) // after chown, which clears setuid
}

func (g *gen) times() error {
	for _, f := range []struct {
		rel          string
		atime, mtime unix.Timespec
	}{
		{"times/nanoseconds", unix.Timespec{Sec: 1700000000, Nsec: 123456789}, unix.Timespec{Sec: 1600000000, Nsec: 987654321}},
		{"times/before-1970", unix.Timespec{Sec: -1, Nsec: 1}, unix.Timespec{Sec: -1000000000, Nsec: 500000000}},
		{"times/after-2038", unix.Timespec{Sec: 1 << 31, Nsec: 7}, unix.Timespec{Sec: 1<<31 + 5, Nsec: 999999999}},
		{"times/year-2100", unix.Timespec{Sec: 4102444800, Nsec: 0}, unix.Timespec{Sec: 4102444800, Nsec: 1}},
		{"times/epoch", unix.Timespec{Sec: 0, Nsec: 0}, unix.Timespec{Sec: 0, Nsec: 0}},
	} {
		if err := g.file(f.rel, []byte(f.rel), 0o644); err != nil {
			return err
		}
		g.fixed[f.rel] = [2]unix.Timespec{f.atime, f.mtime}
	}
	return nil
}

func (g *gen) emptyDirs() error {
	for _, d := range []string{"empty-dirs/a", "empty-dirs/b", "empty-dirs/b/c", "empty-dirs/b/c/d"} {
		if err := g.dir(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func (g *gen) restrictive() error {
	if err := g.file("restrictive/file-0000", []byte("nobody may read me"), 0o000); err != nil {
		return err
	}
	if err := g.file("restrictive/file-0222", []byte("write only"), 0o222); err != nil {
		return err
	}
	for _, d := range []struct {
		rel  string
		mode uint32
	}{{"restrictive/none", 0o000}, {"restrictive/read-exec", 0o500}, {"restrictive/write-exec", 0o300}} {
		if err := g.dir(d.rel, 0o700); err != nil {
			return err
		}
		if err := g.file(d.rel+"/inside", []byte(d.rel), 0o600); err != nil {
			return err
		}
		if err := unix.Chmod(g.path(d.rel), d.mode); err != nil {
			return err
		}
	}
	return nil
}

func (g *gen) wide() error {
	fd, err := unix.Openat(g.fd, "wide", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for i := 0; i < g.opts.Wide; i++ {
		f, err := unix.Openat(fd, fmt.Sprintf("entry-%07d", i), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return err
		}
		if i%10 == 0 {
			_, err = unix.Write(f, []byte(fmt.Sprint(i)))
		}
		unix.Close(f)
		if err != nil {
			return err
		}
		if err := unix.Fchmodat(fd, fmt.Sprintf("entry-%07d", i), 0o644, 0); err != nil {
			return err
		}
	}
	return nil
}

// setTimes gives every object a fixed atime and mtime, directories after
// their contents.
func (g *gen) setTimes() error {
	i := int64(0)
	return walk(g.root, true, func(e *entry) error {
		i++
		ts, ok := g.fixed[string(e.rel)]
		if !ok {
			ts = [2]unix.Timespec{
				{Sec: 1500000000 + i*7919, Nsec: (i * 123456789) % 1e9},
				{Sec: 1400000000 + i*6997, Nsec: (i * 987654321) % 1e9},
			}
		}
		if err := unix.UtimesNanoAt(e.dirfd, e.name, ts[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("set times of %q: %w", e.rel, err)
		}
		return nil
	})
}

// errNoCandidate is returned when a tree has nothing left to mutate.
var errNoCandidate = errors.New("no file left to mutate")
