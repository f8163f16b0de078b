package backup

import "sync"

// arena hands out the uploader's copies of chunk content from one buffer,
// used in turn like a ring: a copy is taken at the head and the tail moves
// past copies once they and every older one are given back. Chunks go
// through the uploader nearly in the order they came, so the ring is
// rarely held up by an old one; when it has no room, the copy comes from
// the heap as before. The ring itself is made only once the copies of a
// backup have come to its size from the heap, so that the small backups of
// the continuous mode do not allocate it each time.
//
// The copies of an initial backup are most of the bytes the agent
// allocates: from the heap, each backup's gigabytes of them touched fresh
// pages again and again as the collector and the scavenger gave pages back
// (75 % of the agent's page faults, docs/performance.md "The uploader's
// copies in a ring"). The ring touches its pages once.
type arena struct {
	mu   sync.Mutex
	buf  []byte // made once copied passes size
	size int
	// copied counts the bytes taken from the heap before buf was made.
	copied int
	head   int     // where the next copy starts
	live   []*span // copies not yet passed by the tail, oldest first
	// first is the index in live of the oldest; live is compacted when
	// first passes half of it.
	first int
}

// span is one copy's place in the ring.
type span struct {
	off   int
	freed bool
	ring  bool // taken from the ring, not the heap
}

func newArena(size int) *arena { return &arena{size: size} }

// ringMin is the least copy taken from the ring. The heap recycles the
// pages of small copies well (a small files' initial backup took as many
// page faults with its copies from the heap as without any), and a ring
// that small copies go round touches all its pages for nothing.
const ringMin = 64 << 10

// take returns a buffer of n bytes and records its place in s.
func (a *arena) take(s *span, n int) []byte {
	if n < ringMin {
		*s = span{}
		return make([]byte, n)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.buf == nil && a.copied >= a.size {
		a.buf = make([]byte, a.size)
	}
	if off, ok := a.room(n); ok && a.buf != nil {
		*s = span{off: off, ring: true}
		a.head = off + n
		a.live = append(a.live, s)
		return a.buf[off : off+n : off+n]
	}
	*s = span{}
	if a.buf == nil {
		a.copied += n
	}
	return make([]byte, n)
}

// room returns where n bytes fit, if they do.
func (a *arena) room(n int) (int, bool) {
	if a.first == len(a.live) {
		// Empty: start again at the front.
		return 0, n <= a.size
	}
	tail := a.live[a.first].off
	if a.head > tail {
		// Copies lie in [tail, head): room after head, or at the front
		// up to (not touching) tail.
		if a.head+n <= a.size {
			return a.head, true
		}
		return 0, n < tail
	}
	// Wrapped: copies lie in [tail, size) and [0, head).
	return a.head, a.head+n < tail
}

// give hands back the copy of s.
func (a *arena) give(s *span) {
	if !s.ring {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if s.freed {
		return
	}
	s.freed = true
	for a.first < len(a.live) && a.live[a.first].freed {
		a.live[a.first] = nil
		a.first++
	}
	if a.first == len(a.live) {
		a.live, a.first = a.live[:0], 0
	} else if a.first > len(a.live)/2 {
		k := copy(a.live, a.live[a.first:])
		clear(a.live[k:])
		a.live, a.first = a.live[:k], 0
	}
}
