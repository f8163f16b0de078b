package restore

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// openBeneath opens what lies beneath the root and refuses a symlink in
// the way, a way out and a name that is no name, with openat2 and with the
// component-by-component walk used on kernels without it.
func TestOpenBeneath(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		name := "openat2"
		if fallback {
			name = "openat walk"
		}
		t.Run(name, func(t *testing.T) {
			noOpenat2.Store(fallback)
			defer noOpenat2.Store(false)
			base := t.TempDir()
			root := filepath.Join(base, "root")
			must(t, os.MkdirAll(filepath.Join(root, "a/b"), 0o755))
			must(t, os.WriteFile(filepath.Join(root, "a/b/f"), []byte("f"), 0o644))
			must(t, os.WriteFile(filepath.Join(base, "outside"), []byte("o"), 0o644))
			must(t, os.Symlink(base, filepath.Join(root, "up")))
			must(t, os.Symlink("b", filepath.Join(root, "a/inner")))
			must(t, os.Symlink("b/f", filepath.Join(root, "a/flink")))
			rfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			must(t, err)
			defer unix.Close(rfd)
			for _, ok := range []string{"", ".", "a", "a/b", "a/b/f"} {
				fd, err := openBeneath(rfd, ok, unix.O_PATH)
				if err != nil {
					t.Errorf("open %q: %v", ok, err)
					continue
				}
				unix.Close(fd)
			}
			// A final symlink opens as itself only with O_PATH.
			fd, err := openBeneath(rfd, "a/flink", unix.O_PATH)
			if err != nil {
				t.Errorf("open a/flink with O_PATH: %v", err)
			} else {
				var st unix.Stat_t
				unix.Fstat(fd, &st)
				if st.Mode&unix.S_IFMT != unix.S_IFLNK {
					t.Errorf("a/flink opened as mode %o, not the symlink", st.Mode)
				}
				unix.Close(fd)
			}
			for _, bad := range []string{"up/outside", "a/inner/f", "../outside", "a/../../outside", base + "/outside", "a//b", "a/./b"} {
				fd, err := openBeneath(rfd, bad, unix.O_PATH)
				if err == nil {
					unix.Close(fd)
					t.Errorf("open %q: opened", bad)
				} else if !errors.Is(err, ErrRefused) {
					t.Errorf("open %q: %v, want a refusal", bad, err)
				}
			}
			if fd, err := openBeneath(rfd, "a/flink", unix.O_RDONLY); err == nil {
				unix.Close(fd)
				t.Errorf("a/flink opened for reading through the symlink")
			}
		})
	}
}

// The hostile hard links and the swap mid-restore are refused the same on
// a kernel without openat2.
func TestHostileWithoutOpenat2(t *testing.T) {
	noOpenat2.Store(true)
	defer noOpenat2.Store(false)
	t.Run("hard links", TestHostileHardLinks)
	t.Run("swap", TestHostileSwapMidRestore)
}
