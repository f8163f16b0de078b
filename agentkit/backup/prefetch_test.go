package backup

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
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
	_, stop := startPrefetch(context.Background(), sel, []prefetchDir{{src: root, abs: root}}, time.Time{})
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before+1 && time.Now().Before(deadline) { // +1: the goroutine waiting for stop
		time.Sleep(time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+1 {
		t.Errorf("%d goroutines still running after the tree was read, want at most %d", n, before+1)
	}
	stop()

	_, stop = startPrefetch(context.Background(), sel, []prefetchDir{{src: root, abs: root}}, time.Time{})
	stop()
	if n := runtime.NumGoroutine(); n > before+1 {
		t.Errorf("%d goroutines still running after stop, want at most %d", n, before+1)
	}
}

// TestPrefetchBlocks: a reader reads ahead the extended attributes of the
// files whose attributes have a block of their own, and the targets of
// symlinks kept in a block, of objects changed since the time given, and
// of no other.
func TestPrefetchBlocks(t *testing.T) {
	root := t.TempDir()
	write := func(name string, size int, attr int) {
		p := filepath.Join(root, name)
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
		if attr > 0 {
			if err := unix.Setxattr(p, "user.note", bytes.Repeat([]byte{'x'}, attr), 0); err != nil {
				t.Skipf("user xattrs: %v", err)
			}
		}
	}
	write("block", 100, 2000) // too large for the inode: a block of its own
	write("block-big", 9000, 2000)
	write("inline", 100, 8) // fits in the inode
	write("plain", 5000, 0)
	write("empty", 0, 0)
	if err := os.Symlink(strings.Repeat("long/", 40), filepath.Join(root, "link-long")); err != nil { // a block of its own
		t.Fatal(err)
	}
	if err := os.Symlink("short", filepath.Join(root, "link-short")); err != nil { // in the inode
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(root, "dir"), "user.note", bytes.Repeat([]byte{'x'}, 2000), 0); err != nil {
		t.Fatal(err)
	}
	sel, err := selection.New(selection.Options{StatePath: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ahead := func(since time.Time) []string {
		var got []string
		p := &prefetcher{ctx: context.Background(), sel: sel, reading: map[string]bool{}, changedSince: since,
			blockAhead: func(_ int, path, name string, link bool) {
				if filepath.Base(path) != name || link != strings.HasPrefix(name, "link") {
					t.Errorf("read ahead %q (%q, link %v)", path, name, link)
				}
				got = append(got, name)
			}}
		if ra, _ := p.read(prefetchDir{src: root, abs: root}); ra == nil {
			t.Fatal("the directory was not read")
		}
		slices.Sort(got)
		return got
	}
	if got, want := ahead(time.Time{}), []string{"block", "block-big", "link-long"}; !slices.Equal(got, want) {
		t.Errorf("attributes read ahead of an initial backup: %q, want %q", got, want)
	}
	if got := ahead(time.Now().Add(time.Minute)); len(got) != 0 {
		t.Errorf("attributes read ahead of files unchanged since the last synchronization: %q", got)
	}
}
