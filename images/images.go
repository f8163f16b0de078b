// Package images builds the appliance's boot image: Debian's kernel as an
// uncompressed vmlinux (PVH entry, booted directly by QEMU) and an initramfs
// with the firmware as /init, the static vault binaries, the kernel modules
// the appliance needs (closed over modules.dep) and the dynamic disk tools
// with their libraries. The cpio is written by u-root's pkg/cpio with every
// record made reproducible: the same inputs give the same bytes.
package images

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/cpio"
	"github.com/u-root/u-root/pkg/ldd"

	"vaultnode/firmware/modules"
)

// Options says what to build and where.
type Options struct {
	Root    string // the module's root (where go.mod is)
	Out     string // output directory
	Version string // firmware version string
	Log     io.Writer
	// ExtraBinaries and ExtraTools are added to the image (tests: guest
	// probes, and tools like mt and tar to read a cartridge by hand).
	ExtraBinaries []Binary
	ExtraTools    map[string]string
}

// Binary is a Go package built into the image at Dest.
type Binary struct {
	Pkg, Dest string
	Required  bool
}

// Result describes a built image.
type Result struct {
	Kernel, Initramfs string
	KernelVersion     string
	InitramfsSize     int64
	InitramfsSHA256   string
	Files             []string // files in the initramfs
	Skipped           []string // optional binaries that did not build
	Took              time.Duration
}

// Binaries built into the image: package → path in the image. The vault
// binaries are optional: while they do not build, the image has none.
var Binaries = []Binary{
	{"./firmware/cmd/init", "init", true},
	{"./appliance/cmd/vaultd", "bin/vaultd", false},
	{"./appliance/cmd/vaultctl", "bin/vaultctl", false},
	// The static recovery program vaultd writes on every cartridge.
	{"./appliance/cmd/vault-tape-recover", "bin/vault-tape-recover", false},
	// u-root core commands for the support shell (each a small static
	// program built with go build: no busybox build, seconds not tens).
	{"github.com/u-root/u-root/cmds/core/dmesg", "bin/dmesg", true},
	{"github.com/u-root/u-root/cmds/core/ps", "bin/ps", true},
	{"github.com/u-root/u-root/cmds/core/ip", "bin/ip", true},
	{"github.com/u-root/u-root/cmds/core/df", "bin/df", true},
	{"github.com/u-root/u-root/cmds/core/free", "bin/free", true},
	{"github.com/u-root/u-root/cmds/core/mount", "bin/mount", true},
	{"github.com/u-root/u-root/cmds/core/umount", "bin/umount", true},
}

// CgoBinaries are the image's only dynamic Go programs, built with cgo
// and copied in with their library closure like Tools: the front panel
// driver needs libusb-1.0 (apt-get install libusb-1.0-0-dev gcc).
var CgoBinaries = []struct{ Pkg, Dest string }{
	{"./firmware/cmd/panel", "bin/panel"},
}

// Tools are Debian's dynamic programs copied in with their libraries.
var Tools = map[string]string{"/sbin/mdadm": "sbin/mdadm", "/sbin/mke2fs": "sbin/mke2fs"}

// OptionalTools are copied in when the build machine has them (apt-get
// install smartmontools): without smartctl the firmware reports SMART as
// unknown.
var OptionalTools = map[string]string{"/usr/sbin/smartctl": "sbin/smartctl"}

