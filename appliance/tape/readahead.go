package tape

import (
	"context"
	"sync"
)

// readAheadEntries bounds the entries read ahead of the tar writer: with
// the agents' chunks (1-8 MiB) at most a few tens of MiB wait in memory.
const readAheadEntries = 8

// entryBuffers keeps the buffers of entries the writer is done with, for
// the next reads: the job reads every chunk into one of a few buffers
// instead of allocating (and zeroing, and collecting) one per chunk, which
// in the appliance's profile of the job was most of its processor time
// (docs/tape.md). It holds at most cap(ch) buffers, the working set (the
// entries queued ahead, the one being read, the writer's and one being
// dropped); more are left to the collector. Safe for concurrent use.
type entryBuffers struct{ ch chan []byte }

func newEntryBuffers() *entryBuffers {
	return &entryBuffers{ch: make(chan []byte, readAheadEntries+4)}
}

// get returns a free buffer, or nil (the source then allocates).
func (b *entryBuffers) get() []byte {
	if b == nil {
		return nil
	}
	select {
	case p := <-b.ch:
		return p
	default:
		return nil
	}
}

// put gives back a buffer no one uses any more.
func (b *entryBuffers) put(p []byte) {
	if b == nil || cap(p) == 0 {
		return
	}
	select {
	case b.ch <- p[:0]:
	default:
	}
}

// An entryReader reads a version's entries from the store in the order
// the writer will ask for them, one goroutine ahead of it, so that the
// store's index lookups and reads overlap the tar framing and the drive's
// writes instead of alternating with them.
type entryReader struct {
	src    Source
	bufs   *entryBuffers
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

// newEntryReader starts reading keys ahead into buffers from bufs (nil:
// allocated per entry); Close stops it.
func newEntryReader(ctx context.Context, src Source, bufs *entryBuffers, keys []chunkKey) *entryReader {
	ctx, cancel := context.WithCancel(ctx)
	r := &entryReader{src: src, bufs: bufs, want: make(map[chunkKey]bool, len(keys)), ch: make(chan fetchedEntry, readAheadEntries), cancel: cancel}
	for _, k := range keys {
		r.want[k] = true
	}
	r.wg.Add(1)
	go func() { // owner: Close
		defer r.wg.Done()
		defer close(r.ch)
		for _, k := range keys {
			e, err := src.Entry(ctx, k.company, k.id, bufs.get())
			select {
			case r.ch <- fetchedEntry{k, e, err}:
			case <-ctx.Done():
				bufs.put(e)
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
// writer skipped, or read now when k was not asked for ahead. The writer
// gives its buffer back with Done once it no longer needs it.
func (r *entryReader) Entry(ctx context.Context, k chunkKey) ([]byte, error) {
	if r.want[k] {
		delete(r.want, k)
		for f := range r.ch {
			if f.k == k {
				return f.e, f.err
			}
			r.bufs.put(f.e)
			if f.err != nil { // the reader stopped at an entry skipped since
				break
			}
		}
	}
	return r.src.Entry(ctx, k.company, k.id, r.bufs.get())
}

// Done gives back the memory of an entry Entry returned, for the next
// reads: e must not be used after.
func (r *entryReader) Done(e []byte) { r.bufs.put(e) }

// Close stops reading ahead and waits for the reader.
func (r *entryReader) Close() {
	r.cancel()
	for f := range r.ch {
		r.bufs.put(f.e)
	}
	r.wg.Wait()
}
