package restore

import (
	"bytes"
	"context"
	"runtime"
	"testing"

	"vaultnode/internal/keys"
	"vaultnode/internal/limit"
	"vaultnode/internal/tree"
)

// A hostile vault serving the memory-exhaustion listing of issue 10 (and
// its variants) makes the agent refuse it, naming the limit, having
// allocated what the limits allow and no more.
func TestOpenListingLimits(t *testing.T) {
	src := memSource{}
	h := keys.NewHasher(testKey)
	put := func(b []byte) tree.ChunkRef {
		id := [32]byte(h.Sum(b))
		src[id] = b
		return tree.ChunkRef{ID: id, Len: uint32(len(b))}
	}
	magic, _ := tree.Marshal(tree.ListingMagic)
	hugePath := put(append(append([]byte{}, magic...), 0xa1, 0x01, 0x5b, 0, 0, 0, 1, 0, 0, 0, 0))
	zero4 := put(make([]byte, tree.MaxListingChunk))
	zero8 := put(make([]byte, 8<<20))
	var strs bytes.Buffer
	for strs.Len() < tree.MaxListingChunk-70000 {
		strs.Write([]byte{0x59, 0xff, 0xff})
		strs.Write(make([]byte, 0xffff))
	}
	strings4 := put(strs.Bytes())
	endless := put(append(append([]byte{}, magic...), 0xa1, 0x17, 0x9a, 0x00, 0x08, 0x00, 0x00))
	repeat := func(first, then tree.ChunkRef, n int) []tree.ChunkRef {
		refs := []tree.ChunkRef{first}
		for range n {
			refs = append(refs, then)
		}
		return refs
	}
	for _, tt := range []struct {
		name, limit string
		refs        []tree.ChunkRef
		max         uint64
	}{
		{"8,000 references of an 8 MiB chunk", "tree.MaxListingChunk", repeat(hugePath, zero8, 8000), 1 << 20},
		{"4 GiB path, then 16 GiB of zeros", "tree.MaxPathLen", repeat(hugePath, zero4, tree.MaxListingBytes/tree.MaxListingChunk-1), 32 << 20},
		{"a node that never ends", "tree.MaxNodeBytes", repeat(endless, strings4, 1000), 3*tree.MaxNodeBytes + 32<<20},
	} {
		var a, b runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&a)
		rd, stop, err := OpenListing(context.Background(), src, testKey, tt.refs)
		if err == nil {
			_, err = rd.Next()
			stop()
		}
		runtime.ReadMemStats(&b)
		if le, ok := limit.As(err); !ok || le.Limit != tt.limit {
			t.Fatalf("%s: err = %v, want %s", tt.name, err, tt.limit)
		}
		got := b.TotalAlloc - a.TotalAlloc
		t.Logf("%s: refused with %d bytes allocated", tt.name, got)
		if got > tt.max {
			t.Errorf("%s: allocated %d bytes, want at most %d", tt.name, got, tt.max)
		}
	}
}