// Build builds the image.
func Build(ctx context.Context, o Options) (Result, error) {
	start := time.Now()
	var res Result
	if o.Log == nil {
		o.Log = io.Discard
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return res, fmt.Errorf("make %s: %w", o.Out, err)
	}
	bz, kver, err := FindKernel()
	if err != nil {
		return res, err
	}
	res.KernelVersion = kver
	res.Kernel = filepath.Join(o.Out, "vmlinux")
	if err := extractVmlinux(bz, res.Kernel); err != nil {
		return res, err
	}

	tmp, err := os.MkdirTemp("", "mkimage-")
	if err != nil {
		return res, fmt.Errorf("make temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)

	var recs []cpio.Record
	add := func(r cpio.Record) { recs = append(recs, r) }
	for _, d := range []string{"bin", "sbin", "dev", "etc", "proc", "sys", "tmp", "run", "root", "persist", "data", "var", "var/log"} {
		add(cpio.Directory(d, 0o755))
	}
	add(cpio.CharDev("dev/console", 0o600, 5, 1))
	add(cpio.Symlink("bin/init", "../init")) // "init ctl ..." from the support shell
	add(cpio.CharDev("dev/null", 0o666, 1, 3))
	add(cpio.StaticFile("etc/passwd", "root:x:0:0:root:/root:/init\n", 0o644))
	add(cpio.StaticFile("etc/group", "root:x:0:\n", 0o644))

	for _, b := range append(append([]Binary{}, Binaries...), o.ExtraBinaries...) {
		out := filepath.Join(tmp, filepath.Base(b.Dest))
		if err := goBuild(ctx, o, b.Pkg, out, false); err != nil {
			if b.Required {
				return res, err
			}
			fmt.Fprintf(o.Log, "mkimage: WARNING: %s left out of the image: %v\n", b.Pkg, firstLine(err))
			res.Skipped = append(res.Skipped, b.Pkg)
			continue
		}
		r, err := fileRecord(out, b.Dest)
		if err != nil {
			return res, err
		}
		add(r)
	}

	// Time zones for the Go services (TZ from the setup dialog, ZONEINFO set by the firmware).
	if goroot, err := exec.Command(goBinary(), "env", "GOROOT").Output(); err == nil {
		zi := filepath.Join(strings.TrimSpace(string(goroot)), "lib", "time", "zoneinfo.zip")
		if r, err := fileRecord(zi, "usr/share/zoneinfo.zip"); err == nil {
			r.Mode = cpio.S_IFREG | 0o644
			add(r)
		}
	}

	modRecs, err := moduleRecords(kver, modules.Image())
	if err != nil {
		return res, err
	}
	recs = append(recs, modRecs...)

	tools := maps.Clone(Tools)
	for k, v := range o.ExtraTools {
		tools[k] = v
	}
	for src, dst := range OptionalTools {
		if _, err := os.Stat(src); err != nil {
			fmt.Fprintf(o.Log, "mkimage: WARNING: %s left out of the image: %v\n", src, err)
			res.Skipped = append(res.Skipped, src)
			continue
		}
		tools[src] = dst
	}
	for _, b := range CgoBinaries {
		out := filepath.Join(tmp, "cgo-"+filepath.Base(b.Dest))
		if err := goBuild(ctx, o, b.Pkg, out, true); err != nil {
			return res, err
		}
		tools[out] = b.Dest
	}
	toolRecs, err := toolRecords(tools)
	if err != nil {
		return res, err
	}
	recs = append(recs, toolRecs...)

	res.Initramfs = filepath.Join(o.Out, "initramfs.cpio")
	if err := writeCpio(res.Initramfs, recs); err != nil {
		return res, err
	}
	b, err := os.ReadFile(res.Initramfs)
	if err != nil {
		return res, fmt.Errorf("read back %s: %w", res.Initramfs, err)
	}
	res.InitramfsSize = int64(len(b))
	res.InitramfsSHA256 = fmt.Sprintf("%x", sha256.Sum256(b))
	for _, r := range recs {
		res.Files = append(res.Files, r.Name)
	}
	sort.Strings(res.Files)
	res.Took = time.Since(start)
	manifest := fmt.Sprintf("version %s\nkernel %s\ninitramfs-sha256 %s\nskipped %s\n%s\n",
		o.Version, kver, res.InitramfsSHA256, strings.Join(res.Skipped, " "), strings.Join(res.Files, "\n"))
	if err := os.WriteFile(filepath.Join(o.Out, "manifest.txt"), []byte(manifest), 0o644); err != nil {
		return res, fmt.Errorf("write manifest: %w", err)
	}
	return res, nil
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(strings.TrimSpace(err.Error()), "\n")
	return s
}

// FindKernel returns Debian's newest /boot/vmlinuz-* and its version, which
// must have its modules in /lib/modules.
func FindKernel() (string, string, error) {
	ks, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Strings(ks)
	for i := len(ks) - 1; i >= 0; i-- {
		kver := strings.TrimPrefix(filepath.Base(ks[i]), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", kver, "modules.dep")); err == nil {
			return ks[i], kver, nil
		}
	}
	return "", "", errors.New("find kernel: no /boot/vmlinuz-* with modules in /lib/modules (apt-get install linux-image-amd64)")
}

// extractVmlinux writes the uncompressed kernel inside the bzImage bz to
// dst, unless dst was already made from the same bz.
func extractVmlinux(bz, dst string) error {
	st, err := os.Stat(bz)
	if err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	stamp := fmt.Sprintf("%s %d %d\n", bz, st.Size(), st.ModTime().UnixNano())
	if old, err := os.ReadFile(dst + ".src"); err == nil && string(old) == stamp {
		if _, err := os.Stat(dst); err == nil {
			return nil
		}
	}
	data, err := os.ReadFile(bz)
	if err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	off := bytes.Index(data, []byte("\xfd7zXZ\x00"))
	if off < 0 {
		return fmt.Errorf("extract vmlinux from %s: no xz stream (only xz-compressed kernels are supported)", bz)
	}
	// The kernel's xz stream uses the x86 BCJ filter, which Go's xz
	// packages lack; xz-utils has it. Trailing bytes make xz exit non-zero.
	cmd := exec.Command("xz", "-dcq")
	cmd.Stdin = bytes.NewReader(data[off:])
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil && out.Len() == 0 {
		return fmt.Errorf("extract vmlinux from %s (apt-get install xz-utils): %w", bz, err)
	}
	elf := out.Bytes()
	if !bytes.HasPrefix(elf, []byte("\x7fELF")) {
		return fmt.Errorf("extract vmlinux from %s: the stream is not an ELF kernel", bz)
	}
	if err := os.WriteFile(dst, elf, 0o644); err != nil {
		return fmt.Errorf("write vmlinux: %w", err)
	}
	return os.WriteFile(dst+".src", []byte(stamp), 0o644)
}

func goBuild(ctx context.Context, o Options, pkg, out string, cgo bool) error {
	if strings.HasPrefix(pkg, "./") {
		if _, err := os.Stat(filepath.Join(o.Root, pkg)); err != nil {
			return fmt.Errorf("build %s: not there yet", pkg)
		}
	}
	cmd := exec.CommandContext(ctx, goBinary(), "build", "-trimpath",
		"-ldflags", "-s -w -buildid= -X vaultnode/firmware.Version="+o.Version, "-o", out, pkg)
	cmd.Dir = o.Root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOAMD64=v1")
	if cgo {
		cmd.Env = append(cmd.Env, "CGO_ENABLED=1")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		if cgo {
			return fmt.Errorf("build %s with cgo (apt-get install gcc libusb-1.0-0-dev): %w\n%s", pkg, err, b)
		}
		return fmt.Errorf("build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

func goBinary() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/local/go/bin/go"); err == nil {
		return "/usr/local/go/bin/go"
	}
	return "go"
}

func fileRecord(src, dest string) (cpio.Record, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return cpio.Record{}, fmt.Errorf("read %s: %w", src, err)
	}
	st, err := os.Stat(src)
	if err != nil {
		return cpio.Record{}, fmt.Errorf("stat %s: %w", src, err)
	}
	return cpio.StaticRecord(b, cpio.Info{Name: dest, Mode: cpio.S_IFREG | uint64(st.Mode().Perm())}), nil
}

// moduleRecords returns the modules in want with their modules.dep closure,
// a filtered modules.dep and modules.builtin.
func moduleRecords(kver string, want []string) ([]cpio.Record, error) {
	dir := filepath.Join("/lib/modules", kver)
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	defer f.Close()
	deps := map[string][]string{} // path -> dep paths
	byName := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		p, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[p] = strings.Fields(rest)
		byName[modName(p)] = p
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	builtinB, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if err != nil {
		return nil, fmt.Errorf("read modules.builtin: %w", err)
	}
	builtin := map[string]bool{}
	for _, l := range strings.Fields(string(builtinB)) {
		builtin[modName(l)] = true
	}
	need := map[string]bool{}
	var visit func(p string)
	visit = func(p string) {
		if need[p] {
			return
		}
		need[p] = true
		for _, d := range deps[p] {
			visit(d)
		}
	}
	for _, n := range want {
		n = strings.ReplaceAll(n, "-", "_")
		if p, ok := byName[n]; ok {
			visit(p)
		} else if !builtin[n] {
			return nil, fmt.Errorf("module %s: neither in modules.dep nor built into kernel %s", n, kver)
		}
	}
	paths := make([]string, 0, len(need))
	for p := range need {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var recs []cpio.Record
	var dep strings.Builder
	base := path.Join("lib/modules", kver)
	for _, p := range paths {
		r, err := fileRecord(filepath.Join(dir, p), path.Join(base, p))
		if err != nil {
			return nil, err
		}
		recs = append(recs, r)
		// No trailing space after the colon: u-root's parser would read a
		// bogus dependency on the module directory.
		if len(deps[p]) == 0 {
			fmt.Fprintf(&dep, "%s:\n", p)
		} else {
			fmt.Fprintf(&dep, "%s: %s\n", p, strings.Join(deps[p], " "))
		}
	}
	recs = append(recs,
		cpio.StaticFile(path.Join(base, "modules.dep"), dep.String(), 0o644),
		cpio.StaticFile(path.Join(base, "modules.builtin"), string(builtinB), 0o644))
	return recs, nil
}

func modName(p string) string {
	n := path.Base(strings.TrimSpace(p))
	for _, ext := range []string{".ko", ".ko.xz", ".ko.gz", ".ko.zst"} {
		if strings.HasSuffix(n, ext) {
			n = strings.TrimSuffix(n, ext)
			break
		}
	}
	return strings.ReplaceAll(n, "-", "_")
}

// toolRecords copies dynamic programs and their library closure.
func toolRecords(tools map[string]string) ([]cpio.Record, error) {
	var srcs []string
	for s := range tools {
		srcs = append(srcs, s)
	}
	sort.Strings(srcs)
	var recs []cpio.Record
	for _, s := range srcs {
		r, err := fileRecord(s, tools[s])
		if err != nil {
			return nil, fmt.Errorf("copy %s (apt-get install mdadm e2fsprogs): %w", s, err)
		}
		recs = append(recs, r)
	}
	libs, err := ldd.FList(srcs...)
	if err != nil {
		return nil, fmt.Errorf("list libraries of %v: %w", srcs, err)
	}
	sort.Strings(libs)
	seen := map[string]bool{}
	for _, l := range libs {
		if seen[l] || tools[l] != "" {
			continue
		}
		seen[l] = true
		st, err := os.Lstat(l)
		if err != nil {
			return nil, fmt.Errorf("copy %s: %w", l, err)
		}
		name := strings.TrimPrefix(l, "/")
		if st.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(l)
			if err != nil {
				return nil, fmt.Errorf("copy %s: %w", l, err)
			}
			recs = append(recs, cpio.Symlink(name, target))
			continue
		}
		r, err := fileRecord(l, name)
		if err != nil {
			return nil, err
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// writeCpio writes the records, with their parent directories, sorted and
// reproducible (zero times and owners, stable inode numbers).
func writeCpio(dst string, recs []cpio.Record) error {
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].Name < recs[j].Name })
	cpio.MakeAllReproducible(recs)
	tmp := dst + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	w := cpio.Newc.Writer(bw)
	if err := cpio.WriteRecordsAndDirs(w, recs); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return os.Rename(tmp, dst)
}
