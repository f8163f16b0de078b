package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// TestCommitKnownListingChunks: a commit whose listing shares most chunks
// with the newest version's looks up only the references of nodes outside
// them (known.go), and its totals are the listing's; a quarantined chunk,
// a vault that did not see the previous commit, or a listing whose shared
// chunks are framed differently send every reference through the lookups.
func TestCommitKnownListingChunks(t *testing.T) {
	v := openTestVault(t)
	ctx := context.Background()
	a := newGCAgent(t, v, "acme", "c1")
	const nfiles, cut = 300, 700
	files := make([][]byte, nfiles)
	for i := range files {
		files[i] = fmt.Appendf(nil, "file %04d, first version", i)
	}
	var looked int
	testHookLookups = func(n int) { looked += n }
	defer func() { testHookLookups = nil }()
	// few: the nodes crossing a cut (one a cut at most) and those of the
	// changed chunk (a node is over 50 bytes).
	few := 0
	var beforeCommit func()
	commit := func(files [][]byte) (uint64, int, error) {
		t.Helper()
		sid, refs, err := a.stageCut(ctx, files, cut)
		if err != nil {
			t.Fatal(err)
		}
		if beforeCommit != nil {
			beforeCommit()
		}
		looked = 0
		if len(refs) < 10 {
			t.Fatalf("the listing has %d chunks, want many", len(refs))
		}
		few = len(refs) + cut/50
		c, err := v.Commit(ctx, a.p, sid, wire.Commit{Listing: refs})
		return c.Seq, looked, err
	}
	if _, n, err := commit(files); err != nil || n != nfiles {
		t.Fatalf("first commit: %d lookups, %v; want %d", n, err, nfiles)
	}
	// One file changed, same length: the listing's other chunks are the
	// first version's, framed alike.
	files[150] = fmt.Appendf(nil, "file %04d, other version", 150)
	seq, n, err := commit(files)
	if err != nil || n == 0 || n > few || n >= nfiles/2 {
		t.Fatalf("one file changed: %d lookups, %v; want at most %d (the changed chunk's nodes, those crossing a cut)", n, err, few)
	}
	m, _, err := v.Catalog.Newest("c1", "home")
	if err != nil || m.Seq != seq || m.Totals.Files != nfiles {
		t.Fatalf("totals %+v (%v), want %d files in version %d", m.Totals, err, nfiles, seq)
	}
	// Another file: trusted again from the version just committed.
	files[20] = fmt.Appendf(nil, "file %04d, other version", 20)
	if _, n, err := commit(files); err != nil || n == 0 || n > few || n >= nfiles/2 {
		t.Fatalf("a second change: %d lookups, %v; want at most %d", n, err, few)
	}
	// A first file of 300 bytes (its size and length encoded a byte longer
	// each) shifts every later node against the cuts: no chunk is shared,
	// every reference is looked up.
	files[0] = bytes.Repeat([]byte("x"), 300)
	if _, n, err := commit(files); err != nil || n != nfiles {
		t.Fatalf("every chunk new: %d lookups, %v; want %d", n, err, nfiles)
	}
	// A chunk quarantined after the agent asked what the vault lacks: the
	// full check names it.
	files[299] = fmt.Appendf(nil, "file %04d, third version", 299)
	beforeCommit = func() {
		if _, err := v.Store.Quarantine("acme", a.hs.Sum(files[100]), "test"); err != nil {
			t.Fatal(err)
		}
	}
	var ae *apiError
	if _, _, err := commit(files); !errors.As(err, &ae) || ae.code != wire.CodeMissingChunk {
		t.Fatalf("a quarantined chunk in a shared listing chunk: %v; want the missing chunk named", err)
	}
}

// TestKnownListingFraming: a chunk is trusted only when the first node
// starting in it begins where it began in the known version's listing, and
// only for nodes wholly inside it; a chunk recurring framed differently is
// never trusted.
func TestKnownListingFraming(t *testing.T) {
	x, y, z := [32]byte{1}, [32]byte{2}, [32]byte{3}
	old := newLearned([]tree.ChunkRef{{ID: x, Len: 100}, {ID: y, Len: 100}, {ID: x, Len: 100}})
	old.node(10, 60)   // x: first node at 10
	old.node(60, 150)  // crosses into y
	old.node(150, 230) // y: first node at 50; crosses into the second x
	old.node(230, 300) // second x: first node at 30, not 10
	k := old.record(1)
	if k.starts[x] != ambiguous || k.starts[y] != 50 {
		t.Fatalf("record %+v: want x ambiguous, y at 50", k.starts)
	}
	k.starts[x] = 10 // as if x were not repeated
	k.starts[z] = noStart
	for _, tt := range []struct {
		name       string
		start, end int64
		want       bool
	}{
		{"same chunk, same framing, inside", 10, 60, true},
		{"crossing into the next chunk", 60, 150, false},
		{"next chunk framed at 51, not 50", 151, 190, false},
	} {
		l := newLearned([]tree.ChunkRef{{ID: x, Len: 100}, {ID: y, Len: 100}})
		if tt.start >= 100 {
			l.node(10, 60)
			l.node(60, tt.start)
		}
		if got := l.trusted(l.node(tt.start, tt.end), k); got != tt.want {
			t.Errorf("%s: trusted %v, want %v", tt.name, got, tt.want)
		}
	}
	l := newLearned([]tree.ChunkRef{{ID: x, Len: 100}})
	if l.trusted(l.node(12, 40), k) {
		t.Errorf("x framed at 12 (known at 10) was trusted")
	}
	l = newLearned([]tree.ChunkRef{{ID: z, Len: 100}})
	if l.trusted(l.node(0, 40), k) {
		t.Errorf("a chunk in which no node began before was trusted")
	}
	if newLearned([]tree.ChunkRef{{ID: x, Len: 100}}).trusted(0, nil) {
		t.Errorf("trusted without a record")
	}
}
