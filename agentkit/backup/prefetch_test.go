package backup

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/selection"
)

// The read-ahead enters the subdirectories the walker will enter: not
// excluded ones, not other filesystems, not symlinks to directories.
func TestPrefetchFollowsTheSelection(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"a", "b/c", "skip.cache", "mnt"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "file"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	want := []string{"a", "b"}
	if os.Geteuid() == 0 {
		if err := unix.Mount("tmpfs", filepath.Join(root, "mnt"), "tmpfs", 0, "size=1m"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(filepath.Join(root, "mnt"), 0) })
	} else {
		t.Log("not root: no mount to stay out of")
		want = append(want, "mnt")
	}
	sel, err := selection.New(selection.Options{Exclude: []string{"*.cache"}, StatePath: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	p := &prefetcher{ctx: context.Background(), sel: sel}
	var got []string
	_, subs := p.read(prefetchDir{src: root, abs: root})
	for _, d := range subs {
		got = append(got, filepath.Base(d.abs))
		if d.src != filepath.Join(root, filepath.Base(d.abs)) {
			t.Errorf("subdirectory %s read from %s", d.abs, d.src)
		}
	}
	sort.Strings(got)
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || (len(want) == 3 && got[2] != want[2]) {
		t.Errorf("subdirectories read ahead: %v, want %v", got, want)
	}
}

// The readers finish on their own when the tree is read and stop at once
// when the walk ends first.
func TestPrefetchEnds(t *testing.T) {
	root := t.TempDir()
	for i := range 50 {
		if err := os.MkdirAll(filepath.Join(root, "d", string(rune('a'+i%26)), string(rune('a'+i/26))), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sel, err := selection.New(selection.Options{StatePath: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	_, stop := startPrefetch(context.Background(), sel, []prefetchDir{{src: root, abs: root}})
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before+1 && time.Now().Before(deadline) { // +1: the goroutine waiting for stop
		time.Sleep(time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+1 {
		t.Errorf("%d goroutines still running after the tree was read, want at most %d", n, before+1)
	}
	stop()

	_, stop = startPrefetch(context.Background(), sel, []prefetchDir{{src: root, abs: root}})
	stop()
	if n := runtime.NumGoroutine(); n > before+1 {
		t.Errorf("%d goroutines still running after stop, want at most %d", n, before+1)
	}
}
