package backup

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"go.uber.org/zap"

	"vaultnode/internal/chunker"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// TestDumpCutWithPreviousChunks: a database configuration's dump, a real
// command's output, is cut like a plain pass whether or not the previous
// dump's chunks are known (previousDump reads them from the previous
// listing); with them, the unchanged chunks are taken at their previous
// ends and none of them is offered to the vault.
func TestDumpCutWithPreviousChunks(t *testing.T) {
	dir := t.TempDir()
	key := [32]byte{5}
	gear, err := chunker.NewGear(key)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	old := make([]byte, 20<<20)
	for i := range old {
		old[i] = byte(rng.Uint32())
	}
	changed := slices.Concat(old[:7<<20], []byte("a changed row"), old[7<<20+13:], []byte("appended rows"))
	oldRefs, want := chunkRefs(t, gear, key, old), chunkRefs(t, gear, key, changed)

	// The previous listing as the listing cache holds it.
	var lb bytes.Buffer
	lw, err := tree.NewWriter(&lb)
	if err != nil {
		t.Fatal(err)
	}
	if err := lw.Write(&tree.Node{Path: []byte(DumpName("db")), Type: tree.TypeFile, Mode: 0o600, Nlink: 1,
		Size: int64(len(old)), Chunks: oldRefs}); err != nil {
		t.Fatal(err)
	}
	prev, err := tree.NewReader(&lb)
	if err != nil {
		t.Fatal(err)
	}
	known := previousDump(prev, "db")
	if known == nil || !slices.Equal(known.refs, oldRefs) {
		t.Fatal("previousDump did not return the previous dump's chunks")
	}
	if previousDump(nil, "db") != nil {
		t.Fatal("previousDump without a previous listing")
	}

	p := filepath.Join(dir, "dump")
	if err := os.WriteFile(p, changed, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, withKnown := range []bool{false, true} {
		stats := &Stats{}
		up := newUploader(nil, "", stats)
		offered, offersDone := collectOffered(up)
		d := &dumper{cfg: wire.Config{Name: "db", Kind: wire.KindDatabase, Command: []string{"cat", p}},
			gear: gear, hasher: keys.NewHasher(key), up: up, stats: stats, log: zap.NewNop()}
		if withKnown {
			d.known = known
		}
		order := make(chan []*item, 1)
		if err := d.run(context.Background(), order); err != nil {
			t.Fatal(err)
		}
		offersDone()
		n := (<-order)[0].node
		if !slices.Equal(n.Chunks, want) || n.Size != int64(len(changed)) {
			t.Fatalf("known %v: %d chunks of %d bytes, want the %d of a plain pass", withKnown, len(n.Chunks), n.Size, len(want))
		}
		reused := 0
		for _, c := range want {
			isKnown := withKnown && known.has(c.ID)
			if isKnown {
				reused++
			}
			if offered[c.ID] == isKnown {
				t.Errorf("known %v: chunk %x of the previous dump %v, offered to the vault %v", withKnown, c.ID[:8], isKnown, offered[c.ID])
			}
		}
		if stats.ChunksReused != int64(reused) || (withKnown && reused < len(want)-4) {
			t.Errorf("known %v: %d chunks reused (stats %d) of %d", withKnown, reused, stats.ChunksReused, len(want))
		}
	}
}
