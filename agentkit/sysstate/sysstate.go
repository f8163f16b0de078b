// Package sysstate collects what it takes to rebuild a machine: the system
// paths to back up (/etc, crontabs, the bootloader configuration) and
// generated reports written into a staging directory (the package
// selection, partition tables, block devices and filesystem identities,
// mounts, the EFI system partition's listing, and README-restore.txt, the
// plain-words order of what to recreate).
//
// A system configuration's version records the staging directory under the
// fixed root ReportRoot ("/vaultnode-system-report"), read from the staging
// directory through backup.Options.SourceOf: the staging directory lives in
// the agent's state directory, which every selection excludes, and a fixed
// path makes the report easy to find in any version and on any machine.
package sysstate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"
)

// ReportRoot is the path under which a system version records the reports.
const ReportRoot = "/vaultnode-system-report"

// README is the report that says what to recreate, in order.
const README = "README-restore.txt"

// SystemPaths are the files and directories a system configuration backs
// up when they exist.
var SystemPaths = []string{
	"/etc",
	"/usr/lib/os-release",  // the release (/etc/os-release links to it)
	"/var/spool/cron",      // crontabs (Debian: crontabs/USER; RHEL: USER)
	"/var/spool/anacron",   // anacron timestamps
	"/boot/grub/grub.cfg",  // GRUB (Debian)
	"/boot/grub2/grub.cfg", // GRUB (RHEL)
	"/boot/grub/grubenv",   // saved entry
	"/boot/loader/entries", // systemd-boot / BLS entries
	"/boot/efi/EFI/debian/grub.cfg",
	"/etc/default/grub", // inside /etc, listed to say it matters
}

// Options of Collect.
type Options struct {
	// Staging is the directory the reports are written to (made if
	// missing); files whose content did not change keep their times, so
	// an unchanged report is not read again.
	Staging string
	// Root is the root of the system to describe ("/" by default; a test
	// may point it elsewhere for the paths, the commands still describe
	// this machine).
	Root string
	Log  *zap.Logger
	// Timeout bounds each command (default 2 minutes).
	Timeout time.Duration
}

// Collection is what Collect gathered.
type Collection struct {
	// Paths are the existing system paths to back up (absolute, on Root).
	Paths []string
	// Staging is where the reports are.
	Staging string
	// Reports are the report files written, relative to Staging.
	Reports []string
	// Missing says which sources were not available and why (a command
	// not installed, a file absent); they are also in the README.
	Missing []string
}

// report is one generated file.
type report struct {
	name string
	data []byte
}

// Collect writes the reports into o.Staging and lists the system paths.
func Collect(ctx context.Context, o Options) (*Collection, error) {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.Staging == "" {
		return nil, errors.New("collect system state: no staging directory")
	}
	if err := os.MkdirAll(o.Staging, 0o700); err != nil {
		return nil, fmt.Errorf("make staging directory: %w", err)
	}
	c := &Collection{Staging: o.Staging}
	for _, p := range SystemPaths {
		abs := filepath.Join(o.Root, p)
		if _, err := os.Lstat(abs); err == nil {
			c.Paths = append(c.Paths, abs)
		} else {
			c.Missing = append(c.Missing, fmt.Sprintf("%s: not present", p))
		}
	}
	col := &collector{ctx: ctx, o: o, c: c}
	var reps []report
	add := func(name string, data []byte) {
		if data != nil {
			reps = append(reps, report{name, data})
		}
	}

	// Packages.
	var pk pkgSummary
	if _, err := exec.LookPath("dpkg"); err == nil {
		sel := col.run("dpkg", "--get-selections")
		man := col.run("apt-mark", "showmanual")
		add("packages/dpkg-selections.txt", sel)
		add("packages/apt-manual.txt", man)
		pk = dpkgSummary(sel, man)
	} else if _, err := exec.LookPath("rpm"); err == nil {
		out := col.run("rpm", "-qa", "--qf", "%{NAME}\t%{VERSION}-%{RELEASE}\t%{ARCH}\n")
		add("packages/rpm-qa.txt", out)
		pk = pkgSummary{manager: "rpm", total: strings.Count(string(out), "\n")}
	} else {
		c.Missing = append(c.Missing, "package selection: neither dpkg nor rpm is installed")
	}

	// Disks, partitions, filesystems.
	lsblkJSON := col.run("lsblk", "-J", "-b", "-o", "NAME,SIZE,TYPE,FSTYPE,UUID,LABEL,MOUNTPOINT,PARTUUID,PTTYPE,PTUUID")
	add("disks/lsblk.json", lsblkJSON)
	devs := parseLsblk(lsblkJSON)
	for _, d := range devs.disks() {
		if d.Type != "disk" || d.Size == 0 || strings.HasPrefix(d.Name, "zram") || strings.HasPrefix(d.Name, "loop") {
			continue
		}
		out := col.runQuiet("sfdisk", "-d", "/dev/"+d.Name)
		if out != nil {
			add("disks/sfdisk-"+d.Name+".txt", out)
		}
	}
	mounts, err := os.ReadFile("/proc/mounts")
	if err == nil {
		add("disks/mounts.txt", mounts)
	} else {
		c.Missing = append(c.Missing, "/proc/mounts: "+err.Error())
	}
	blkid := col.run("blkid", "-o", "export")
	add("disks/blkid.txt", blkid)
	devs.fill(parseBlkid(blkid), parseMounts(mounts))

	// Bootloader: the EFI system partition's listing.
	efi := filepath.Join(o.Root, "/boot/efi/EFI")
	if l, err := listing(efi); err == nil {
		add("boot/efi-listing.txt", l)
	} else {
		c.Missing = append(c.Missing, "/boot/efi/EFI: "+err.Error())
	}

	add(README, readme(devs, pk, c, o.Root, time.Now()))
	add("commands.txt", []byte(strings.Join(col.log, "\n")+"\n"))

	keep := map[string]bool{}
	for _, r := range reps {
		keep[r.name] = true
		if err := writeIfChanged(filepath.Join(o.Staging, r.name), r.data); err != nil {
			return nil, err
		}
		c.Reports = append(c.Reports, r.name)
	}
	// reports of an earlier run that this run did not make (a disk gone)
	filepath.WalkDir(o.Staging, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(o.Staging, p)
			if !keep[rel] {
				os.Remove(p)
			}
		}
		return nil
	})
	sort.Strings(c.Reports)
	return c, nil
}

