package store_test

import (
	"errors"
	"testing"

	"vaultnode/appliance/store"
)

// TestIndexCommitInParts: an upload larger than one index transaction is
// indexed in several, and a failure (or crash) between two of them loses
// nothing: the entries indexed so far read back at once (the pack keeps
// its tail), and opening the store again indexes the rest from the pack.
func TestIndexCommitInParts(t *testing.T) {
	defer store.SetMaxTxEntries(store.SetMaxTxEntries(10))
	f := newFixture(t, t.TempDir())
	type item struct {
		plain []byte
		e     store.Entry
	}
	var all []item
	put := func() ([]item, error) {
		var items []item
		var es []store.Entry
		for range 35 {
			p, e := f.chunk(100 + f.r.IntN(900))
			items = append(items, item{p, e})
			es = append(es, e)
		}
		return items, f.s.Put("acme", es)
	}
	check := func(items []item) {
		t.Helper()
		for _, it := range items {
			f.mustGet("acme", it.e, it.plain)
		}
	}

	// In a fresh pack (no pack record yet) and then in the same pack.
	for round := range 2 {
		failed := errors.New("disk trouble between two transactions")
		store.SetIndexTxHook(func(done int) error {
			if done == 2 {
				return failed
			}
			return nil
		})
		items, err := put()
		store.SetIndexTxHook(nil)
		if !errors.Is(err, failed) {
			t.Fatalf("round %d: put: %v, want the hook's error", round, err)
		}
		var ids [][32]byte
		for _, it := range items {
			ids = append(ids, it.e.Header.ID)
		}
		has, err := f.s.Has("acme", ids)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for i, ok := range has {
			if ok {
				n++
				f.mustGet("acme", items[i].e, items[i].plain)
			}
		}
		if n != 20 {
			t.Fatalf("round %d: %d entries indexed before the failure, want 20 (two transactions of 10)", round, n)
		}
		f.reopen() // as after a crash at that instant
		check(items)
		check(all)
		all = append(all, items...)

		items, err = put() // four transactions
		if err != nil {
			t.Fatal(err)
		}
		check(items)
		all = append(all, items...)
		f.reopen()
		check(all)
	}
}
