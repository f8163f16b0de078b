package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// encodeListing encodes nodes as a listing.
func encodeListing(t *testing.T, nodes []tree.Node) []byte {
	t.Helper()
	var lst bytes.Buffer
	w, err := tree.NewWriter(&lst)
	if err != nil {
		t.Fatal(err)
	}
	for i := range nodes {
		if err := w.Write(&nodes[i]); err != nil {
			t.Fatal(err)
		}
	}
	return lst.Bytes()
}

// stageListing opens a session, stores what the vault lacks of the
// contents and of the listing lst, cut into chunks at the given stream
// offsets (in order, each inside lst), and returns the session and the
// listing's references.
func (a *gcAgent) stageListing(ctx context.Context, t *testing.T, contents [][]byte, lst []byte, cuts []int) (string, []tree.ChunkRef) {
	t.Helper()
	s, err := a.v.OpenSession(ctx, a.p, "home")
	if err != nil {
		t.Fatal(err)
	}
	var frames []wire.Frame
	for _, c := range contents {
		frames = append(frames, wire.Frame{ID: a.hs.Sum(c), Kind: wire.FrameData, PlainLen: uint32(len(c)), Payload: c})
	}
	var refs []tree.ChunkRef
	from := 0
	for _, to := range append(cuts, len(lst)) {
		p := lst[from:to]
		from = to
		id := a.hs.Sum(p)
		frames = append(frames, wire.Frame{ID: id, Kind: wire.FrameListing, PlainLen: uint32(len(p)), Payload: p})
		refs = append(refs, tree.ChunkRef{ID: id, Len: uint32(len(p))})
	}
	if err := a.storeFrames(ctx, s.ID, frames); err != nil {
		t.Fatal(err)
	}
	return s.ID, refs
}

// splitCorpus is 2,000 nodes of one length (files f0000... of 20 bytes
// each) encoded, and the stream offsets where every 40th node ends: chunks
// that begin at node boundaries, so every listing chunk but the first has
// its first node at its first byte.
func splitCorpus(t *testing.T, a *gcAgent) ([][]byte, []byte, []int) {
	t.Helper()
	var contents [][]byte
	var lst bytes.Buffer
	w, err := tree.NewWriter(&lst)
	if err != nil {
		t.Fatal(err)
	}
	var cuts []int
	for i := range 2000 {
		c := fmt.Appendf(nil, "content of f%04d ..", i)
		contents = append(contents, c)
		n := tree.Node{Path: fmt.Appendf(nil, "f%04d", i), Type: tree.TypeFile, Mode: 0o644, Size: int64(len(c)),
			Chunks: []tree.ChunkRef{{ID: a.hs.Sum(c), Len: uint32(len(c))}}}
		if err := w.Write(&n); err != nil {
			t.Fatal(err)
		}
		if i%40 == 39 && i < 1999 {
			cuts = append(cuts, lst.Len())
		}
	}
	return contents, lst.Bytes(), cuts
}

