package backup

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/agentkit/selection"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// walkOnce walks root with prev as the previous listing, recorded by a
// synchronization that began at started, and returns each node and
// whether the walker asked for its content to be read.
func walkOnce(t *testing.T, root string, prev []tree.Node, started time.Time) (map[string]tree.Node, map[string]bool) {
	t.Helper()
	var buf bytes.Buffer
	tw, err := tree.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for i := range prev {
		if err := tw.Write(&prev[i]); err != nil {
			t.Fatal(err)
		}
	}
	pr, err := tree.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	sel, err := selection.New(selection.Options{StatePath: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	order, work := make(chan *item, 100), make(chan *item, 100)
	w := &walker{ctx: context.Background(), sel: sel, cfg: wire.Config{Paths: []string{root}}, prev: pr, prevStarted: started,
		order: order, work: work, stats: &Stats{}, links: map[[2]uint64][]byte{}, log: zap.NewNop(), spill: t.TempDir()}
	if err := w.run(); err != nil {
		t.Fatal(err)
	}
	close(order)
	close(work)
	nodes, read := map[string]tree.Node{}, map[string]bool{}
	for it := range order {
		nodes[string(it.node.Path)] = it.node
	}
	for it := range work {
		read[string(it.node.Path)] = true
		it.file.Close()
	}
	return nodes, read
}

// An object that looks unchanged keeps its recorded content and metadata
// without being read, unless it was recorded in the same timestamp tick as
// the synchronization read it: then it may have changed again unseen, and
// it is read again.
func TestWalkReusesOnlyObjectsNotRacy(t *testing.T) {
	root := t.TempDir()
	f := filepath.Join(root, "f")
	if err := os.WriteFile(f, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(f, "user.now", []byte("new"), 0); err != nil {
		t.Skipf("no user xattrs on %s: %v", root, err)
	}
	dir, err := meta.Lstat(unix.AT_FDCWD, root)
	if err != nil {
		t.Fatal(err)
	}
	dir.Path = []byte(root[1:])
	file, err := meta.Lstat(unix.AT_FDCWD, f)
	if err != nil {
		t.Fatal(err)
	}
	file.Path = []byte(root[1:] + "/f")
	// What the previous synchronization recorded: the same size, times and
	// inode, with other content and other xattrs.
	old := file
	old.Chunks = []tree.ChunkRef{{ID: [32]byte{1}, Len: 5}}
	old.Xattrs = []tree.Xattr{{Name: "user.then", Value: []byte("old")}}
	ctime := time.Unix(file.Ctime.Sec, file.Ctime.Nsec)

	nodes, read := walkOnce(t, root, []tree.Node{dir, old}, ctime.Add(time.Hour))
	got := nodes[string(file.Path)]
	if read[string(file.Path)] || len(got.Chunks) != 1 || got.Chunks[0] != old.Chunks[0] {
		t.Errorf("recorded long before the last synchronization: read %v, chunks %v; want the recorded chunks, unread", read[string(file.Path)], got.Chunks)
	}
	if len(got.Xattrs) != 1 || got.Xattrs[0].Name != "user.then" {
		t.Errorf("recorded long before the last synchronization: xattrs %v, want the recorded ones", got.Xattrs)
	}

	nodes, read = walkOnce(t, root, []tree.Node{dir, old}, ctime.Add(time.Millisecond))
	got = nodes[string(file.Path)]
	if !read[string(file.Path)] || len(got.Chunks) != 0 {
		t.Errorf("changed in the tick the last synchronization began: read %v, chunks %v; want it read again", read[string(file.Path)], got.Chunks)
	}
	if len(got.Xattrs) != 1 || got.Xattrs[0].Name != "user.now" {
		t.Errorf("changed in the tick the last synchronization began: xattrs %v, want the file's own", got.Xattrs)
	}
}
