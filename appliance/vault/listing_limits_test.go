package vault

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"testing"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// The memory-exhaustion commit of issue 10: a first listing chunk whose
// node declares a huge string, then one zero chunk referenced thousands of
// times. The vault refuses it with over_limit, naming the limit, having
// allocated little; likewise a node that never ends and references that
// repeat beyond the listing limits.
func TestCommitListingLimits(t *testing.T) {
	v := openTestVault(t)
	k, err := v.companyKeys("acme")
	if err != nil {
		t.Fatal(err)
	}
	magic, _ := tree.Marshal(tree.ListingMagic)
	zero := putListing(t, v, k, make([]byte, tree.MaxListingChunk))
	repeat := func(first tree.ChunkRef, n int) []tree.ChunkRef {
		refs := []tree.ChunkRef{first}
		for range n {
			refs = append(refs, zero)
		}
		return refs
	}
	// A path declared 4 GiB long, backed by 16 GiB of zeros.
	hugePath := putListing(t, v, k, append(append([]byte{}, magic...), 0xa1, 0x01, 0x5b, 0, 0, 0, 1, 0, 0, 0, 0))
	// A node of 2^19 chunk references, each a 65,535-byte string: every
	// head within its limit, the node over MaxNodeBytes.
	var long bytes.Buffer
	long.Write(magic)
	long.Write([]byte{0xa1, 0x17, 0x9a, 0x00, 0x08, 0x00, 0x00})
	for long.Len() < 4<<20-70000 {
		long.Write([]byte{0x59, 0xff, 0xff})
		long.Write(make([]byte, 0xffff))
	}
	endless := []tree.ChunkRef{putListing(t, v, k, long.Bytes())}
	var more bytes.Buffer
	for more.Len() < 4<<20-70000 {
		more.Write([]byte{0x59, 0xff, 0xff})
		more.Write(make([]byte, 0xffff))
	}
	endless = append(endless, putListing(t, v, k, more.Bytes()))
	for range 20 { // 80 MiB of strings: far over MaxNodeBytes
		endless = append(endless, endless[1])
	}
	for _, tt := range []struct {
		name, limit string
		refs        []tree.ChunkRef
		maxAlloc    uint64
	}{
		{"4 GiB path", "tree.MaxPathLen", repeat(hugePath, tree.MaxListingBytes/tree.MaxListingChunk-1), 32 << 20},
		{"node that never ends", "tree.MaxNodeBytes", endless, 3*tree.MaxNodeBytes + 32<<20},
		{"8,000 references", "tree.MaxListingBytes", repeat(hugePath, 7999), 1 << 20},
		{"too many references", "tree.MaxListingRefs", repeat(hugePath, tree.MaxListingRefs), 1 << 20},
	} {
		var a, b runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&a)
		_, err := v.checkListing(context.Background(), &session{company: "acme"}, k, tt.refs)
		runtime.ReadMemStats(&b)
		var ae *apiError
		if !errors.As(err, &ae) || ae.code != wire.CodeLimit || !strings.Contains(ae.msg, tt.limit) {
			t.Fatalf("%s: err = %v, want %s naming %s", tt.name, err, wire.CodeLimit, tt.limit)
		}
		got := b.TotalAlloc - a.TotalAlloc
		t.Logf("%s: refused (%s) with %d bytes allocated", tt.name, ae.msg, got)
		if got > tt.maxAlloc {
			t.Errorf("%s: allocated %d bytes, want at most %d", tt.name, got, tt.maxAlloc)
		}
	}
}

// The testing period's examination reads a listing once: a newer version
// with the same listing (a synchronization that found no change) gets the
// same warnings without its listing being read again.
func TestExamineReadsAListingOnce(t *testing.T) {
	v := openTestVault(t)
	k, err := v.companyKeys("acme")
	if err != nil {
		t.Fatal(err)
	}
	ref := putListing(t, v, k, encodeListing(t, []tree.Node{{Path: []byte("home"), Type: tree.TypeDir},
		{Path: []byte("home/.cache"), Type: tree.TypeDir}, {Path: []byte("home/.cache/x"), Type: tree.TypeFile}}))
	cp := catalog.Computer{ID: "pc-1", Company: "acme"}
	ms := []wire.Manifest{{Seq: 1, Listing: []tree.ChunkRef{ref}}}
	first, err := v.examineConfig(context.Background(), cp, wire.Config{Name: "home"}, ms)
	if err != nil || len(first) != 1 || !strings.Contains(first[0], "home/.cache") {
		t.Fatalf("first examination: %q, %v; want the cache directory's warning", first, err)
	}
	if _, _, err := v.Store.DeleteChunks("acme", [][32]byte{ref.ID}); err != nil {
		t.Fatal(err)
	}
	ms = append(ms, wire.Manifest{Seq: 2, Listing: []tree.ChunkRef{ref}})
	again, err := v.examineConfig(context.Background(), cp, wire.Config{Name: "home"}, ms)
	if err != nil || !slices.Equal(again, first) {
		t.Fatalf("same listing examined again: %q, %v; want %q without reading it", again, err, first)
	}
}

func TestTempDirOf(t *testing.T) {
	for p, want := range map[string]string{"a/tmp/b/c": "a/tmp", "tmp/x": "tmp", "a/b/tmp": "", "x": "", "a/.cache/tmp/f": "a/.cache", "a/b": ""} {
		if got := string(tempDirOf([]byte(p))); got != want {
			t.Errorf("tempDirOf(%q) = %q, want %q", p, got, want)
		}
	}
}

// TestTempDirBeneathRoot: a root the operator chose under /tmp (or named
// cache) is not a temporary directory backed up by mistake; one beneath it is.
func TestTempDirBeneathRoot(t *testing.T) {
	g := factsGatherer{roots: cfgRoots([]string{"/tmp/job/src/", "/var/cache", "/"})}
	for p, want := range map[string]string{
		"tmp/job/src/a":           "",
		"tmp/job/src/x/cache/f":   "tmp/job/src/x/cache",
		"var/cache/apt/f":         "",
		"var/cache/apt/tmp/f":     "var/cache/apt/tmp",
		"tmp/other/f":             "tmp", // beneath the whole-system root only
		"tmp/job/srcfoo/tmp/f":    "tmp",
		"home/u/.cache/tmp/thumb": "home/u/.cache",
	} {
		if got := string(g.tempDirOf([]byte(p))); got != want {
			t.Errorf("tempDirOf(%q) under %q = %q, want %q", p, g.roots, got, want)
		}
	}
}
