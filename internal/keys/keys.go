// Package keys derives a company's keys from its secret and computes chunk
// IDs (docs/format.md, "Keys").
package keys

import (
	"github.com/zeebo/blake3"
)

// ID is a chunk ID: BLAKE3-256 of the plaintext keyed with the company's ID key.
type ID [32]byte

// Set holds the keys derived from one company secret.
type Set struct {
	ChunkID [32]byte // Kid: keyed chunk IDs, shared with the company's agents
	Gear    [32]byte // Kcdc: seeds the chunker's gear table
	Pack    [32]byte // Kpack: seals pack entries, never leaves the vault
}

const (
	ctxChunkID = "vaultnode 2026-11 chunk id v1"
	ctxGear    = "vaultnode 2026-11 chunker gear v1"
	ctxPack    = "vaultnode 2026-11 pack seal v1"
)

// Derive returns the key set of a company secret.
func Derive(secret [32]byte) Set {
	var s Set
	blake3.DeriveKey(ctxChunkID, secret[:], s.ChunkID[:])
	blake3.DeriveKey(ctxGear, secret[:], s.Gear[:])
	blake3.DeriveKey(ctxPack, secret[:], s.Pack[:])
	return s
}

// Hasher computes chunk IDs with one ID key. It is not safe for concurrent
// use; make one per goroutine.
type Hasher struct {
	h *blake3.Hasher
}

// NewHasher returns a Hasher keyed with k (a Set's ChunkID).
func NewHasher(k [32]byte) *Hasher {
	h, err := blake3.NewKeyed(k[:])
	if err != nil {
		panic("blake3 keyed hasher with a 32-byte key cannot fail: " + err.Error())
	}
	return &Hasher{h: h}
}

// Reset starts an ID over content given in pieces (Write), read with ID.
func (h *Hasher) Reset() { h.h.Reset() }

// Write adds p to the content whose ID is computed since Reset.
func (h *Hasher) Write(p []byte) (int, error) { return h.h.Write(p) }

// ID returns the chunk ID of the content written since Reset.
func (h *Hasher) ID() ID {
	var id ID
	h.h.Sum(id[:0])
	return id
}

// Sum returns the chunk ID of data.
func (h *Hasher) Sum(data []byte) ID {
	h.Reset()
	h.Write(data)
	return h.ID()
}
