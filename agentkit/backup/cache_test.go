package backup

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"vaultnode/internal/tree"
)

// TestListingCacheFormats reads a listing cache written as S2 (as now) and
// one written as zstd (by agents before), node for node.
func TestListingCacheFormats(t *testing.T) {
	var nodes []tree.Node
	for i := range 500 {
		nodes = append(nodes, tree.Node{Path: fmt.Appendf(nil, "d/f%04d", i), Type: tree.TypeFile, Mode: 0o644,
			Size: int64(i), Ino: uint64(1000 + i), Chunks: []tree.ChunkRef{{ID: [32]byte{byte(i)}, Len: uint32(i)}}})
	}
	write := func(compress func(io.Writer) io.WriteCloser) []byte {
		var buf bytes.Buffer
		cw := compress(&buf)
		tw, err := tree.NewWriter(cw)
		if err != nil {
			t.Fatal(err)
		}
		for i := range nodes {
			if err := tw.Write(&nodes[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := cw.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	caches := map[string][]byte{
		"s2": write(func(w io.Writer) io.WriteCloser { return s2.NewWriter(w, s2.WriterConcurrency(1)) }),
		"zstd": write(func(w io.Writer) io.WriteCloser {
			zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
			if err != nil {
				t.Fatal(err)
			}
			return zw
		}),
	}
	for name, b := range caches {
		tr, release, err := openListingCache(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for i := range nodes {
			n, err := tr.Next()
			if err != nil {
				t.Fatalf("%s: node %d: %v", name, i, err)
			}
			if !bytes.Equal(n.Path, nodes[i].Path) || n.Size != nodes[i].Size || n.Ino != nodes[i].Ino || len(n.Chunks) != 1 || n.Chunks[0] != nodes[i].Chunks[0] {
				t.Fatalf("%s: node %d is %+v, want %+v", name, i, n, nodes[i])
			}
		}
		if _, err := tr.Next(); !errors.Is(err, io.EOF) {
			t.Fatalf("%s: after the last node: %v", name, err)
		}
		release()
	}
	// Neither format: an error, not a listing of nothing.
	tr, release, err := openListingCache(bytes.NewReader([]byte("not a listing cache at all")))
	if err == nil {
		defer release()
		if _, err := tr.Next(); err == nil || errors.Is(err, io.EOF) {
			t.Fatalf("garbage read as a listing: %v", err)
		}
	}
}
