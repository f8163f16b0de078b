package meta

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"vaultnode/internal/tree"
)

// TestXattrsAt: the attributes of objects that cannot be opened (a
// symlink, a FIFO) read relative to their directory (listxattrat,
// getxattrat) are the ones read through /proc, as on kernels without
// those calls, values of every size whole; a
// symlink's attributes are its own, not its target's.
func TestXattrsAt(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	dfd := openDir(t, dir)
	if err := os.WriteFile(filepath.Join(dir, "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(dir, "f"), "trusted.target", []byte("T"), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Symlinkat("f", dfd, "l"); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifoat(dfd, "p", 0o644); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("v"), 3000)
	for _, name := range []string{"l", "p"} {
		for _, x := range []tree.Xattr{{Name: "trusted.a", Value: []byte("1")}, {Name: "trusted.big", Value: big}, {Name: "trusted.empty", Value: []byte{}}} {
			if err := unix.Lsetxattr(filepath.Join(dir, name), x.Name, x.Value, 0); err != nil {
				t.Fatalf("set %s on %s: %v", x.Name, name, err)
			}
		}
	}
	want := []tree.Xattr{{Name: "trusted.a", Value: []byte("1")}, {Name: "trusted.big", Value: big}, {Name: "trusted.empty", Value: []byte{}}}
	defer noXattrAt.Store(false)
	for _, viaProc := range []bool{false, true} {
		noXattrAt.Store(viaProc)
		for _, name := range []string{"l", "p"} {
			got, err := Xattrs(dfd, name)
			if err != nil {
				t.Fatalf("Xattrs %s (through /proc: %v): %v", name, viaProc, err)
			}
			if !cmp.Equal(got, want) {
				t.Errorf("Xattrs %s (through /proc: %v): %d attributes %v", name, viaProc, len(got), got[:min(len(got), 1)])
			}
		}
		if !viaProc && noXattrAt.Load() {
			t.Logf("this kernel lacks listxattrat: both passes read through /proc")
		}
	}
	if _, err := Xattrs(dfd, "missing"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Xattrs of a missing name: %v", err)
	}
}
