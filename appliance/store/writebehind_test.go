package store_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"vaultnode/appliance/store"
	"vaultnode/internal/pack"
)

// behindPacks are disk packs whose writers record what they were asked to
// write behind, and how far the pack was written at that moment.
type behindPacks struct {
	store.Packs
	mu     sync.Mutex
	ranges [][3]int64 // off, n, bytes written so far
}

type behindWriter struct {
	store.PackWriter
	p   *behindPacks
	end int64
}

func (p *behindPacks) Create(ctx context.Context, n uint32, company string) (store.PackWriter, error) {
	w, err := p.Packs.Create(ctx, n, company)
	if err != nil {
		return nil, err
	}
	size, err := w.Size()
	return &behindWriter{PackWriter: w, p: p, end: size}, err
}

func (w *behindWriter) WriteAt(b []byte, off int64) (int, error) {
	n, err := w.PackWriter.WriteAt(b, off)
	w.end = max(w.end, off+int64(n))
	return n, err
}

func (w *behindWriter) WriteBehind(off, n int64) {
	w.p.mu.Lock()
	w.p.ranges = append(w.p.ranges, [3]int64{off, n, w.end})
	w.p.mu.Unlock()
	w.PackWriter.(store.WriteBehinder).WriteBehind(off, n)
}

// TestWriteBehind: an upload's appender starts the writeback of what it
// wrote as it goes, in order, never past what it wrote, so its Commit's
// sync finds at most a few MiB left to write.
func TestWriteBehind(t *testing.T) {
	f := newFixture(t, t.TempDir())
	f.s.Close()
	disk, err := store.NewDiskPacks(filepath.Join(f.dir, "behind"))
	if err != nil {
		t.Fatal(err)
	}
	bp := &behindPacks{Packs: disk}
	s, err := store.Open(f.dir, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), store.Options{Packs: bp, Keys: f.keys})
	if err != nil {
		t.Fatal(err)
	}
	f.s = s
	a, err := s.Append("acme")
	if err != nil {
		t.Fatal(err)
	}
	var plains [][]byte
	var entries []store.Entry
	total := int64(pack.FileHeaderSize)
	for range 9 {
		p, e := f.chunk(3 << 20)
		plains, entries = append(plains, p), append(entries, e)
		if err := a.Add(e.Header, e.Data); err != nil {
			t.Fatal(err)
		}
		total += int64(len(e.Data))
		for i := range 40 { // small entries, gathered before they are written
			p, e := f.chunk(1000 + i)
			plains, entries = append(plains, p), append(entries, e)
			if err := a.Add(e.Header, e.Data); err != nil {
				t.Fatal(err)
			}
			total += int64(len(e.Data))
		}
	}
	if err := a.Commit(); err != nil {
		t.Fatal(err)
	}
	next := int64(pack.FileHeaderSize)
	for _, r := range bp.ranges {
		if r[0] != next || r[1] < 8<<20 || r[0]+r[1] > r[2] {
			t.Fatalf("write-behind ranges %v: want contiguous from %d, at least 8 MiB each, within what was written", bp.ranges, pack.FileHeaderSize)
		}
		next = r[0] + r[1]
	}
	if total-next > 8<<20 {
		t.Fatalf("write-behind covered %d of %d bytes appended: more than 8 MiB left to the sync (ranges %v)", next, total, bp.ranges)
	}
	for i, e := range entries {
		f.mustGet("acme", e, plains[i])
	}
}
