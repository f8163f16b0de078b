package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sync/semaphore"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/store"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/wire"
)

// TestGetChunksReadAhead: chunks read ahead come out in order, a missing
// one as its status; a client that leaves mid-download gives back every
// byte of the read-ahead budget and leaves no goroutine behind, even with
// chunks larger than the whole budget; a download goes on while others
// hold the whole budget.
func TestGetChunksReadAhead(t *testing.T) {
	v := openTestVault(t)
	v.limits.ReadAheadBytes = 256 << 10 // a company's half: two small chunks, less than one large
	v.readAhead = semaphore.NewWeighted(v.limits.ReadAheadBytes)
	k, err := v.companyKeys("acme")
	if err != nil {
		t.Fatal(err)
	}
	var ids [][32]byte
	want := map[[32]byte][]byte{}
	for i := range 40 {
		plain := bytes.Repeat([]byte{byte(i)}, 30<<10+i*4096) // up to 186 KiB: some over the budget
		h := pack.EntryHeader{Kind: pack.KindData, PlainLen: uint32(len(plain))}
		h.ID = [32]byte(keys.NewHasher(k.set.ChunkID).Sum(plain))
		if err := v.Store.Put("acme", []store.Entry{{Header: h, Data: pack.AppendEntry(nil, k.aead, &h, plain)}}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, h.ID)
		want[h.ID] = plain
	}
	missing := [32]byte{1, 2, 3}
	ids = append(ids[:20], append([][32]byte{missing}, ids[20:]...)...)
	p := &Principal{Kind: Agent, Company: "acme", Caps: []Capability{CapRestore},
		agent: &caller{Computer: catalog.Computer{ID: "pc", Company: "acme"}, keys: k}}

	before := runtime.NumGoroutine()
	for _, stopAt := range []int{-1, 0, 5, 20, 30} {
		t.Run(fmt.Sprintf("stop at %d", stopAt), func(t *testing.T) {
			errGone := errors.New("client gone")
			n := 0
			err := v.GetChunks(context.Background(), p, ids, func(frame []byte) error {
				fr, err := wire.NewFrameReader(bytes.NewReader(frame)).Next()
				if err != nil {
					t.Fatalf("frame %d: %v", n, err)
				}
				if fr.ID != ids[n] {
					t.Fatalf("frame %d is chunk %x, want %x", n, fr.ID[:4], ids[n][:4])
				}
				switch {
				case fr.ID == missing:
					if fr.Kind != wire.StatusMissing {
						t.Errorf("missing chunk answered with kind %d", fr.Kind)
					}
				case fr.Kind != wire.StatusOK || !bytes.Equal(fr.Payload, want[fr.ID]):
					t.Errorf("frame %d: kind %d, %d bytes, want the chunk's %d", n, fr.Kind, len(fr.Payload), len(want[fr.ID]))
				}
				if n == stopAt {
					return errGone
				}
				n++
				return nil
			})
			if stopAt < 0 && (err != nil || n != len(ids)) {
				t.Fatalf("GetChunks: %v after %d of %d frames", err, n, len(ids))
			}
			if stopAt >= 0 && (!errors.Is(err, errGone) || n != stopAt) {
				t.Fatalf("GetChunks: %v after %d frames, want the client's error at %d", err, n, stopAt)
			}
			if !v.readAhead.TryAcquire(v.limits.ReadAheadBytes) {
				t.Fatal("the read-ahead budget was not given back whole")
			}
			v.readAhead.Release(v.limits.ReadAheadBytes)
		})
	}
	// Downloads that stall (TestHostileAgents' "stalled downloads") can
	// hold the whole budget: the others then go on a chunk at a time.
	t.Run("budget held by others", func(t *testing.T) {
		if !v.readAhead.TryAcquire(v.limits.ReadAheadBytes) {
			t.Fatal("the read-ahead budget is not free")
		}
		defer v.readAhead.Release(v.limits.ReadAheadBytes)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		n := 0
		err := v.GetChunks(ctx, p, ids, func(frame []byte) error {
			fr, err := wire.NewFrameReader(bytes.NewReader(frame)).Next()
			if err != nil || fr.ID != ids[n] {
				t.Fatalf("frame %d: %v, chunk %x", n, err, fr.ID[:4])
			}
			n++
			return nil
		})
		if err != nil || n != len(ids) {
			t.Fatalf("GetChunks with the budget held by others: %v after %d of %d frames", err, n, len(ids))
		}
	})
	// One company's downloads take at most half the budget: another's
	// still read ahead.
	t.Run("a company's share", func(t *testing.T) {
		half := v.limits.ReadAheadBytes / 2
		if !v.takeReadAhead("acme", half) {
			t.Fatal("acme could not take half the budget")
		}
		if v.takeReadAhead("acme", 64<<10) {
			t.Fatal("acme took more than half the budget")
		}
		if !v.takeReadAhead("bolt", half) {
			t.Fatal("bolt could not read ahead while acme held its half")
		}
		v.giveReadAhead("acme", half)
		v.giveReadAhead("bolt", half)
		if !v.readAhead.TryAcquire(v.limits.ReadAheadBytes) {
			t.Fatal("the read-ahead budget was not given back whole")
		}
		v.readAhead.Release(v.limits.ReadAheadBytes)
	})
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("%d goroutines left behind by the downloads", n-before)
	}
}
