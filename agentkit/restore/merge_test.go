package restore

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"

	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// memSource serves chunks from memory, as the vault would.
type memSource map[[32]byte][]byte

func (m memSource) GetChunks(_ context.Context, ids [][32]byte, fn func(f *wire.Frame) error) error {
	for _, id := range ids {
		b, ok := m[id]
		f := &wire.Frame{ID: id, Kind: wire.StatusOK, PlainLen: uint32(len(b)), Payload: b}
		if !ok {
			f = &wire.Frame{ID: id, Kind: wire.StatusMissing}
		}
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

var testKey = [32]byte{7}

// listing stores the nodes as one listing chunk and returns its reference.
func (m memSource) listing(t testing.TB, nodes ...tree.Node) []tree.ChunkRef {
	t.Helper()
	var buf bytes.Buffer
	w, err := tree.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for i := range nodes {
		if err := w.Write(&nodes[i]); err != nil {
			t.Fatal(err)
		}
	}
	id := keys.NewHasher(testKey).Sum(buf.Bytes())
	m[id] = buf.Bytes()
	return []tree.ChunkRef{{ID: id, Len: uint32(buf.Len())}}
}

func dir(p string) tree.Node  { return tree.Node{Path: []byte(p), Type: tree.TypeDir, Mode: 0o755} }
func file(p string) tree.Node { return tree.Node{Path: []byte(p), Type: tree.TypeFile, Mode: 0o644} }
func gone(p string) tree.Node { return tree.Node{Path: []byte(p), Type: tree.TypeDeleted} }

func paths(t *testing.T, n Nodes) []string {
	t.Helper()
	var out []string
	for {
		x, err := n.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		s := string(x.Path)
		if x.Type == tree.TypeDeleted {
			s += " (deleted)"
		}
		if x.Mode == 0o600 {
			s += " (changed)"
		}
		out = append(out, s)
	}
}

func TestOpenVersionMergesJournal(t *testing.T) {
	src := memSource{}
	m := wire.Manifest{Config: "c", Seq: 1, Listing: src.listing(t,
		dir("r"), file("r/a"), dir("r/d"), file("r/d/x"), file("r/d/y"), file("r/z"))}
	changedA := file("r/a")
	changedA.Mode = 0o600
	js := []wire.Journal{
		{N: 1, Listing: src.listing(t, changedA, file("r/b"))},       // change a, create b
		{N: 2, Listing: src.listing(t, gone("r/d"), gone("r/z"))},    // delete a directory and a file
		{N: 3, Listing: src.listing(t, dir("r/d"), file("r/d/new"))}, // recreate the directory
		{N: 4, Listing: src.listing(t, gone("r/b"), file("r/c"))},    // delete what the journal created
	}
	n, stop, err := OpenVersion(context.Background(), src, testKey, m, js)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	want := []string{"r", "r/a (changed)", "r/b (deleted)", "r/c", "r/d", "r/d/new", "r/z (deleted)"}
	if diff := cmp.Diff(want, paths(t, n)); diff != "" {
		t.Fatalf("merged view (-want +got):\n%s", diff)
	}

	// Up to record 2 only: the directory and everything in it are gone.
	n, stop2, err := OpenVersion(context.Background(), src, testKey, m, js[:2])
	if err != nil {
		t.Fatal(err)
	}
	defer stop2()
	want = []string{"r", "r/a (changed)", "r/b", "r/d (deleted)", "r/z (deleted)"}
	if diff := cmp.Diff(want, paths(t, n)); diff != "" {
		t.Fatalf("merged view up to record 2 (-want +got):\n%s", diff)
	}
}

func TestOpenListingRefusesDamage(t *testing.T) {
	src := memSource{}
	refs := src.listing(t, dir("r"), file("r/a"))
	src[refs[0].ID] = append([]byte("x"), src[refs[0].ID][1:]...) // one byte changed on the vault
	n, stop, err := OpenVersion(context.Background(), src, testKey, wire.Manifest{Listing: refs}, nil)
	if err == nil {
		defer stop()
		_, err = n.Next()
	}
	if err == nil {
		t.Fatal("a damaged listing chunk was read as good")
	}
}
