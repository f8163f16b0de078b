package tape

import (
	"context"
	"errors"
	"sync"
	"testing"
)

// countingSource serves entries named by their id's first byte, failing
// the ids in bad, and counts the reads.
type countingSource struct {
	Source
	mu    sync.Mutex
	reads map[byte]int
	bad   map[byte]bool
}

func (s *countingSource) Entry(_ context.Context, company string, id [32]byte, dst []byte) ([]byte, error) {
	s.mu.Lock()
	s.reads[id[0]]++
	s.mu.Unlock()
	if s.bad[id[0]] {
		return nil, errors.New("damaged")
	}
	return append(dst[:0], id[0]), nil
}

func key(b byte) chunkKey { return chunkKey{"acme", [32]byte{b}} }

// TestEntryReader: entries come back in the writer's order, each read
// once; a key the writer skipped is dropped, one not read ahead is read
// then, and a failed read ahead is the error of the entry it failed on.
func TestEntryReader(t *testing.T) {
	src := &countingSource{reads: map[byte]int{}, bad: map[byte]bool{7: true}}
	var keys []chunkKey
	for b := range byte(10) {
		keys = append(keys, key(b))
	}
	r := newEntryReader(context.Background(), src, newEntryBuffers(), keys)
	defer r.Close()
	for _, b := range []byte{0, 1, 3, 4, 20, 5} { // 2 skipped; 20 never asked ahead
		e, err := r.Entry(context.Background(), key(b))
		if err != nil || len(e) != 1 || e[0] != b {
			t.Fatalf("entry %d: %v %v", b, e, err)
		}
	}
	if _, err := r.Entry(context.Background(), key(7)); err == nil {
		t.Fatal("entry 7 failed to read ahead, but came back without an error")
	}
	e, err := r.Entry(context.Background(), key(9)) // after the reader stopped: read now
	if err != nil || e[0] != 9 {
		t.Fatalf("entry 9 after the failure: %v %v", e, err)
	}
	r.Close()
	src.mu.Lock()
	defer src.mu.Unlock()
	for _, b := range []byte{0, 1, 2, 3, 4, 5, 6, 7, 20} {
		if src.reads[b] != 1 {
			t.Errorf("entry %d read %d times, want once", b, src.reads[b])
		}
	}
	if src.reads[8] != 0 || src.reads[9] != 1 {
		t.Errorf("after the failure: 8 read %d times, 9 read %d; want 0 and 1", src.reads[8], src.reads[9])
	}
}

// TestEntryReaderCloseEarly: a writer that stops (a drive error) stops the
// reader, which never reads on to the end of the version.
func TestEntryReaderCloseEarly(t *testing.T) {
	src := &countingSource{reads: map[byte]int{}}
	var keys []chunkKey
	for b := range byte(200) {
		keys = append(keys, key(b))
	}
	r := newEntryReader(context.Background(), src, newEntryBuffers(), keys)
	if _, err := r.Entry(context.Background(), key(0)); err != nil {
		t.Fatal(err)
	}
	r.Close()
	src.mu.Lock()
	defer src.mu.Unlock()
	if n := len(src.reads); n > 2+readAheadEntries+1 {
		t.Fatalf("%d entries read after the writer stopped at the first, want at most %d", n, 2+readAheadEntries+1)
	}
}

// reusingSource serves 1 KiB entries filled with the id's first byte and
// counts the reads that came with a buffer large enough to reuse.
type reusingSource struct {
	Source
	mu     sync.Mutex
	reads  int
	reused int
}

func (s *reusingSource) Entry(_ context.Context, company string, id [32]byte, dst []byte) ([]byte, error) {
	s.mu.Lock()
	s.reads++
	if cap(dst) >= 1024 {
		s.reused++
	}
	s.mu.Unlock()
	e := dst[:0]
	for range 1024 {
		e = append(e, id[0])
	}
	return e, nil
}

// TestEntryReaderReusesBuffers: entries the writer is done with are read
// into again (by the next version's reader too) instead of allocated, and
// an entry in the writer's hands is never overwritten.
func TestEntryReaderReusesBuffers(t *testing.T) {
	src := &reusingSource{}
	bufs := newEntryBuffers()
	for v := range 3 {
		var keys []chunkKey
		for b := range byte(50) {
			keys = append(keys, key(b))
		}
		r := newEntryReader(context.Background(), src, bufs, keys)
		var held [][]byte
		for _, k := range keys {
			e, err := r.Entry(context.Background(), k)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, e)
			if len(held) == 2 { // the writer holds two entries at a time
				r.Done(held[0])
				held = held[1:]
			}
			for _, h := range held {
				for _, c := range h {
					if c != h[0] {
						t.Fatalf("version %d: an entry in the writer's hands was overwritten", v)
					}
				}
			}
			if held[len(held)-1][0] != k.id[0] {
				t.Fatalf("version %d: entry %d came back as %d", v, k.id[0], held[len(held)-1][0])
			}
		}
		for _, h := range held {
			r.Done(h)
		}
		r.Close()
	}
	if src.reads != 150 || src.reused < 150-(readAheadEntries+4) {
		t.Fatalf("%d reads, %d into a reused buffer; want 150 and at least %d", src.reads, src.reused, 150-(readAheadEntries+4))
	}
}
