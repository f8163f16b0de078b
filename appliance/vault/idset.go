package vault

import (
	"encoding/binary"
	"slices"
)

// idSet is a session's protect set (gc.go) in compact form: each chunk id
// is kept by its first 8 bytes, in one sorted slice of distinct values plus
// a short unsorted tail of the latest additions, merged into the slice in
// place when it grows past a quarter of it (or before a lookup). About 8-12
// bytes per id instead of the 42 of a map of whole ids (1 MB instead of 42
// per million chunks a session names: issue 16).
//
// Only the garbage collection's sweep asks it, to spare an id; two ids that
// share their first 8 bytes are both spared, which keeps a garbage chunk
// until the next collection and never drops a live one. Chunk ids are keyed
// hashes (BLAKE3), so for a session of n ids a candidate is spared by chance
// with probability about n / 2^64.
//
// Its memory is bounded: past maxProtectKeys distinct keys the set gives
// them up and protects every id from then on (all), so that a collection
// that runs while a session of many millions of chunks is open, or ends,
// sweeps nothing of that company (it keeps the garbage until the next
// collection) instead of the vault holding 8 bytes for each of those
// chunks.
type idSet struct {
	sorted []uint64 // ascending, distinct
	tail   []uint64 // added since the last merge, in any order, repeats allowed
	all    bool     // saturated: every id counts as added
}

// maxProtectKeys is the number of distinct keys past which an idSet
// protects every id instead (32 MiB of keys; a variable for tests).
var maxProtectKeys = 4 << 20

// idSetMinTail is the tail's length from which additions are merged into
// the sorted slice even while it is short.
const idSetMinTail = 4096

func idKey(id *[32]byte) uint64 { return binary.BigEndian.Uint64(id[:8]) }

// add adds ids.
func (s *idSet) add(ids ...[32]byte) {
	for i := range ids {
		if s.all {
			return
		}
		s.tail = append(s.tail, idKey(&ids[i]))
		if len(s.tail) >= max(idSetMinTail, len(s.sorted)/4) {
			s.merge()
		}
	}
}

// has reports whether id (or an id sharing its first 8 bytes) was added,
// or the set is saturated.
func (s *idSet) has(id [32]byte) bool {
	s.merge() // which may saturate the set
	if s.all {
		return true
	}
	_, ok := slices.BinarySearch(s.sorted, idKey(&id))
	return ok
}

// len is the number of distinct keys kept (none once saturated: see
// empty).
func (s *idSet) len() int {
	s.merge()
	return len(s.sorted)
}

// empty reports whether the set protects nothing.
func (s *idSet) empty() bool { return !s.all && s.len() == 0 }

// saturate drops the keys and protects every id from now on.
func (s *idSet) saturate() {
	s.all = true
	s.sorted, s.tail = nil, nil
}

// addSet adds every key of o (saturates if o is).
func (s *idSet) addSet(o *idSet) {
	if o.all {
		s.saturate()
		return
	}
	o.merge()
	for _, k := range o.sorted {
		if s.all {
			return
		}
		s.tail = append(s.tail, k)
		if len(s.tail) >= max(idSetMinTail, len(s.sorted)/4) {
			s.merge()
		}
	}
}

// merge moves the tail into the sorted slice: the tail sorted and without
// repeats or keys already there, then both merged from the back, in place.
func (s *idSet) merge() {
	if len(s.tail) == 0 {
		return
	}
	slices.Sort(s.tail)
	t := slices.Compact(s.tail)
	k := 0
	for _, x := range t {
		if _, found := slices.BinarySearch(s.sorted, x); !found {
			t[k] = x
			k++
		}
	}
	t = t[:k]
	n := len(s.sorted)
	s.sorted = slices.Grow(s.sorted, len(t))[:n+len(t)]
	i, j := n-1, len(t)-1
	for w := n + len(t) - 1; j >= 0; w-- {
		if i >= 0 && s.sorted[i] > t[j] {
			s.sorted[w] = s.sorted[i]
			i--
		} else {
			s.sorted[w] = t[j]
			j--
		}
	}
	s.tail = s.tail[:0]
	if len(s.sorted) > maxProtectKeys {
		s.saturate()
	}
}
