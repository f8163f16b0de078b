package vault

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/pair"
	"vaultnode/internal/wire"
)

// openTestPair opens two vaults of one pair in-process, each with its own
// raft instance on loopback: a forms the pair and leads, b shares its CA
// and master key (as a join sends them) and follows as a non-voter, so a
// commits alone and b applies the whole log.
func openTestPair(t *testing.T) (a, b *Vault) {
	t.Helper()
	open := func(id, dir string, form bool) *Vault {
		v, err := Open(Options{Dir: dir, Listen: "127.0.0.1:0", Log: zaptest.NewLogger(t).Named(id),
			Pair: &PairOptions{ID: id, Listen: "127.0.0.1:0", Agent: "agent-" + id, Form: form, HeartbeatTimeout: time.Second}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { v.Close() })
		return v
	}
	da, db := t.TempDir(), t.TempDir()
	a = open("a", da, true)
	os.MkdirAll(filepath.Join(db, "tls"), 0o700)
	for _, f := range []string{"master.key", "tls/ca.pem", "tls/ca.key"} {
		raw, err := os.ReadFile(filepath.Join(da, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(db, f), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b = open("b", db, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.pair.node.AddMember(ctx, pair.Member{ID: "b", Raft: b.pair.node.Addr(), Agent: "agent-b"}); err != nil {
		t.Fatal(err)
	}
	if err := a.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	caughtUp(t, a, b)
	return a, b
}

// caughtUp waits until b applied every entry a applied.
func caughtUp(t *testing.T, a, b *Vault) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := b.pair.node.WaitApplied(ctx, a.pair.node.Applied()); err != nil {
		t.Fatal(err)
	}
}

// submitSweepPlan puts a sweep command of any origin through a's log, as a
// buggy or hostile leader would.
func submitSweepPlan(t *testing.T, a *Vault, plan sweepPlan, ids [][32]byte) {
	t.Helper()
	for _, id := range ids {
		plan.IDs = append(plan.IDs, id[:]...)
	}
	cmd, err := catalog.NewCommand(KindSweep, plan)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.pair.node.Submit(cmd); err != nil {
		t.Fatal(err)
	}
}

func chunkIDs(t *testing.T, v *Vault) [][32]byte {
	t.Helper()
	ids, err := v.Store.ChunkIDs(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func testFiles(tag string, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "%s file %d %0500d", tag, i, i)
	}
	return out
}

// TestFollowerSweepCheck: the follower checks the leader's sweeps against
// its own catalog without marking the company again for each batch: one
// mark per collection, then only what was committed since. It still
// deletes nothing a committed version references, even when the sweep
// names it (a buggy or hostile leader) and the version was committed
// between two batches of the same collection.
func TestFollowerSweepCheck(t *testing.T) {
	old := sweepBatch
	sweepBatch = 8
	t.Cleanup(func() { sweepBatch = old })
	a, b := openTestPair(t)
	ctx := context.Background()
	ag := newGCAgent(t, a, "acme", "c1")
	for i := range 4 {
		if _, err := ag.backup(ctx, testFiles(fmt.Sprint("v", i), 30)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Catalog.Prune(catalog.PruneCmd{Versions: []catalog.VersionKey{{Computer: "c1", Config: "home", Seq: 1}, {Computer: "c1", Config: "home", Seq: 2}}}); err != nil {
		t.Fatal(err)
	}
	caughtUp(t, a, b)
	walked := b.listingsMarked.Load()
	res, err := a.Collect(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	caughtUp(t, a, b)
	walked = b.listingsMarked.Load() - walked
	t.Logf("the leader swept %d chunks in %d-id batches; the follower walked %d listings to check them", res.Swept, sweepBatch, walked)
	if res.Swept < 60 {
		t.Fatalf("the collection swept %d chunks; the two pruned versions held 60 files", res.Swept)
	}
	// Two versions live, one listing each: marked once for the whole
	// collection, not once per batch.
	if walked != 2 {
		t.Fatalf("the follower walked %d listings to check %d batches of a collection; want 2 (each live version once)", walked, (res.Swept+7)/8)
	}
	if ia, ib := chunkIDs(t, a), chunkIDs(t, b); !slices.Equal(ia, ib) {
		t.Fatalf("after the collection the leader holds %d chunks, the follower %d", len(ia), len(ib))
	}

	// A hostile collection: its first batch names nothing live; then a
	// version is committed whose chunks every member already held (the
	// session uploaded them before the first batch); its second batch
	// names them and the older live ones. Every member keeps them all.
	live := chunkIDs(t, b)
	sid, listing, err := ag.stage(ctx, testFiles("late", 10))
	if err != nil {
		t.Fatal(err)
	}
	caughtUp(t, a, b)
	all := chunkIDs(t, b)
	submitSweepPlan(t, a, sweepPlan{Collection: "hostile", Origin: "x", Company: "acme"}, [][32]byte{{1}})
	if _, err := a.Commit(ctx, ag.p, sid, wire.Commit{Listing: listing}); err != nil {
		t.Fatal(err)
	}
	caughtUp(t, a, b)
	named := all
	all = chunkIDs(t, b) // and the late version's manifest
	submitSweepPlan(t, a, sweepPlan{Collection: "hostile", Origin: "x", Company: "acme", Last: true}, named)
	caughtUp(t, a, b)
	for _, v := range []*Vault{a, b} {
		if got := chunkIDs(t, v); !slices.Equal(got, all) {
			t.Fatalf("%s: a sweep naming every referenced chunk left %d of %d (%d before the late version)", v.pair.node.ID(), len(got), len(all), len(live))
		}
	}
	if b.pair.gc.check != nil {
		t.Fatal("the follower kept its check after the collection's last batch")
	}
	want := map[string][][]byte{"c1@3": testFiles("v2", 30), "c1@4": testFiles("v3", 30), "c1@5": testFiles("late", 10)}
	restoreAll(t, a, want)
	restoreAll(t, b, want)
}