type collector struct {
	ctx context.Context
	o   Options
	c   *Collection
	log []string // what ran and how it ended, for commands.txt
}

// run runs a command and returns its standard output, or nil (noted in
// Missing) when it is not installed or fails.
func (col *collector) run(name string, args ...string) []byte {
	out, err := col.exec(name, args...)
	if err != nil {
		col.c.Missing = append(col.c.Missing, err.Error())
		return nil
	}
	return out
}

// runQuiet is run without noting a failure in Missing (a disk without a
// partition table makes sfdisk fail).
func (col *collector) runQuiet(name string, args ...string) []byte {
	out, _ := col.exec(name, args...)
	return out
}

func (col *collector) exec(name string, args ...string) ([]byte, error) {
	line := strings.Join(append([]string{name}, args...), " ")
	path, err := exec.LookPath(name)
	if err != nil {
		col.log = append(col.log, line+": not installed")
		return nil, fmt.Errorf("%s: not installed", name)
	}
	ctx, cancel := context.WithTimeout(col.ctx, col.o.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		col.log = append(col.log, fmt.Sprintf("%s: %v %s", line, err, msg))
		col.o.Log.Debug("system state command failed", zap.String("command", line), zap.Error(err), zap.String("stderr", msg))
		return nil, fmt.Errorf("%s: %v %s", line, err, msg)
	}
	col.log = append(col.log, line+": ok")
	return stdout.Bytes(), nil
}

// pkgSummary is what the README says of packages.
type pkgSummary struct {
	manager  string // dpkg, rpm or ""
	total    int
	manual   []string
	selected int
}

func dpkgSummary(sel, manual []byte) pkgSummary {
	s := pkgSummary{manager: "dpkg", manual: strings.Fields(string(manual))}
	for _, l := range strings.Split(string(sel), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 {
			s.total++
			if f[1] == "install" || f[1] == "hold" {
				s.selected++
			}
		}
	}
	return s
}

// blockdev is one node of lsblk -J.
type blockdev struct {
	Name       string     `json:"name"`
	Size       int64      `json:"size"`
	Type       string     `json:"type"`
	FSType     *string    `json:"fstype"`
	UUID       *string    `json:"uuid"`
	Label      *string    `json:"label"`
	Mountpoint *string    `json:"mountpoint"`
	PartUUID   *string    `json:"partuuid"`
	PTType     *string    `json:"pttype"`
	PTUUID     *string    `json:"ptuuid"`
	Children   []blockdev `json:"children"`
}

type blockdevs struct {
	Devices []blockdev `json:"blockdevices"`
}

func parseLsblk(b []byte) blockdevs {
	var d blockdevs
	if b != nil {
		json.Unmarshal(b, &d)
	}
	return d
}

func (d blockdevs) disks() []blockdev { return d.Devices }