// TestCommitSplit: a commit whose listing shares chunks with the newest
// version's checks its second half on another decoder from where the known
// record says a node begins (commit_split.go), with the totals, examination
// facts and lookups one decoder from the start would have; a seam that is
// no node boundary, a fault after the seam and nodes out of order across it
// are found as one decoder finds them.
func TestCommitSplit(t *testing.T) {
	oldMin := splitMinBytes
	splitMinBytes = 1
	defer func() { splitMinBytes, testHookSplit = oldMin, nil }()
	var joined []bool
	testHookSplit = func(j bool) { joined = append(joined, j) }

	ctx := context.Background()
	v := openTestVault(t)
	a := newGCAgent(t, v, "acme", "c1")

	// A listing cut mid-node (every 700 bytes), with what the examination
	// gathers in both halves: unreadable files, cache directories, images.
	var contents [][]byte
	var nodes []tree.Node
	for d := range 20 {
		dir := fmt.Sprintf("d%02d", d)
		if d%7 == 3 {
			dir += "/cache"
		}
		nodes = append(nodes, tree.Node{Path: []byte(dir), Type: tree.TypeDir, Mode: 0o755})
		for f := range 60 {
			p := fmt.Appendf(nil, "%s/f%03d", dir, f)
			switch {
			case f%17 == 5:
				nodes = append(nodes, tree.Node{Path: p, Type: tree.TypeFile, Status: tree.StatusUnreadable, Err: "permission denied"})
				continue
			case f == 30 && d%4 == 1:
				c := fmt.Appendf(nil, "disk image %s", p)
				contents = append(contents, c)
				nodes = append(nodes, tree.Node{Path: append(p, ".vmdk"...), Type: tree.TypeFile, Size: 32 << 20, Sparse: true,
					Extents: []tree.Extent{{Off: 0, Len: int64(len(c))}}, Chunks: []tree.ChunkRef{{ID: a.hs.Sum(c), Len: uint32(len(c))}}})
				continue
			}
			c := fmt.Appendf(nil, "content of %s", p)
			contents = append(contents, c)
			nodes = append(nodes, tree.Node{Path: p, Type: tree.TypeFile, Mode: 0o644, Size: int64(len(c)),
				Chunks: []tree.ChunkRef{{ID: a.hs.Sum(c), Len: uint32(len(c))}}})
		}
	}
	var cuts []int
	for c := 700; c < len(encodeListing(t, nodes)); c += 700 {
		cuts = append(cuts, c)
	}
	// What one decoder from the start gathers.
	var want factsGatherer
	var wantTotals wire.Totals
	for i := range nodes {
		want.add(&nodes[i])
		countNode(&wantTotals, &nodes[i])
	}
	commitRaw := func(lst []byte, cuts []int) (wire.Committed, error) {
		t.Helper()
		joined = nil
		sid, refs := a.stageListing(ctx, t, contents, lst, cuts)
		return v.Commit(ctx, a.p, sid, wire.Commit{Listing: refs})
	}
	commit := func(nodes []tree.Node, cuts []int) (wire.Committed, error) {
		t.Helper()
		return commitRaw(encodeListing(t, nodes), cuts)
	}
	check := func(what string) {
		t.Helper()
		m, _, err := v.Catalog.Newest("c1", "home")
		if err != nil {
			t.Fatal(err)
		}
		wantTotals.ChunksSent, wantTotals.BytesSent = m.Totals.ChunksSent, m.Totals.BytesSent
		if m.Totals != wantTotals {
			t.Errorf("%s: totals %+v, want %+v", what, m.Totals, wantTotals)
		}
		v.examined.mu.Lock()
		got := v.examined.facts["c1/home"].facts
		v.examined.mu.Unlock()
		if diff := cmp.Diff(want.finish(), got, cmp.AllowUnexported(listingFacts{}, imageFact{})); diff != "" {
			t.Errorf("%s: facts differ from one decoder's (-one +split):\n%s", what, diff)
		}
	}
	if _, err := commit(nodes, cuts); err != nil || len(joined) != 0 {
		t.Fatalf("first version: %v, split %v; want no split (nothing known)", err, joined)
	}
	check("first version")
	// The next version, one file's content changed in the first half: the
	// second half is checked beside the first and joined.
	c := fmt.Appendf(nil, "CONTENT OF %s", nodes[5].Path)
	contents = append(contents, c)
	nodes[5].Chunks[0].ID = a.hs.Sum(c)
	want.f.bad, want.f.images, want.tempBytes, want.tempOrder = nil, nil, nil, nil
	for i := range nodes {
		want.add(&nodes[i])
	}
	if _, err := commit(nodes, cuts); err != nil || !slicesEqual(joined, []bool{true}) {
		t.Fatalf("a shared listing: %v, split %v; want joined", err, joined)
	}
	check("joined halves")

	// The known record moved a byte on: no seam is a node boundary, the
	// first decoder reads on alone, the version is the same.
	v.knownMu.Lock()
	for _, k := range v.known.m {
		for id, s := range k.starts {
			if s >= 0 {
				k.starts[id] = s + 1
			}
		}
	}
	v.knownMu.Unlock()
	nodes[2].Mode = 0o600 // same length: every chunk after the first shared
	if _, err := commit(nodes, cuts); err != nil || !slicesEqual(joined, []bool{false}) {
		t.Fatalf("a seam inside a node: %v, split %v; want read on alone", err, joined)
	}
	check("seam inside a node")

	// A reference the vault lacks after the seam: refused as one decoder
	// refuses it.
	missing := nodes[len(nodes)-3]
	missing.Chunks = []tree.ChunkRef{{ID: [32]byte{9, 9}, Len: uint32(missing.Size)}}
	bad := append(append([]tree.Node{}, nodes[:len(nodes)-3]...), missing)
	bad = append(bad, nodes[len(nodes)-2:]...)
	var ae *apiError
	if _, err := commit(bad, cuts); !errors.As(err, &ae) || ae.code != wire.CodeMissingChunk || !slicesEqual(joined, []bool{false}) {
		t.Fatalf("a chunk missing after the seam: %v, split %v; want the missing chunk named, read on alone", err, joined)
	}

	// Nodes out of order exactly at the seam: chunks beginning at node
	// boundaries, the last node before the middle chunk renamed past the
	// first after it (same length, so every chunk but its own is shared).
	a = newGCAgent(t, v, "acme", "c2")
	var lst []byte
	contents, lst, cuts = splitCorpus(t, a)
	if _, err := commitRaw(lst, cuts); err != nil {
		t.Fatal(err)
	}
	swapped := bytes.Replace(lst, []byte("f0999"), []byte("z0999"), 1)
	_, err := commitRaw(swapped, cuts)
	if !errors.As(err, &ae) || ae.code != wire.CodeBadRequest || !slicesEqual(joined, []bool{false}) {
		t.Fatalf("out of order at the seam: %v, split %v; want refused, read on alone", err, joined)
	}
	// One decoder refuses it alike.
	splitMinBytes = 1 << 40
	_, err1 := commitRaw(swapped, cuts)
	if err1 == nil || err1.Error() != err.Error() {
		t.Fatalf("one decoder: %v; split: %v", err1, err)
	}
}

func slicesEqual(a, b []bool) bool { return fmt.Sprint(a) == fmt.Sprint(b) }
