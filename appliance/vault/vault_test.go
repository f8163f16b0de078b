package vault

import (
	"bytes"
	"context"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"vaultnode/appliance/store"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/tree"
)

func openTestVault(t testing.TB) *Vault {
	t.Helper()
	v, err := Open(Options{Dir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	return v
}

// putListing stores plain as one listing chunk and returns its reference.
func putListing(t testing.TB, v *Vault, k *companyKeys, plain []byte) tree.ChunkRef {
	t.Helper()
	h := pack.EntryHeader{Kind: pack.KindListing, PlainLen: uint32(len(plain))}
	h.ID = [32]byte(keys.NewHasher(k.set.ChunkID).Sum(plain))
	data := pack.AppendEntry(nil, k.aead, &h, plain)
	if err := v.Store.Put("acme", []store.Entry{{Header: h, Data: data}}); err != nil {
		t.Fatal(err)
	}
	return tree.ChunkRef{ID: h.ID, Len: uint32(len(plain))}
}

// TestCheckListingStopsReader: a commit whose listing is bad early must not
// leave the goroutine that streams the listing's chunks blocked forever.
func TestCheckListingStopsReader(t *testing.T) {
	v := openTestVault(t)
	k, err := v.companyKeys("acme")
	if err != nil {
		t.Fatal(err)
	}
	// Chunk 1: the magic and two nodes out of order; chunk 2: more nodes.
	var first bytes.Buffer
	b, _ := tree.Marshal(tree.ListingMagic)
	first.Write(b)
	for _, p := range []string{"b", "a"} {
		b, _ := tree.Marshal(&tree.Node{Path: []byte(p), Type: tree.TypeDir})
		first.Write(b)
	}
	var second bytes.Buffer
	for i := 0; i < 2000; i++ {
		b, _ := tree.Marshal(&tree.Node{Path: []byte{'c', byte('a' + i%26), byte('a' + i/26%26), byte('a' + i/676)}, Type: tree.TypeDir})
		second.Write(b)
	}
	refs := []tree.ChunkRef{putListing(t, v, k, first.Bytes()), putListing(t, v, k, second.Bytes())}

	before := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		r := httptest.NewRequest("POST", "/v1/sessions/x/commit", nil)
		if _, err := v.checkListing(r.Context(), &session{company: "acme"}, k, refs); err == nil {
			t.Fatal("a listing out of order was accepted")
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+2 {
		buf := make([]byte, 3000)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("%d goroutines left behind by 20 refused commits (listingReader blocked writing to its pipe):\n%s", n-before, buf)
	}
}

// TestVerifyDuringPuts: verify runs while backups store chunks; what they
// commit meanwhile is not damage.
func TestVerifyDuringPuts(t *testing.T) {
	v := openTestVault(t)
	k, err := v.companyKeys("acme")
	if err != nil {
		t.Fatal(err)
	}
	hs := keys.NewHasher(k.set.ChunkID)
	put := func(i int) error {
		p := bytes.Repeat([]byte{byte(i), byte(i >> 8), byte(i >> 16)}, 20000)
		h := pack.EntryHeader{Kind: pack.KindData, ID: [32]byte(hs.Sum(p)), PlainLen: uint32(len(p))}
		return v.Store.Put("acme", []store.Entry{{Header: h, Data: pack.AppendEntry(nil, k.aead, &h, p)}})
	}
	for i := 0; i < 200; i++ {
		if err := put(i); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	errc := make(chan error, 1)
	go func() { // owner: this test, stopped by close(stop)
		defer close(errc)
		for i := 200; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := put(i); err != nil {
				errc <- err
				return
			}
		}
	}()
	for i := 0; i < 6; i++ {
		rep, err := v.Verify(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK() {
			close(stop)
			<-errc
			t.Fatalf("verify %d during puts reported %d problems, first: %s", i, len(rep.Problems), rep.Problems[0])
		}
	}
	close(stop)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
