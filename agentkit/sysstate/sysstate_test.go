package sysstate

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Collect on this machine: the commands run for real, the paths come from
// a fake root.
func TestCollect(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"usr/lib/os-release", "etc/hostname", "etc/default/grub", "var/spool/cron/crontabs/root", "boot/grub/grub.cfg", "boot/efi/EFI/debian/shimx64.efi"} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(p+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	staging := filepath.Join(t.TempDir(), "report")
	c, err := Collect(context.Background(), Options{Staging: staging, Root: root})
	if err != nil {
		t.Fatal(err)
	}
	wantPaths := []string{root + "/etc", root + "/usr/lib/os-release", root + "/var/spool/cron", root + "/boot/grub/grub.cfg", root + "/etc/default/grub"}
	if diff := cmp.Diff(wantPaths, c.Paths); diff != "" {
		t.Errorf("paths (-want +got):\n%s", diff)
	}
	want := []string{README, "commands.txt", "disks/lsblk.json", "disks/mounts.txt", "boot/efi-listing.txt"}
	if _, err := exec.LookPath("dpkg"); err == nil {
		want = append(want, "packages/dpkg-selections.txt", "packages/apt-manual.txt")
	}
	for _, w := range want {
		fi, err := os.Stat(filepath.Join(staging, w))
		if err != nil {
			t.Errorf("report %s: %v (reports: %v; missing: %v)", w, err, c.Reports, c.Missing)
			continue
		}
		if fi.Size() == 0 {
			t.Errorf("report %s is empty", w)
		}
	}
	rd, err := os.ReadFile(filepath.Join(staging, README))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"1. Disks and partition tables", "2. Filesystems", "3. The operating system and packages", "5. Bootloader", "Disk /dev/"} {
		if !strings.Contains(string(rd), s) {
			t.Errorf("README lacks %q:\n%s", s, rd)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(staging, "boot/efi-listing.txt")); !strings.Contains(string(b), "debian/shimx64.efi") {
		t.Errorf("EFI listing: %s", b)
	}

	// A second run with nothing changed keeps the reports' times (the
	// backup's cache then skips them), and removes stale reports. The EFI
	// listing comes from the test's own tree; lsblk describes the host,
	// whose loop devices other tests running at the same time change.
	fi1, _ := os.Stat(filepath.Join(staging, "boot/efi-listing.txt"))
	stale := filepath.Join(staging, "disks/sfdisk-gone.txt")
	os.WriteFile(stale, []byte("x"), 0o600)
	time.Sleep(10 * time.Millisecond) // let a rewrite show in the mtime
	if _, err := Collect(context.Background(), Options{Staging: staging, Root: root}); err != nil {
		t.Fatal(err)
	}
	fi2, _ := os.Stat(filepath.Join(staging, "boot/efi-listing.txt"))
	if !fi1.ModTime().Equal(fi2.ModTime()) {
		t.Errorf("an unchanged report was rewritten: %v then %v", fi1.ModTime(), fi2.ModTime())
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("a stale report stayed: %v", err)
	}
}

func TestReadme(t *testing.T) {
	lsblk := []byte(`{"blockdevices":[
	 {"name":"sda","size":512110190592,"type":"disk","fstype":null,"uuid":null,"label":null,"mountpoint":null,"partuuid":null,"pttype":"gpt","ptuuid":"a1",
	  "children":[
	   {"name":"sda1","size":536870912,"type":"part","fstype":"vfat","uuid":"ABCD-1234","label":null,"mountpoint":"/boot/efi","partuuid":"p1"},
	   {"name":"sda2","size":1073741824,"type":"part","fstype":null,"uuid":null,"label":null,"mountpoint":null,"partuuid":"p2"},
	   {"name":"sda3","size":8589934592,"type":"part","fstype":"swap","uuid":"5w4p","label":null,"mountpoint":"[SWAP]","partuuid":"p3"}
	  ]},
	 {"name":"zram0","size":0,"type":"disk"}
	]}`)
	devs := parseLsblk(lsblk)
	blkid := []byte("DEVNAME=/dev/sda2\nUUID=1111-2222\nTYPE=ext4\nLABEL=root\n\nDEVNAME=/dev/sda1\nUUID=ABCD-1234\nTYPE=vfat\n")
	mounts := []byte("/dev/sda2 / ext4 rw 0 0\nproc /proc proc rw 0 0\n")
	devs.fill(parseBlkid(blkid), parseMounts(mounts))
	rd := string(readme(devs, pkgSummary{manager: "dpkg", selected: 500, manual: []string{"vim", "openssh-server"}},
		&Collection{Paths: []string{"/etc"}}, "/", time.Unix(0, 0)))
	for _, s := range []string{
		"Disk /dev/sda: 476.9 GiB (512110190592 bytes), gpt.",
		"sfdisk /dev/sda < disks/sfdisk-sda.txt",
		"partition /dev/sda2: 1.0 GiB, ext4, UUID 1111-2222, label root, mounted at /",
		`mkfs.ext4 -U 1111-2222 -L "root" /dev/sda2`,
		"mkfs.vfat -i ABCD1234 /dev/sda1",
		"mkswap -U 5w4p /dev/sda3",
		"500 packages selected, 2 installed by hand",
	} {
		if !strings.Contains(rd, s) {
			t.Errorf("README lacks %q:\n%s", s, rd)
		}
	}
	if strings.Contains(rd, "zram0") {
		t.Errorf("README mentions the zram device:\n%s", rd)
	}
}
