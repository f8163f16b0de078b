package tape

import (
	"context"
	"sync"
)

// readAheadEntries bounds the entries read ahead of the tar writer: with
// the agents' chunks (1-8 MiB) at most a few tens of MiB wait in memory.
const readAheadEntries = 8

// An entryReader reads a version's entries from the store in the order
// the writer will ask for them, one goroutine ahead of it, so that the
// store's index lookups and reads overlap the tar framing and the drive's
// writes instead of alternating with them.
type entryReader struct {
	src    Source
	want   map[chunkKey]bool // keys read ahead
	ch     chan fetchedEntry
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type fetchedEntry struct {
	k   chunkKey
	e   []byte
	err error
}

// newEntryReader starts reading keys ahead; Close stops it.
func newEntryReader(ctx context.Context, src Source, keys []chunkKey) *entryReader {
	ctx, cancel := context.WithCancel(ctx)
	r := &entryReader{src: src, want: make(map[chunkKey]bool, len(keys)), ch: make(chan fetchedEntry, readAheadEntries), cancel: cancel}
	for _, k := range keys {
		r.want[k] = true
	}
	r.wg.Add(1)
	go func() { // owner: Close
		defer r.wg.Done()
		defer close(r.ch)
		for _, k := range keys {
			e, err := src.Entry(ctx, k.company, k.id)
			select {
			case r.ch <- fetchedEntry{k, e, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return r
}

// Entry returns k's entry: the next one read ahead, after dropping any the
// writer skipped, or read now when k was not asked for ahead.
func (r *entryReader) Entry(ctx context.Context, k chunkKey) ([]byte, error) {
	if r.want[k] {
		delete(r.want, k)
		for f := range r.ch {
			if f.k == k {
				return f.e, f.err
			}
			if f.err != nil { // the reader stopped at an entry skipped since
				break
			}
		}
	}
	return r.src.Entry(ctx, k.company, k.id)
}

// Close stops reading ahead and waits for the reader.
func (r *entryReader) Close() {
	r.cancel()
	for range r.ch {
	}
	r.wg.Wait()
}
