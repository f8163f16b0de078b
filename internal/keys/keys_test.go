package keys

import (
	"encoding/hex"
	"testing"
)

// TestFrozenDerivation pins format version 1's key derivation and chunk IDs.
func TestFrozenDerivation(t *testing.T) {
	var secret [32]byte
	for i := range secret {
		secret[i] = byte(i)
	}
	s := Derive(secret)
	if s.ChunkID == s.Pack || s.ChunkID == s.Gear || s.Gear == s.Pack {
		t.Fatal("derived keys are not distinct")
	}
	id := NewHasher(s.ChunkID).Sum([]byte("hello vault"))
	got := hex.EncodeToString(id[:])
	const want = "0e9bea9115e3275a4c24113be38a7cf3af69f573435774141ff97433bf638712"
	if got != want {
		t.Fatalf("chunk id of a fixed input changed: %s, want %s", got, want)
	}
	var other [32]byte
	other[0] = 1
	if NewHasher(Derive(other).ChunkID).Sum([]byte("hello vault")) == id {
		t.Fatal("two companies got the same chunk id for the same data")
	}
}