// fill completes what lsblk left empty (it reads udev's database, which a
// container or a system without udev lacks) from blkid and /proc/mounts.
func (d *blockdevs) fill(ids map[string]map[string]string, mounts map[string][2]string) {
	var walk func(b *blockdev)
	set := func(p **string, v string) {
		if str(*p) == "" && v != "" {
			*p = &v
		}
	}
	walk = func(b *blockdev) {
		dev := "/dev/" + b.Name
		if id, ok := ids[dev]; ok {
			set(&b.FSType, id["TYPE"])
			set(&b.UUID, id["UUID"])
			set(&b.Label, id["LABEL"])
			set(&b.PartUUID, id["PARTUUID"])
			set(&b.PTType, id["PTTYPE"])
		}
		if m, ok := mounts[dev]; ok {
			set(&b.Mountpoint, m[0])
			set(&b.FSType, m[1])
		}
		for i := range b.Children {
			walk(&b.Children[i])
		}
	}
	for i := range d.Devices {
		walk(&d.Devices[i])
	}
}

// parseBlkid reads `blkid -o export`: blocks of KEY=value lines, one per
// device, starting with DEVNAME.
func parseBlkid(b []byte) map[string]map[string]string {
	out := map[string]map[string]string{}
	var cur map[string]string
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(l), "=")
		if !ok {
			cur = nil
			continue
		}
		if k == "DEVNAME" {
			cur = map[string]string{}
			out[v] = cur
			continue
		}
		if cur != nil {
			cur[k] = v
		}
	}
	return out
}

