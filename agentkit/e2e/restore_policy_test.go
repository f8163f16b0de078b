package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRestorePrivilegePolicy: vault-agent restore recreates device nodes
// and keeps set-id bits only with -devices and -setid (as root); without
// them it skips and strips them, says so in NOTE lines, and exits 0.
func TestRestorePrivilegePolicy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: needs root (mknod, chown); CI runs as root")
	}
	e := newEnv(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(e.src, "suid"), []byte("#!/bin/sh\n"), 0o755))
	must(unix.Chmod(filepath.Join(e.src, "suid"), 0o4755))
	must(os.WriteFile(filepath.Join(e.src, "plain"), []byte("plain\n"), 0o644))
	must(unix.Mknod(filepath.Join(e.src, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mkfifo(filepath.Join(e.src, "fifo"), 0o640))
	if fi, err := os.Lstat(filepath.Join(e.src, "suid")); err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("the source file lacks set-user-ID: %v %v", fi, err)
	}
	e.a.backup("home")

	to := filepath.Join(e.root, "plain-restore")
	r := e.a.run("restore", "home@1", "-to", to)
	if r.code != 0 {
		t.Fatalf("restore without -devices -setid: %s", r)
	}
	got := filepath.Join(to, e.src)
	for _, want := range []string{filepath.Join(e.src, "suid")[1:] + `": set-user-ID`, filepath.Join(e.src, "null")[1:] + `": chardev not recreated`} {
		if !strings.Contains(r.stdout, "NOTE: \""+want) {
			t.Errorf("restore output lacks a NOTE for %s:\n%s", want, r.stdout)
		}
	}
	if fi, err := os.Lstat(filepath.Join(got, "suid")); err != nil || fi.Mode()&os.ModeSetuid != 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("suid restored without -setid: %v %v; want 0755 without set-user-ID", fi.Mode(), err)
	}
	if _, err := os.Lstat(filepath.Join(got, "null")); !os.IsNotExist(err) {
		t.Errorf("device node restored without -devices: %v", err)
	}
	if fi, err := os.Lstat(filepath.Join(got, "fifo")); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("fifo not restored: %v %v", fi, err)
	}

	to = filepath.Join(e.root, "full-restore")
	r = e.a.run("restore", "home@1", "-to", to, "-devices", "-setid")
	if r.code != 0 || strings.Contains(r.stdout, "NOTE:") {
		t.Fatalf("restore with -devices -setid: %s", r)
	}
	got = filepath.Join(to, e.src)
	if fi, err := os.Lstat(filepath.Join(got, "suid")); err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Errorf("suid restored with -setid as root: %v %v; want set-user-ID", fi.Mode(), err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(got, "null"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) {
		t.Errorf("device node with -devices as root: %v, mode %o rdev %x", err, st.Mode, st.Rdev)
	}
}
