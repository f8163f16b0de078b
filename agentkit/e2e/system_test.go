package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemState backs up this machine's system state to a real vault,
// restores it onto a fresh directory and requires the files of /etc and
// the report of disks and packages there.
func TestSystemState(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: reading all of /etc needs root (CI runs as root)")
	}
	e := newEnv(t)
	out := e.a.must("config", "set", "sys", "-system")
	if !strings.Contains(out, "/vaultnode-system-report") {
		t.Errorf("config set -system printed %q", out)
	}
	if r := e.a.run("config", "set", "sys2", "-system", "-path", "/etc"); r.code != 2 {
		t.Errorf("-system with -path: want a usage error (exit 2), got %s", r)
	}
	s1 := e.a.backup("sys")
	t.Logf("system state v1: %+v", s1)
	if s1.Files < 10 {
		t.Errorf("the system state holds %d files", s1.Files)
	}
	// Nothing changed: the reports keep their times, so (almost) nothing
	// is read again. /etc/mtab-like files and mounts made by concurrent
	// tests may change. The second backup may read again the reports
	// written in the milliseconds before the first began (racy objects,
	// agentkit/backup/walk.go); the third reads none of them.
	s2 := e.a.backup("sys")
	t.Logf("system state v2: %+v", s2)
	if s2.FilesRead > 20 {
		t.Errorf("a second system-state backup with nothing changed read %d files", s2.FilesRead)
	}
	s3 := e.a.backup("sys")
	t.Logf("system state v3: %+v", s3)
	if s3.FilesRead > 5 {
		t.Errorf("a third system-state backup with nothing changed read %d files", s3.FilesRead)
	}

	to := filepath.Join(e.root, "rebuilt")
	if r := e.a.run("restore", "sys@1", "-to", to); r.code != 0 {
		t.Fatalf("restore of the system state: %s", r)
	}
	for _, f := range []string{"etc/hostname", "etc/passwd", "etc/fstab", "etc/os-release"} {
		read := os.ReadFile
		if fi, err := os.Lstat("/" + f); err != nil {
			continue // not on this machine
		} else if fi.Mode()&os.ModeSymlink != 0 {
			read = func(p string) ([]byte, error) { s, err := os.Readlink(p); return []byte(s), err }
		}
		want, err := read("/" + f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := read(filepath.Join(to, f))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("restored %s: %v, content equal: %v", f, err, bytes.Equal(got, want))
		}
	}
	if fi, err := os.Lstat(filepath.Join(to, "etc/shadow")); err == nil && fi.Mode().Perm()&0o004 != 0 {
		t.Errorf("restored etc/shadow is world-readable: %v", fi.Mode())
	}
	rep := filepath.Join(to, "vaultnode-system-report")
	readme, err := os.ReadFile(filepath.Join(rep, "README-restore.txt"))
	if err != nil {
		t.Fatalf("the restored system state has no report: %v", err)
	}
	for _, s := range []string{"1. Disks and partition tables", "2. Filesystems", "3. The operating system and packages", "4. Configuration and crontabs", "5. Bootloader", "Disk /dev/"} {
		if !bytes.Contains(readme, []byte(s)) {
			t.Errorf("README-restore.txt lacks %q:\n%s", s, readme)
		}
	}
	if _, err := exec.LookPath("dpkg"); err == nil {
		sel, err := os.ReadFile(filepath.Join(rep, "packages/dpkg-selections.txt"))
		if err != nil || !bytes.Contains(sel, []byte("dpkg")) {
			t.Errorf("restored package selection: %v\n%.200s", err, sel)
		}
		if _, err := os.Stat(filepath.Join(rep, "packages/apt-manual.txt")); err != nil {
			t.Errorf("restored manual package list: %v", err)
		}
	}
	for _, f := range []string{"disks/lsblk.json", "disks/mounts.txt", "commands.txt"} {
		if _, err := os.Stat(filepath.Join(rep, f)); err != nil {
			t.Errorf("restored report %s: %v", f, err)
		}
	}
	t.Logf("README-restore.txt:\n%s", readme)
}