// parseMounts maps each mounted /dev/ device to its first mount point and
// filesystem type.
func parseMounts(b []byte) map[string][2]string {
	out := map[string][2]string{}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && strings.HasPrefix(f[0], "/dev/") {
			if _, ok := out[f[0]]; !ok {
				out[f[0]] = [2]string{f[1], f[2]}
			}
		}
	}
	return out
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// listing is a find-style listing of a directory tree (type, size, path).
func listing(dir string) ([]byte, error) {
	var b bytes.Buffer
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %10d %s\n", info.Mode(), info.Size(), rel)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// writeIfChanged writes data to p unless p already holds it.
func writeIfChanged(p string, data []byte) error {
	if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for x := n / unit; x >= unit; x /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// readme says in plain words what to recreate, in order.
func readme(devs blockdevs, pk pkgSummary, c *Collection, root string, now time.Time) []byte {
	var b bytes.Buffer
	host, _ := os.Hostname()
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	p("How to rebuild %s from this system-state backup", host)
	p("=================================================")
	p("")
	p("This directory (%s in the backup) was written by vault-agent.", ReportRoot)
	p("The other paths of the same version are the machine's own files:")
	for _, x := range c.Paths {
		p("  %s", x)
	}
	p("")
	p("Follow the steps in order. Commands are examples for a Linux rescue system;")
	p("check device names first (lsblk), they may differ on the new hardware.")
	p("")
	p("1. Disks and partition tables")
	p("   -------------------------")
	n := 0
	for _, d := range devs.Devices {
		if d.Type != "disk" || d.Size == 0 || strings.HasPrefix(d.Name, "zram") || strings.HasPrefix(d.Name, "loop") {
			continue
		}
		n++
		pt := str(d.PTType)
		if pt == "" {
			pt = "no partition table"
		}
		p("   Disk /dev/%s: %s (%d bytes), %s.", d.Name, human(d.Size), d.Size, pt)
		if len(d.Children) > 0 {
			p("   Recreate its partitions with the same table (this overwrites the new disk):")
			p("     sfdisk /dev/%s < disks/sfdisk-%s.txt", d.Name, d.Name)
		} else if fs := str(d.FSType); fs != "" {
			p("   The whole disk holds a filesystem (%s), without partitions.", fs)
		}
		for _, ch := range d.Children {
			p("     partition /dev/%s: %s, %s", ch.Name, human(ch.Size), describe(ch))
			for _, g := range ch.Children {
				p("       inside it /dev/%s (%s): %s", g.Name, g.Type, describe(g))
			}
		}
	}
	if n == 0 {
		p("   No disk was found (lsblk unavailable?): see disks/ for what was recorded.")
	}
	p("")
	p("2. Filesystems (same type, UUID and label, so /etc/fstab and the bootloader find them)")
	p("   ---------------------------------------------------------------------------------")
	var fsn int
	var walk func(d blockdev)
	walk = func(d blockdev) {
		if t := str(d.FSType); t != "" && t != "swap" && !strings.HasSuffix(t, "_member") && t != "crypto_LUKS" && t != "LVM2_member" {
			fsn++
			p("   /dev/%s: %s", d.Name, describe(d))
			p("     %s", mkfs(d))
		} else if t == "swap" {
			fsn++
			p("   /dev/%s: swap, UUID %s", d.Name, str(d.UUID))
			p("     mkswap -U %s /dev/%s", str(d.UUID), d.Name)
		} else if t != "" {
			fsn++
			p("   /dev/%s: %s (recreate the RAID/LVM/LUKS layer first, then what it holds)", d.Name, t)
		}
		for _, ch := range d.Children {
			walk(ch)
		}
	}
	for _, d := range devs.Devices {
		if !strings.HasPrefix(d.Name, "zram") && !strings.HasPrefix(d.Name, "loop") {
			walk(d)
		}
	}
	if fsn == 0 {
		p("   No filesystem was recorded: see disks/blkid.txt and disks/mounts.txt.")
	}
	p("   Then mount them as etc/fstab of this backup says, under /mnt for a rescue system.")
	p("")
	p("3. The operating system and packages")
	p("   ----------------------------------")
	switch pk.manager {
	case "dpkg":
		p("   Install the same Debian/Ubuntu release (etc/os-release in this backup says which),")
		p("   then the package selection: %d packages selected, %d installed by hand:", pk.selected, len(pk.manual))
		p("     dpkg --set-selections < packages/dpkg-selections.txt && apt-get dselect-upgrade")
		p("   or only what was installed by hand (dependencies follow):")
		p("     xargs apt-get install -y < packages/apt-manual.txt")
	case "rpm":
		p("   Install the same distribution release (etc/os-release), then the %d packages", pk.total)
		p("   of packages/rpm-qa.txt, e.g. dnf install $(cut -f1 packages/rpm-qa.txt)")
	default:
		p("   No package manager (dpkg, rpm) answered: install the release etc/os-release names by hand.")
	}
	p("")
	p("4. Configuration and crontabs")
	p("   ---------------------------")
	p("   Restore etc/ over the new /etc (or compare first: vault-agent diff CONFIG@VERSION /etc),")
	p("   and var/spool/cron/ if present; owners and modes are kept by vault-agent restore run")
	p("   as root (add -setid to keep set-user-ID and set-group-ID bits, -devices for device nodes).")
	p("")
	p("5. Bootloader")
	p("   ----------")
	p("   With boot/grub/grub.cfg and etc/default/grub restored, reinstall the bootloader from")
	p("   the new system: grub-install /dev/DISK (BIOS) or grub-install --target=x86_64-efi (EFI),")
	p("   then update-grub. boot/efi-listing.txt lists what the EFI system partition held.")
	p("")
	if len(c.Missing) > 0 {
		p("Not recorded (not present on this machine, or a command failed):")
		for _, m := range c.Missing {
			p("  - %s", m)
		}
		p("")
	}
	p("Recorded files: disks/lsblk.json (block devices), disks/sfdisk-*.txt (partition tables),")
	p("disks/blkid.txt and disks/mounts.txt (filesystem identities), packages/ (package selection),")
	p("commands.txt (what ran). Recorded from root %s.", root)
	return b.Bytes()
}

func describe(d blockdev) string {
	var parts []string
	if t := str(d.FSType); t != "" {
		parts = append(parts, t)
	}
	if u := str(d.UUID); u != "" {
		parts = append(parts, "UUID "+u)
	}
	if l := str(d.Label); l != "" {
		parts = append(parts, "label "+l)
	}
	if m := str(d.Mountpoint); m != "" {
		parts = append(parts, "mounted at "+m)
	}
	if len(parts) == 0 {
		return "no filesystem"
	}
	return strings.Join(parts, ", ")
}

// mkfs suggests the command that recreates a filesystem with its identity.
func mkfs(d blockdev) string {
	dev, uuid, label := "/dev/"+d.Name, str(d.UUID), str(d.Label)
	if uuid == "" {
		return fmt.Sprintf("mkfs -t %s %s (the UUID could not be read here: blkid had no access; check etc/fstab for UUID= entries)", str(d.FSType), dev)
	}
	lab := func(flag string) string {
		if label == "" {
			return ""
		}
		return fmt.Sprintf(" %s %q", flag, label)
	}
	switch t := str(d.FSType); t {
	case "ext2", "ext3", "ext4":
		return fmt.Sprintf("mkfs.%s -U %s%s %s", t, uuid, lab("-L"), dev)
	case "xfs":
		return fmt.Sprintf("mkfs.xfs -m uuid=%s%s %s", uuid, lab("-L"), dev)
	case "btrfs":
		return fmt.Sprintf("mkfs.btrfs -U %s%s %s", uuid, lab("-L"), dev)
	case "vfat":
		return fmt.Sprintf("mkfs.vfat -i %s%s %s", strings.ReplaceAll(uuid, "-", ""), lab("-n"), dev)
	default:
		return fmt.Sprintf("mkfs -t %s %s (then set UUID %s)", t, dev, uuid)
	}
}
