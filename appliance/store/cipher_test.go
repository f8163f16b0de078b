package store_test

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"vaultnode/appliance/store"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
)

// oldEntry seals p as the versions before XAES-256-GCM did: XChaCha20-
// Poly1305 under the fixture's pack key, cipher byte 0.
func (f *fixture) oldEntry(p []byte) store.Entry {
	var secret [32]byte
	secret[0] = 42 // newFixture's secret
	h := pack.EntryHeader{Kind: pack.KindData, ID: f.hs.Sum(p), PlainLen: uint32(len(p)),
		Cipher: pack.CipherXChaCha20Poly1305, BodyLen: uint32(pack.Overhead + len(p))}
	hb := h.Marshal()
	data := append([]byte(nil), hb[:]...)
	var nonce [pack.NonceSize]byte
	_, _ = rand.Read(nonce[:])
	data = append(data, nonce[:]...)
	data = pack.NewAEAD(keys.Derive(secret).Pack).Seal(data, nonce[:], p, hb[:48])
	return store.Entry{Header: h, Data: data}
}

// TestOldCipherEntries: a store written by the old code (XChaCha20-
// Poly1305 entries) gets new XAES-256-GCM entries in the same packs; both
// read, and both are authenticated and indexed again when the index is
// lost or rebuilt.
func TestOldCipherEntries(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, dir)
	var all []stored
	put := func(old bool, sizes ...int) {
		var batch []store.Entry
		for _, n := range sizes {
			p, e := f.chunk(n)
			if old {
				e = f.oldEntry(p)
			}
			all = append(all, stored{"acme", p, e})
			batch = append(batch, e)
		}
		if err := f.s.Put("acme", batch); err != nil {
			t.Fatal(err)
		}
	}
	put(true, 0, 100, 4<<10, 200<<10)
	f.reopen()
	put(true, 7, 3000)
	put(false, 0, 100, 64<<10) // same pack as the old ones above
	for _, st := range all[:6] {
		if st.e.Data[6] != 0 {
			t.Fatalf("old entry has cipher byte %d", st.e.Data[6])
		}
	}
	if all[6].e.Header.Cipher != pack.CipherXAES256GCM {
		t.Fatalf("new entry has cipher %v", all[6].e.Header.Cipher)
	}
	f.mustAll(all)

	// The index lost: the scan authenticates every entry with the company's
	// Sealer before indexing it.
	f.s.Close()
	f.s = nil
	if err := os.Remove(filepath.Join(dir, "index.db")); err != nil {
		t.Fatal(err)
	}
	f.open()
	f.mustAll(all)
	pr, err := f.s.Rebuild(context.Background(), nil)
	if err != nil || pr.Entries != int64(len(all)) {
		t.Fatalf("Rebuild = %+v, %v; want %d entries", pr, err, len(all))
	}
	f.mustAll(all)
}
