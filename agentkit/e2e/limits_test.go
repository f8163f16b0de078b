package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"vaultnode/internal/tree"
)

// A local user can make a directory tree deeper than the listing's path
// limit (tree.MaxPathLen); the vault refuses a listing holding such a
// path. The backup must still commit, leave out what lies too deep, and
// say so; the rest restores.
func TestBackupPathOverLimit(t *testing.T) {
	e := newEnv(t)
	if err := os.WriteFile(filepath.Join(e.src, "kept.txt"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	// 255-byte names, one below the other, through directory handles
	// (the whole path is far over PATH_MAX).
	name := strings.Repeat("d", 255)
	fd, err := unix.Open(e.src, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	depth := 0
	for rel := len(e.src); rel <= tree.MaxPathLen+1024; rel += len(name) + 1 {
		if err := unix.Mkdirat(fd, name, 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, name, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
		depth++
	}
	deep, err := unix.Openat(fd, "deep.txt", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(deep, []byte("too deep"))
	unix.Close(deep)
	unix.Close(fd)

	r := e.a.run("backup", "-json", "home")
	var s summary
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &s); err != nil {
		t.Fatalf("backup of a tree %d directories deep: %s", depth, r)
	}
	if s.Version != 1 {
		t.Fatalf("backup of a tree %d directories deep committed version %d: %s", depth, s.Version, r)
	}
	found := false
	for _, p := range s.Problems {
		found = found || strings.Contains(p, "tree.MaxPathLen")
	}
	if !found {
		t.Fatalf("the backup does not report the path over tree.MaxPathLen: %v", s.Problems)
	}
	got, rr := e.restore(1)
	if rr.code != 0 {
		t.Logf("restore: %s", rr)
	}
	if b, err := os.ReadFile(filepath.Join(got, "kept.txt")); err != nil || string(b) != "kept" {
		t.Fatalf("kept.txt restored as %q, %v", b, err)
	}
}
