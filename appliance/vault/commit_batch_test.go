package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"vaultnode/appliance/store"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// TestCommitChecksEveryBatch: the commit's store lookups run beside the
// decoding, one batch of ids at a time; every batch is checked, and a
// chunk missing early in the listing is what the refusal names even when
// the listing is also malformed further on.
func TestCommitChecksEveryBatch(t *testing.T) {
	v := openTestVault(t)
	k, err := v.companyKeys("acme")
	if err != nil {
		t.Fatal(err)
	}
	hs := keys.NewHasher(k.set.ChunkID)
	const files = 2*listingLookupBatch + listingLookupBatch/2 // two full batches and part of a third
	ids := make([][32]byte, files)
	var entries []store.Entry
	for i := range ids {
		p := fmt.Appendf(nil, "content %d", i)
		h := pack.EntryHeader{Kind: pack.KindData, ID: [32]byte(hs.Sum(p)), PlainLen: uint32(len(p))}
		ids[i] = h.ID
		entries = append(entries, store.Entry{Header: h, Data: pack.AppendEntry(nil, k.aead, &h, p)})
	}
	missing := map[int]bool{0: true, listingLookupBatch: true, 2 * listingLookupBatch: true, files - 1: true}
	var stored []store.Entry
	for i, e := range entries {
		if !missing[i] {
			stored = append(stored, e)
		}
	}
	if err := v.Store.Put("acme", stored); err != nil {
		t.Fatal(err)
	}
	listing := func(lack int, malformed bool) []tree.ChunkRef {
		var b bytes.Buffer
		w, err := tree.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		for i := range files {
			id := ids[(i+1)%files] // never a missing one...
			if missing[(i+1)%files] {
				id = ids[1]
			}
			if i == lack { // ...but this one
				id = ids[i]
			}
			n := tree.Node{Path: fmt.Appendf(nil, "f%05d", i), Type: tree.TypeFile, Size: 3, Chunks: []tree.ChunkRef{{ID: id, Len: 3}}}
			if err := w.Write(&n); err != nil {
				t.Fatal(err)
			}
		}
		if malformed {
			b.Write([]byte{0xff})
		}
		return []tree.ChunkRef{putListing(t, v, k, b.Bytes())}
	}
	tot, err := v.checkListing(context.Background(), &session{company: "acme"}, k, listing(-1, false))
	if err != nil || tot.Files != files {
		t.Fatalf("complete listing: %d files, %v", tot.Files, err)
	}
	for lack := range missing {
		for _, malformed := range []bool{false, true} {
			_, err := v.checkListing(context.Background(), &session{company: "acme"}, k, listing(lack, malformed))
			var ae *apiError
			if malformed && lack >= 2*listingLookupBatch { // the last batch is checked at the listing's end
				if !errors.As(err, &ae) || ae.code != wire.CodeBadRequest {
					t.Errorf("chunk %d missing, malformed end: err = %v, want %s", lack, err, wire.CodeBadRequest)
				}
				continue
			}
			if !errors.As(err, &ae) || ae.code != wire.CodeMissingChunk || !bytes.Contains([]byte(ae.msg), fmt.Appendf(nil, "%x", ids[lack][:8])) {
				t.Errorf("chunk %d missing (malformed end %v): err = %v, want %s naming %x", lack, malformed, err, wire.CodeMissingChunk, ids[lack][:8])
			}
		}
	}
}
