package backup

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"vaultnode/internal/tree"
)

// A node over a listing limit is made writable: names dropped, or the
// node recorded as unreadable with the reason, or left out for a path.
func TestFitLimits(t *testing.T) {
	long := strings.Repeat("u", tree.MaxOwnerLen+1)
	tests := []struct {
		name   string
		node   tree.Node
		skip   bool
		status tree.Status
	}{
		{"owner names", tree.Node{Path: []byte("f"), Type: tree.TypeFile, User: long, Group: long, UID: 7}, false, tree.StatusOK},
		{"chunks", tree.Node{Path: []byte("f"), Type: tree.TypeFile, Size: tree.MaxChunks + 1, Chunks: make([]tree.ChunkRef, tree.MaxChunks+1)}, false, tree.StatusUnreadable},
		{"xattrs", tree.Node{Path: []byte("d"), Type: tree.TypeDir, Xattrs: make([]tree.Xattr, tree.MaxXattrs+1)}, false, tree.StatusUnreadable},
		{"path", tree.Node{Path: bytes.Repeat([]byte("a"), tree.MaxPathLen+1), Type: tree.TypeDir}, true, tree.StatusOK},
	}
	for _, tt := range tests {
		for i := range tt.node.Chunks {
			tt.node.Chunks[i].Len = 1
		}
		w, _ := tree.NewWriter(io.Discard)
		err := w.Write(&tt.node)
		if !tree.IsLimit(err) {
			t.Fatalf("%s: Write: %v, want a limit error", tt.name, err)
		}
		skip, problem := fitLimits(&tt.node, err)
		if skip != tt.skip || problem == "" || !strings.Contains(problem, "tree.Max") {
			t.Fatalf("%s: skip %v, problem %q", tt.name, skip, problem)
		}
		if skip {
			continue
		}
		if err := w.Write(&tt.node); err != nil {
			t.Fatalf("%s: write after fitLimits: %v", tt.name, err)
		}
		if tt.node.Status != tt.status || tt.node.UID != 0 && tt.node.UID != 7 {
			t.Fatalf("%s: node %+v", tt.name, tt.node.Status)
		}
	}
}
