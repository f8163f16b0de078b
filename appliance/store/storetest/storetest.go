// Package storetest is the conformance suite of store.Packs: every place
// packs live (the local disk now; a tape tier's staging area or a replica
// later) runs Run, and then RunStore, which drives the whole chunk store
// (index, recovery, rebuild) over it.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"go.uber.org/zap/zaptest"

	"vaultnode/appliance/store"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
)

// Run checks every contract of store.Packs on fresh, empty instances made
// by open.
func Run(t *testing.T, open func(t *testing.T) store.Packs) {
	ctx := context.Background()
	t.Run("CreateWritesTheHeader", func(t *testing.T) {
		p := open(t)
		w := mustCreate(t, p, 7, "acme")
		defer w.Close()
		r := mustOpen(t, p, 7)
		defer r.Close()
		if size := mustSize(t, r); size != pack.FileHeaderSize {
			t.Fatalf("a new pack is %d bytes, want its %d-byte header", size, pack.FileHeaderSize)
		}
		hb := make([]byte, pack.FileHeaderSize)
		if _, err := r.ReadAt(hb, 0); err != nil {
			t.Fatal(err)
		}
		h, err := pack.ParseFileHeader(hb)
		if err != nil || h.Company != "acme" || h.Number != 7 {
			t.Fatalf("header of a new pack: %+v, %v; want acme, 7", h, err)
		}
	})
	t.Run("CreateExisting", func(t *testing.T) {
		p := open(t)
		mustCreate(t, p, 1, "acme").Close()
		if w, err := p.Create(ctx, 1, "globex"); !errors.Is(err, store.ErrPackExists) {
			if w != nil {
				w.Close()
			}
			t.Fatalf("Create of an existing pack: %v, want ErrPackExists", err)
		}
		r := mustOpen(t, p, 1)
		defer r.Close()
		hb := make([]byte, pack.FileHeaderSize)
		r.ReadAt(hb, 0)
		if h, _ := pack.ParseFileHeader(hb); h.Company != "acme" {
			t.Fatalf("a refused Create changed the pack: header names %q", h.Company)
		}
	})
	t.Run("InvalidCompany", func(t *testing.T) {
		p := open(t)
		for _, co := range []string{"", "a-company-name-longer-than-16"} {
			if w, err := p.Create(ctx, 3, co); err == nil {
				w.Close()
				t.Fatalf("Create for company %q succeeded", co)
			}
		}
		if n := count(t, p); n != 0 {
			t.Fatalf("refused Creates left %d packs", n)
		}
	})
	t.Run("WriteSyncRead", func(t *testing.T) {
		p := open(t)
		w := mustCreate(t, p, 2, "acme")
		defer w.Close()
		r := mustOpen(t, p, 2) // opened before the write: sees it after Sync
		defer r.Close()
		data := random(1, 100_000)
		if _, err := w.WriteAt(data, pack.FileHeaderSize); err != nil {
			t.Fatal(err)
		}
		if err := w.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		for _, rd := range []store.PackReader{r, w, mustOpen(t, p, 2)} {
			got := make([]byte, len(data))
			if _, err := rd.ReadAt(got, pack.FileHeaderSize); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes: %v (equal %v)", len(got), err, bytes.Equal(got, data))
			}
			if size := mustSize(t, rd); size != pack.FileHeaderSize+int64(len(data)) {
				t.Fatalf("size %d, want %d", size, pack.FileHeaderSize+len(data))
			}
			one := make([]byte, 1)
			if _, err := rd.ReadAt(one, pack.FileHeaderSize+int64(len(data))); err != io.EOF {
				t.Fatalf("read past the end: %v, want io.EOF", err)
			}
		}
		// Reopened for writing: appends go on.
		w2, err := p.OpenWriter(ctx, 2)
		if err != nil {
			t.Fatal(err)
		}
		defer w2.Close()
		if _, err := w2.WriteAt([]byte("more"), pack.FileHeaderSize+int64(len(data))); err != nil {
			t.Fatal(err)
		}
		if err := w2.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if size := mustSize(t, r); size != pack.FileHeaderSize+int64(len(data))+4 {
			t.Fatalf("size after an append through OpenWriter: %d", size)
		}
	})
	t.Run("Truncate", func(t *testing.T) {
		p := open(t)
		w := mustCreate(t, p, 4, "acme")
		defer w.Close()
		w.WriteAt(random(2, 5000), pack.FileHeaderSize)
		if err := w.Truncate(ctx, pack.FileHeaderSize+100); err != nil {
			t.Fatal(err)
		}
		if err := w.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if size := mustSize(t, mustOpen(t, p, 4)); size != pack.FileHeaderSize+100 {
			t.Fatalf("size after Truncate: %d, want %d", size, pack.FileHeaderSize+100)
		}
	})
	t.Run("Missing", func(t *testing.T) {
		p := open(t)
		if _, err := p.Open(ctx, 9); !errors.Is(err, store.ErrPackNotFound) {
			t.Fatalf("Open of a missing pack: %v, want ErrPackNotFound", err)
		}
		if _, err := p.OpenWriter(ctx, 9); !errors.Is(err, store.ErrPackNotFound) {
			t.Fatalf("OpenWriter of a missing pack: %v, want ErrPackNotFound", err)
		}
		if err := p.Remove(ctx, 9); !errors.Is(err, store.ErrPackNotFound) {
			t.Fatalf("Remove of a missing pack: %v, want ErrPackNotFound", err)
		}
	})
	t.Run("ListAndRemove", func(t *testing.T) {
		p := open(t)
		want := map[uint32]int64{}
		for i, n := range []uint32{0, 1, 255, 256, 70000, 1<<32 - 1} {
			w := mustCreate(t, p, n, "acme")
			w.WriteAt(random(uint64(i), i*1000), pack.FileHeaderSize)
			w.Sync(ctx)
			w.Close()
			want[n] = pack.FileHeaderSize + int64(i*1000)
		}
		if got := list(t, p); !equalMaps(got, want) {
			t.Fatalf("List = %v, want %v", got, want)
		}
		if err := p.Remove(ctx, 256); err != nil {
			t.Fatal(err)
		}
		delete(want, 256)
		if got := list(t, p); !equalMaps(got, want) {
			t.Fatalf("List after Remove = %v, want %v", got, want)
		}
		if _, err := p.Open(ctx, 256); !errors.Is(err, store.ErrPackNotFound) {
			t.Fatalf("Open of a removed pack: %v, want ErrPackNotFound", err)
		}
		stop := errors.New("stop")
		if err := p.List(ctx, func(uint32, int64) error { return stop }); !errors.Is(err, stop) {
			t.Fatalf("List does not return its callback's error: %v", err)
		}
	})
	t.Run("CancelledContext", func(t *testing.T) {
		p := open(t)
		w := mustCreate(t, p, 5, "acme")
		defer w.Close()
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := p.Create(cctx, 6, "acme"); !errors.Is(err, context.Canceled) {
			t.Fatalf("Create: %v", err)
		}
		if _, err := p.Open(cctx, 5); !errors.Is(err, context.Canceled) {
			t.Fatalf("Open: %v", err)
		}
		if _, err := p.OpenWriter(cctx, 5); !errors.Is(err, context.Canceled) {
			t.Fatalf("OpenWriter: %v", err)
		}
		if err := p.List(cctx, func(uint32, int64) error { return nil }); !errors.Is(err, context.Canceled) {
			t.Fatalf("List: %v", err)
		}
		if err := p.Remove(cctx, 5); !errors.Is(err, context.Canceled) {
			t.Fatalf("Remove: %v", err)
		}
		if err := w.Sync(cctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("Sync: %v", err)
		}
		if err := w.Truncate(cctx, pack.FileHeaderSize); !errors.Is(err, context.Canceled) {
			t.Fatalf("Truncate: %v", err)
		}
		if got := list(t, p); len(got) != 1 {
			t.Fatalf("calls with a cancelled context changed the packs: %v", got)
		}
	})
	t.Run("Concurrent", func(t *testing.T) {
		p := open(t)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() { // owner: this subtest, waited for below
				defer wg.Done()
				n := uint32(100 + g)
				w, err := p.Create(ctx, n, "acme")
				if err != nil {
					errs <- err
					return
				}
				defer w.Close()
				off := int64(pack.FileHeaderSize)
				for i := 0; i < 20; i++ {
					b := random(uint64(g*100+i), 3000)
					if _, err := w.WriteAt(b, off); err != nil {
						errs <- err
						return
					}
					if err := w.Sync(ctx); err != nil {
						errs <- err
						return
					}
					r, err := p.Open(ctx, n)
					if err != nil {
						errs <- err
						return
					}
					got := make([]byte, len(b))
					_, err = r.ReadAt(got, off)
					r.Close()
					if err != nil || !bytes.Equal(got, b) {
						errs <- fmt.Errorf("pack %d offset %d read back wrong: %v", n, off, err)
						return
					}
					off += int64(len(b))
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if got := list(t, p); len(got) != 8 {
			t.Fatalf("%d packs after concurrent writers, want 8", len(got))
		}
	})
}

// RunStore drives the chunk store over fresh instances made by open:
// puts, gets, a restart, a torn tail cut at restart, and a rebuild from
// the packs alone.
func RunStore(t *testing.T, open func(t *testing.T) store.Packs) {
	var secret [32]byte
	secret[0] = 7
	ks := keys.Derive(secret)
	aead := pack.NewSealer(ks.Pack)
	h := keys.NewHasher(ks.ChunkID)
	opts := func(p store.Packs) store.Options {
		return store.Options{Packs: p, Keys: func(string) (*pack.Sealer, error) { return aead, nil }}
	}
	t.Run("PutRestartRebuild", func(t *testing.T) {
		ctx := context.Background()
		p := open(t)
		dir := t.TempDir()
		s, err := store.Open(dir, zaptest.NewLogger(t), opts(p))
		if err != nil {
			t.Fatal(err)
		}
		type item struct {
			company string
			plain   []byte
		}
		want := map[[32]byte]item{}
		for i := 0; i < 30; i++ {
			co := []string{"acme", "globex"}[i%2]
			plain := random(uint64(1000+i), 100+i*97)
			eh := pack.EntryHeader{Kind: pack.KindData, ID: h.Sum(plain), PlainLen: uint32(len(plain))}
			if err := s.Put(co, []store.Entry{{Header: eh, Data: pack.AppendEntry(nil, aead, &eh, plain)}}); err != nil {
				t.Fatal(err)
			}
			want[eh.ID] = item{co, plain}
		}
		check := func(s *store.Store, when string) {
			t.Helper()
			for id, it := range want {
				got, _, err := s.Get(it.company, aead, id, nil)
				if err != nil || !bytes.Equal(got, it.plain) {
					t.Fatalf("%s: chunk %x of %s: %v", when, id[:8], it.company, err)
				}
			}
		}
		check(s, "after the puts")
		s.Close()
		// A torn append on every pack: cut at the next start, nothing else.
		sizes := list(t, p)
		for n, size := range sizes {
			w, err := p.OpenWriter(ctx, n)
			if err != nil {
				t.Fatal(err)
			}
			eh := pack.EntryHeader{Kind: pack.KindData, ID: [32]byte{1}, PlainLen: 1000}
			torn := pack.AppendEntry(nil, aead, &eh, random(5, 1000))[:500]
			w.WriteAt(torn, size)
			w.Sync(ctx)
			w.Close()
		}
		if s, err = store.Open(dir, zaptest.NewLogger(t), opts(p)); err != nil {
			t.Fatal(err)
		}
		if got := list(t, p); !equalMaps(got, sizes) {
			t.Fatalf("packs after a restart on torn tails: %v, want %v", got, sizes)
		}
		check(s, "after a restart")
		if _, err := s.Rebuild(ctx, nil); err != nil {
			t.Fatal(err)
		}
		check(s, "after a rebuild")
		s.Close()
		// And from the packs alone, with a new index.
		if s, err = store.Open(t.TempDir(), zaptest.NewLogger(t), opts(p)); err != nil {
			t.Fatal(err)
		}
		check(s, "with a new index")
		s.Close()
	})
}

func mustCreate(t *testing.T, p store.Packs, n uint32, company string) store.PackWriter {
	t.Helper()
	w, err := p.Create(context.Background(), n, company)
	if err != nil {
		t.Fatalf("Create pack %d: %v", n, err)
	}
	return w
}

func mustOpen(t *testing.T, p store.Packs, n uint32) store.PackReader {
	t.Helper()
	r, err := p.Open(context.Background(), n)
	if err != nil {
		t.Fatalf("Open pack %d: %v", n, err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func mustSize(t *testing.T, r store.PackReader) int64 {
	t.Helper()
	n, err := r.Size()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func list(t *testing.T, p store.Packs) map[uint32]int64 {
	t.Helper()
	got := map[uint32]int64{}
	if err := p.List(context.Background(), func(n uint32, size int64) error {
		if _, dup := got[n]; dup {
			return fmt.Errorf("pack %d listed twice", n)
		}
		got[n] = size
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func count(t *testing.T, p store.Packs) int { return len(list(t, p)) }

func equalMaps(a, b map[uint32]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 99))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}
