package vault

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// TestIDSet checks the compact protect set against a map of whole ids:
// every id added is found, at every step (lookups between additions merge
// the tail early), through addSet too; ids never added are not (with 8-byte
// keys of random ids, a chance collision in this test has odds of 2^-40).
func TestIDSet(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	rid := func() (id [32]byte) {
		for i := 0; i < 32; i += 8 {
			binary.LittleEndian.PutUint64(id[i:], r.Uint64())
		}
		return id
	}
	var s, other idSet
	want := map[[32]byte]bool{}
	var added [][32]byte
	for step := range 200_000 {
		switch {
		case step%7 == 0 && len(added) > 0: // a repeat
			id := added[r.IntN(len(added))]
			s.add(id)
		case step%5000 == 0:
			batch := make([][32]byte, r.IntN(20_000))
			for i := range batch {
				batch[i] = rid()
				want[batch[i]] = true
			}
			added = append(added, batch...)
			s.add(batch...)
		default:
			id := rid()
			want[id] = true
			added = append(added, id)
			s.add(id)
		}
		if step%997 == 0 {
			if id := added[r.IntN(len(added))]; !s.has(id) {
				t.Fatalf("step %d: an added id is not found", step)
			}
			if s.has(rid()) {
				t.Fatalf("step %d: an id never added is found", step)
			}
		}
	}
	for id := range want {
		if !s.has(id) {
			t.Fatalf("added id %x not found", id[:8])
		}
	}
	if got := s.len(); got != len(want) {
		t.Fatalf("len %d, want %d distinct ids", got, len(want))
	}
	for i := 1; i < len(s.sorted); i++ {
		if s.sorted[i-1] >= s.sorted[i] {
			t.Fatalf("keys %d and %d out of order or repeated", i-1, i)
		}
	}
	// Memory: about 8 bytes per id, at most 16 with the slices' spare room.
	if per := float64(8*(cap(s.sorted)+cap(s.tail))) / float64(len(want)); per > 16 {
		t.Fatalf("%.1f bytes per id, want at most 16", per)
	}

	extra := rid()
	other.add(extra)
	other.addSet(&s)
	if other.len() != len(want)+1 || !other.has(extra) {
		t.Fatalf("addSet: len %d, want %d", other.len(), len(want)+1)
	}
	for _, id := range added[:1000] {
		if !other.has(id) {
			t.Fatal("addSet lost an id")
		}
	}
	var empty idSet
	if empty.has(extra) || empty.len() != 0 {
		t.Fatal("the empty set has something")
	}
}

// TestIDSetSaturates: past maxProtectKeys distinct keys a set drops them
// and protects every id; addSet carries that over.
func TestIDSetSaturates(t *testing.T) {
	defer func(n int) { maxProtectKeys = n }(maxProtectKeys)
	maxProtectKeys = 10_000
	r := rand.New(rand.NewPCG(3, 4))
	rid := func() (id [32]byte) {
		for i := 0; i < 32; i += 8 {
			binary.LittleEndian.PutUint64(id[i:], r.Uint64())
		}
		return id
	}
	var s idSet
	for range 10_000 {
		s.add(rid())
	}
	if s.all || s.has(rid()) || s.empty() {
		t.Fatal("a set at its bound saturated early")
	}
	for range 5_000 {
		s.add(rid())
	}
	if !s.all || !s.has(rid()) || s.empty() || cap(s.sorted)+cap(s.tail) != 0 {
		t.Fatalf("past its bound: all %v, keys kept %d", s.all, cap(s.sorted)+cap(s.tail))
	}
	var retired idSet
	retired.add(rid())
	retired.addSet(&s)
	if !retired.all || !retired.has(rid()) {
		t.Fatal("addSet of a saturated set did not saturate")
	}
}
