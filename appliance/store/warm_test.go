package store_test

import (
	"context"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"vaultnode/appliance/store"
	"vaultnode/appliance/store/storetest"
)

// readLog is a Packs whose readers record every ReadAt (pack, offset,
// length).
type readLog struct {
	*storetest.Mem
	mu    sync.Mutex
	reads []readAt
}

type readAt struct {
	pack   uint32
	off, n int64
}

func (l *readLog) Open(ctx context.Context, n uint32) (store.PackReader, error) {
	r, err := l.Mem.Open(ctx, n)
	if err != nil {
		return nil, err
	}
	return &loggedReader{PackReader: r, n: n, l: l}, nil
}

func (l *readLog) take() []readAt {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.reads
	l.reads = nil
	return r
}

type loggedReader struct {
	store.PackReader
	n uint32
	l *readLog
}

func (r *loggedReader) ReadAt(b []byte, off int64) (int, error) {
	r.l.mu.Lock()
	r.l.reads = append(r.l.reads, readAt{r.n, off, int64(len(b))})
	r.l.mu.Unlock()
	return r.PackReader.ReadAt(b, off)
}

// TestWarm: Warm reads every entry it is given, in pack order and
// neighbours together, skips ids the index lacks, stops at its byte limit
// and when its context is done, and returns no error for any of it.
func TestWarm(t *testing.T) {
	f := newFixture(t, t.TempDir())
	f.s.Close()
	log := &readLog{Mem: storetest.NewMem(1)}
	s, err := store.Open(f.dir, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), store.Options{Packs: log, Keys: f.keys})
	if err != nil {
		t.Fatal(err)
	}
	f.s = s
	var ids [][32]byte
	type span struct{ off, end int64 }
	want := map[[32]byte]bool{}
	for range 3 { // three commits, entries of 1-9 KiB each
		var batch []store.Entry
		for i := range 20 {
			_, e := f.chunk(1024 + 400*i)
			batch = append(batch, e)
			ids = append(ids, e.Header.ID)
			want[e.Header.ID] = true
		}
		if err := s.Put("acme", batch); err != nil {
			t.Fatal(err)
		}
	}
	_, absent := f.chunk(100)
	ids = append([][32]byte{absent.Header.ID}, ids...) // not stored: skipped
	log.take()
	if err := s.Warm(context.Background(), "acme", ids, 1<<30); err != nil {
		t.Fatalf("Warm: %v", err)
	}
	reads := log.take()
	if len(reads) == 0 || len(reads) >= len(want) {
		t.Fatalf("Warm made %d reads for %d neighbouring entries, want fewer reads than entries and at least one", len(reads), len(want))
	}
	for i := 1; i < len(reads); i++ {
		a, b := reads[i-1], reads[i]
		if a.pack > b.pack || a.pack == b.pack && a.off+a.n > b.off {
			t.Fatalf("reads %d and %d out of pack and offset order: %+v, %+v", i-1, i, a, b)
		}
	}
	// Every entry lies inside a read.
	for id := range want {
		loc, err := s.Lookup("acme", id)
		if err != nil {
			t.Fatal(err)
		}
		inside := false
		for _, r := range reads {
			if r.pack == loc.Pack && r.off <= int64(loc.Offset) && int64(loc.Offset)+int64(loc.BodyLen) <= r.off+r.n {
				inside = true
			}
		}
		if !inside {
			t.Fatalf("entry %x at %+v was not read ahead", id[:8], loc)
		}
	}
	// A limit below the whole: at most that many bytes.
	if err := s.Warm(context.Background(), "acme", ids, 20<<10); err != nil {
		t.Fatalf("Warm with a limit: %v", err)
	}
	var total int64
	for _, r := range log.take() {
		total += r.n
	}
	if total == 0 || total > 20<<10 {
		t.Fatalf("Warm with a limit of 20 KiB read %d bytes", total)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Warm(ctx, "acme", ids, 1<<30); err != nil {
		t.Fatalf("Warm, cancelled: %v", err)
	}
	if r := log.take(); len(r) != 0 {
		t.Fatalf("Warm with its context done read %d times", len(r))
	}
	if err := s.Warm(context.Background(), "nobody", ids, 1<<30); err != nil {
		t.Fatalf("Warm of a company without chunks: %v", err)
	}
}
