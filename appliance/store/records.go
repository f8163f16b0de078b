package store

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"vaultnode/internal/pack"
)

// Decoders of index records. Each is bounded: a record of the wrong size
// or with a field out of range is refused with ErrBadRecord naming the
// broken limit, never a panic; the caller adds where the record was.

// ErrBadRecord marks an index record that cannot be decoded.
var ErrBadRecord = errors.New("malformed index record")

// maxBodyLen is the largest entry body pack.ParseEntryHeader accepts.
const maxBodyLen = pack.MaxPlain + pack.Overhead + pack.MaxPlain/64 + 1024

const locationSize = 18

func (l Location) marshal() []byte {
	b := make([]byte, locationSize)
	binary.LittleEndian.PutUint32(b[0:], l.Pack)
	binary.LittleEndian.PutUint32(b[4:], l.Offset)
	binary.LittleEndian.PutUint32(b[8:], l.BodyLen)
	binary.LittleEndian.PutUint32(b[12:], l.PlainLen)
	b[16] = byte(l.Kind)
	b[17] = l.Flags
	return b
}

// parseLocation decodes a chunks/<company> value.
func parseLocation(b []byte) (Location, error) {
	if len(b) != locationSize {
		return Location{}, fmt.Errorf("%w: location of %d bytes, want %d", ErrBadRecord, len(b), locationSize)
	}
	l := Location{
		Pack: binary.LittleEndian.Uint32(b[0:]), Offset: binary.LittleEndian.Uint32(b[4:]),
		BodyLen: binary.LittleEndian.Uint32(b[8:]), PlainLen: binary.LittleEndian.Uint32(b[12:]),
		Kind: pack.Kind(b[16]), Flags: b[17],
	}
	switch {
	case l.Offset < pack.FileHeaderSize:
		return l, fmt.Errorf("%w: offset %d inside the pack header", ErrBadRecord, l.Offset)
	case l.BodyLen < pack.Overhead || l.BodyLen > maxBodyLen:
		return l, fmt.Errorf("%w: body length %d outside %d..%d", ErrBadRecord, l.BodyLen, pack.Overhead, maxBodyLen)
	case l.PlainLen > pack.MaxPlain:
		return l, fmt.Errorf("%w: plain length %d over %d", ErrBadRecord, l.PlainLen, pack.MaxPlain)
	case l.Kind < pack.KindData || l.Kind > pack.KindManifest:
		return l, fmt.Errorf("%w: unknown kind %d", ErrBadRecord, l.Kind)
	case !pack.KnownFlags(l.Flags):
		return l, fmt.Errorf("%w: unknown flags %#x", ErrBadRecord, l.Flags)
	}
	return l, nil
}

// packRecord is the index's record of one pack.
type packRecord struct {
	Company   string
	Committed uint64
}

func (r packRecord) marshal() []byte {
	b := make([]byte, 8, 8+len(r.Company))
	binary.LittleEndian.PutUint64(b, r.Committed)
	return append(b, r.Company...)
}

// maxCompany is the longest company id a pack header holds.
const maxCompany = 16

// maxCommitted bounds a pack's committed length: a pack is sealed past
// MaxPackSize, so it is at most that plus one upload request's entries.
const maxCommitted = 1 << 32

// parsePackRecord decodes a packs value.
func parsePackRecord(b []byte) (packRecord, error) {
	if len(b) < 9 || len(b) > 8+maxCompany {
		return packRecord{}, fmt.Errorf("%w: pack record of %d bytes, want 9 to %d", ErrBadRecord, len(b), 8+maxCompany)
	}
	r := packRecord{Committed: binary.LittleEndian.Uint64(b), Company: string(b[8:])}
	if r.Committed < pack.FileHeaderSize || r.Committed >= maxCommitted {
		return r, fmt.Errorf("%w: committed length %d outside %d..%d", ErrBadRecord, r.Committed, pack.FileHeaderSize, uint64(maxCommitted-1))
	}
	return r, nil
}

func packKey(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }

// parsePackKey decodes a packs key.
func parsePackKey(k []byte) (uint32, error) {
	if len(k) != 4 {
		return 0, fmt.Errorf("%w: pack key %s of %d bytes, want 4", ErrBadRecord, hexKey(k), len(k))
	}
	return binary.BigEndian.Uint32(k), nil
}

// parseChunkKey decodes a chunks/<company> or quarantine/<company> key.
func parseChunkKey(k []byte) ([32]byte, error) {
	if len(k) != 32 {
		return [32]byte{}, fmt.Errorf("%w: chunk key %s of %d bytes, want 32", ErrBadRecord, hexKey(k), len(k))
	}
	return [32]byte(k), nil
}

// parseNextPack decodes meta/next-pack.
func parseNextPack(v []byte) (uint32, error) {
	if len(v) != 4 {
		return 0, fmt.Errorf("%w: next-pack of %d bytes, want 4", ErrBadRecord, len(v))
	}
	return binary.BigEndian.Uint32(v), nil
}

// Quarantine is the record of a chunk found damaged: the index keeps its
// location, but Has reports it absent so that an agent sends it again, and
// Get refuses it.
type Quarantine struct {
	Pack   uint32 `json:"pack"`
	Offset uint32 `json:"offset"`
	Since  int64  `json:"since"` // unix seconds
	Reason string `json:"reason"`
}

// maxReason bounds a quarantine reason as stored.
const maxReason = 512

func (q Quarantine) marshal() []byte {
	r := q.Reason
	if len(r) > maxReason {
		r = r[:maxReason]
	}
	b := make([]byte, 16, 16+len(r))
	binary.LittleEndian.PutUint32(b[0:], q.Pack)
	binary.LittleEndian.PutUint32(b[4:], q.Offset)
	binary.LittleEndian.PutUint64(b[8:], uint64(q.Since))
	return append(b, r...)
}

// parseQuarantine decodes a quarantine/<company> value.
func parseQuarantine(b []byte) (Quarantine, error) {
	if len(b) < 16 || len(b) > 16+maxReason {
		return Quarantine{}, fmt.Errorf("%w: quarantine record of %d bytes, want 16 to %d", ErrBadRecord, len(b), 16+maxReason)
	}
	return Quarantine{Pack: binary.LittleEndian.Uint32(b[0:]), Offset: binary.LittleEndian.Uint32(b[4:]),
		Since: int64(binary.LittleEndian.Uint64(b[8:])), Reason: string(b[16:])}, nil
}

// parseHealed decodes a healed/<company> value: when the chunk healed.
func parseHealed(b []byte) (int64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("%w: healed record of %d bytes, want 8", ErrBadRecord, len(b))
	}
	return int64(binary.LittleEndian.Uint64(b)), nil
}

func hexKey(k []byte) string {
	if len(k) > 40 {
		return hex.EncodeToString(k[:40]) + "..."
	}
	return hex.EncodeToString(k)
}
