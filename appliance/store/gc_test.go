package store_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"vaultnode/appliance/store"
)

// TestRepackCrashBeforeRemoval: a collection rewrites a pack and is cut
// short after the old pack is doomed but before its file goes. At the next
// open the live chunks read from their copies, the swept chunks stay gone
// (the doomed pack is not indexed again), and the next collection removes
// the file.
func TestRepackCrashBeforeRemoval(t *testing.T) {
	f := newFixture(t, t.TempDir())
	ctx := context.Background()
	var dead, live []store.Entry
	var livePlain [][]byte
	for i := 0; i < 20; i++ {
		p, e := f.chunk(4000 + i)
		if err := f.s.Put("acme", []store.Entry{e}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			dead = append(dead, e)
		} else {
			live, livePlain = append(live, e), append(livePlain, p)
		}
	}
	f.reopen() // pack 0 is no longer open for appending
	ids := make([][32]byte, len(dead))
	for i, e := range dead {
		ids[i] = e.Header.ID
	}
	if n, _, err := f.s.DeleteChunks("acme", ids); err != nil || n != len(dead) {
		t.Fatalf("DeleteChunks: %d, %v", n, err)
	}
	old := f.s.PackPath(0)
	crash := errors.New("crash")
	store.SetDoomedHook(func(uint32) error { return crash })
	defer store.SetDoomedHook(nil)
	if _, err := f.s.Repack(ctx, 0); !errors.Is(err, crash) {
		t.Fatalf("Repack with a crash before the removal: %v", err)
	}
	store.SetDoomedHook(nil)
	f.reopen()
	if _, err := os.Stat(old); err != nil {
		t.Fatalf("the doomed pack's file should still be there: %v", err)
	}
	has, err := f.s.Has("acme", ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range has {
		if h {
			t.Fatalf("swept chunk %x came back from the doomed pack at open", ids[i][:8])
		}
	}
	for i, e := range live {
		f.mustGet("acme", e, livePlain[i])
		if loc, err := f.s.Lookup("acme", e.Header.ID); err != nil || loc.Pack == 0 {
			t.Fatalf("live chunk %x at %+v (%v), want its copy", e.Header.ID[:8], loc, err)
		}
	}
	if n, err := f.s.FinishRemovals(ctx); err != nil || n != 1 {
		t.Fatalf("FinishRemovals: %d, %v", n, err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Fatalf("the doomed pack's file is still there after FinishRemovals: %v", err)
	}
	f.reopen()
	for i, e := range live {
		f.mustGet("acme", e, livePlain[i])
	}
	counted, err := f.s.CountUsage()
	if err != nil || counted["acme"] != f.s.Usage("acme") {
		t.Fatalf("usage %d, the index's packs hold %d (%v)", f.s.Usage("acme"), counted["acme"], err)
	}
	use, err := f.s.PackUsage(ctx)
	if err != nil || len(use) != 1 || use[0].Dead() != 0 {
		t.Fatalf("packs after the collection: %+v, %v", use, err)
	}
}

// TestGetAtStaleLocation: a download looks a chunk up, then reads it with
// GetAt after garbage collection moved it and removed its pack; GetAt looks
// it up again. A location naming another entry is damage, never its data.
func TestGetAtStaleLocation(t *testing.T) {
	f := newFixture(t, t.TempDir())
	ctx := context.Background()
	var dead [][32]byte
	var live []stored
	for i := 0; i < 10; i++ {
		p, e := f.chunk(3000 + i)
		if err := f.s.Put("acme", []store.Entry{e}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			dead = append(dead, e.Header.ID)
		} else {
			live = append(live, stored{"acme", p, e})
		}
	}
	f.reopen() // pack 0 is no longer open for appending
	stale := make([]store.Location, len(live))
	for i, st := range live {
		loc, err := f.s.Lookup("acme", st.e.Header.ID)
		if err != nil {
			t.Fatal(err)
		}
		stale[i] = loc
		got, _, err := f.s.GetAt("acme", f.aead, st.e.Header.ID, loc, nil)
		if err != nil || !bytes.Equal(got, st.plain) {
			t.Fatalf("GetAt at a fresh location: %v", err)
		}
	}
	// Another entry's location is damage.
	if _, _, err := f.s.GetAt("acme", f.aead, live[0].e.Header.ID, stale[1], nil); !errors.Is(err, store.ErrDamaged) {
		t.Fatalf("GetAt at another entry's location: %v, want ErrDamaged", err)
	}
	if n, _, err := f.s.DeleteChunks("acme", dead); err != nil || n != len(dead) {
		t.Fatalf("DeleteChunks: %d, %v", n, err)
	}
	if _, err := f.s.Repack(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f.s.PackPath(0)); !os.IsNotExist(err) {
		t.Fatalf("pack 0 is still there after the repack: %v", err)
	}
	for i, st := range live {
		got, loc, err := f.s.GetAt("acme", f.aead, st.e.Header.ID, stale[i], nil)
		if err != nil || !bytes.Equal(got, st.plain) {
			t.Fatalf("GetAt at a location gone stale: %v", err)
		}
		if loc.Pack == stale[i].Pack {
			t.Fatalf("GetAt answered from pack %d, which the repack removed", loc.Pack)
		}
	}
}
