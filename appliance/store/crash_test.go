package store_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"vaultnode/appliance/store"
	"vaultnode/appliance/store/storetest"
	"vaultnode/internal/pack"
)

// TestCrashAnyInstant cuts power to the packs (storetest.Mem keeps a
// random part of what was not synced) after random work: acknowledged
// puts, appends never committed, writes the kernel may have flushed. After
// each crash the store opens, every acknowledged chunk reads back, and
// every pack holds only whole entries; the store goes on working.
func TestCrashAnyInstant(t *testing.T) {
	for round := 0; round < 60; round++ {
		base := newFixture(t, t.TempDir()) // keys; its disk store is not used
		base.s.Close()
		base.s = nil
		base.r = rand.New(rand.NewPCG(uint64(round), 2))
		mem := storetest.NewMem(uint64(round))
		open := func() *store.Store {
			s, err := store.Open(base.dir, zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel)), store.Options{Packs: mem, Keys: base.keys})
			if err != nil {
				t.Fatalf("round %d: open after a crash: %v", round, err)
			}
			return s
		}
		s := open()
		var acked []stored
		for op := 0; op < 3+round%7; op++ {
			co := []string{"acme", "globex"}[base.r.IntN(2)]
			switch base.r.IntN(4) {
			case 0, 1: // acknowledged
				var batch []store.Entry
				for i := 0; i < 1+base.r.IntN(3); i++ {
					p, e := base.chunk(200 + base.r.IntN(4000))
					batch = append(batch, e)
					acked = append(acked, stored{co, p, e})
				}
				if err := s.Put(co, batch); err != nil {
					t.Fatal(err)
				}
			case 2: // written, never committed (the crash comes first)
				a, _ := s.Append(co)
				for i := 0; i < 1+base.r.IntN(3); i++ {
					_, e := base.chunk(200 + base.r.IntN(4000))
					if err := a.Add(e.Header, e.Data); err != nil {
						t.Fatal(err)
					}
				}
			case 3:
				mem.Flush()
			}
		}
		mem.Crash()
		s.Close()
		s = open()
		for _, a := range acked {
			got, _, err := s.Get(a.company, base.aead, a.e.Header.ID, nil)
			if err != nil || !bytes.Equal(got, a.plain) {
				t.Fatalf("round %d: acknowledged chunk %x of %s after a crash: %v", round, a.e.Header.ID[:8], a.company, err)
			}
		}
		ps, err := s.Packs()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			r, err := mem.Open(t.Context(), p.Number)
			if err != nil {
				t.Fatal(err)
			}
			size, _ := r.Size()
			if size != p.Committed {
				t.Fatalf("round %d: pack %d is %d bytes, committed %d", round, p.Number, size, p.Committed)
			}
			sc, err := pack.NewScanner(io.NewSectionReader(r, 0, size))
			if err != nil {
				t.Fatal(err)
			}
			for {
				if _, err := sc.Next(); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					t.Fatalf("round %d: pack %d after recovery: %v", round, p.Number, err)
				}
			}
		}
		// It goes on.
		p, e := base.chunk(1000)
		if err := s.Put("acme", []store.Entry{e}); err != nil {
			t.Fatal(err)
		}
		if got, _, err := s.Get("acme", base.aead, e.Header.ID, nil); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("round %d: a put after recovery: %v", round, err)
		}
		s.Close()
	}
}
