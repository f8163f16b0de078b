package backup

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestArenaCopiesNeverOverlap takes and gives back copies of random sizes
// in a random order, as the uploader's lack queries, compressors and
// senders do, and checks that every copy still holds what was written into
// it when it is given back: two live copies sharing bytes would not.
func TestArenaCopiesNeverOverlap(t *testing.T) {
	const size = 1 << 20
	a := newArena(size)
	rng := rand.New(rand.NewPCG(1, 2))
	type held struct {
		s    *span
		b    []byte
		fill byte
	}
	var live []held
	heldBytes, hits, misses := 0, 0, 0
	for i := range 30000 {
		// Hold up to nearly all of the ring (the budget holds at most
		// half of arenaBytes), so that copies are often taken close to
		// the oldest one.
		if heldBytes > size-size/8 || len(live) > 0 && rng.IntN(3) == 0 {
			// Mostly the oldest, sometimes another.
			j := 0
			if rng.IntN(4) == 0 {
				j = rng.IntN(len(live))
			}
			h := live[j]
			if !bytes.Equal(h.b, bytes.Repeat([]byte{h.fill}, len(h.b))) {
				t.Fatalf("step %d: a copy of %d bytes at %d was overwritten", i, len(h.b), h.s.off)
			}
			a.give(h.s)
			a.give(h.s) // a second give is a no-op
			heldBytes -= len(h.b)
			live = append(live[:j], live[j+1:]...)
			continue
		}
		n := ringMin + rng.IntN(size/32)
		if rng.IntN(2) == 0 {
			n = ringMin * (1 + rng.IntN(3)) // sizes that fill the ring exactly
		}
		s := new(span)
		b := a.take(s, n)
		if len(b) != n || cap(b) != n {
			t.Fatalf("take(%d) gave len %d cap %d", n, len(b), cap(b))
		}
		if !s.ring {
			misses++
		} else {
			hits++
			for _, h := range live {
				if h.s.ring && s.off < h.s.off+len(h.b) && h.s.off < s.off+n {
					t.Fatalf("step %d: copy [%d, %d) overlaps live copy [%d, %d)", i, s.off, s.off+n, h.s.off, h.s.off+len(h.b))
				}
			}
		}
		fill := byte(i)
		for k := range b {
			b[k] = fill
		}
		live = append(live, held{s, b, fill})
		heldBytes += n
	}
	if hits == 0 || misses == 0 {
		t.Fatalf("hits %d, misses %d: the run did not use both the ring and the heap", hits, misses)
	}
	for _, h := range live {
		a.give(h.s)
	}
	if a.first != len(a.live) {
		t.Fatalf("%d copies still live after all were given back", len(a.live)-a.first)
	}
}

// TestArenaReusesItsRing checks that copies taken and given back in order
// come from the ring once the heap has given as many bytes as the ring
// holds, and that nothing is taken from the ring before.
func TestArenaReusesItsRing(t *testing.T) {
	const size, n = 1 << 20, 100 << 10
	a := newArena(size)
	var prev *span
	hits := 0
	for i := range 200 {
		s := new(span)
		a.take(s, n)
		if s.ring {
			hits++
		}
		if i < size/n+1 && s.ring {
			t.Fatalf("copy %d came from the ring before the heap gave %d bytes", i, size)
		}
		if prev != nil {
			a.give(prev)
		}
		prev = s
	}
	if want := 200 - size/n - 1; hits != want {
		t.Fatalf("hits %d, want %d", hits, want)
	}
	for _, n := range []int{size + 1, ringMin - 1} {
		s := new(span)
		if b := a.take(s, n); len(b) != n || s.ring {
			t.Fatalf("a copy of %d bytes: len %d, from the ring %v", n, len(b), s.ring)
		}
	}
}
