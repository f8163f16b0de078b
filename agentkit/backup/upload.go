package backup

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"vaultnode/internal/wire"
)

// chunk is a piece of content waiting to be sent.
type chunk struct {
	id   [32]byte
	kind uint8
	data []byte // plain content, a copy
	// After compression: the frame's payload (data itself when zstd saved
	// nothing, else a pooled buffer) and its flags.
	payload []byte
	flags   uint8
	plain   uint32 // length of the plain content
	held    int64  // budget held
	slot    span   // where data (and then payload) lies
}

// uploader sends each new chunk once: it asks the vault in batches which
// chunks it lacks, compresses those and streams them to the vault in
// upload requests of up to requestBytes. Memory is bounded by budget: every
// byte of chunk content the uploader holds, from the reader's copy to the
// moment its frame is on the wire, is in it. The copies lie in the arena's
// ring (arenaBytes) when it has room, else on the heap.
type uploader struct {
	vault   Vault
	session string
	stats   *Stats

	mu   sync.Mutex
	seen map[[32]byte]struct{}

	// handed counts the bytes every upload body handed over; endMu
	// guards nextEnd, where the next request to start ends (endAt).
	handed  atomic.Int64
	endMu   sync.Mutex
	nextEnd int64

	budget *semaphore.Weighted
	arena  *arena
	cand   chan *chunk
	comp   chan *chunk
	frames chan *chunk
}

const (
	// senders is the number of uploads in flight: the vault syncs each
	// before answering, so several in flight keep its disk busy.
	senders = 2
	// budgetBytes bounds the chunk content the pipeline holds. 32 MiB
	// (item 21 of docs/performance.md) was no faster than 16 on a quiet
	// machine, and every byte of it is a page touched once more: 16 MiB
	// took the agent's peak RSS in an initial backup from 95-104 MB to
	// 70-78 MB ("Page faults: first touches, not churn").
	budgetBytes = 16 << 20
	// arenaBytes is the ring the copies are taken from: twice the budget,
	// so that a few copies held up (a lack query's answer, a frame the
	// vault is slow to take) leave room for the others.
	arenaBytes = 2 * budgetBytes
	// requestBytes ends an upload request: the vault acknowledges (syncs)
	// what it holds at the end of each, and the request's stream sends
	// nothing while it waits for that answer. A request ends at its first
	// frame past requestBytes, so it stays under wire.MaxUploadBody by
	// more than a largest frame (wire.MaxPlain). Larger requests wait
	// less often, but in a pair a leader's death loses what its
	// unanswered requests carried: all of it is sent again
	// (TestPairFailover failed with 48 MiB).
	requestBytes = 16 << 20
	// maxRequest ends a request whatever endAt says.
	maxRequest = 2 * requestBytes
	lackBatch  = 256
	// lackQueries is how many lack queries may wait for their answers at
	// once.
	lackQueries = 4
)

// A request's body stays within the vault's limit: this does not compile
// otherwise.
const _ = uint(wire.MaxUploadBody - maxRequest - wire.MaxPlain - wire.FrameHeaderSize)

func newUploader(v Vault, session string, stats *Stats) *uploader {
	return &uploader{vault: v, session: session, stats: stats, seen: map[[32]byte]struct{}{}, nextEnd: requestBytes / 2,
		budget: semaphore.NewWeighted(budgetBytes), arena: newArena(arenaBytes), cand: make(chan *chunk, lackBatch),
		comp: make(chan *chunk, 16), frames: make(chan *chunk, 16)}
}

// add offers a chunk; data is copied. It blocks while the budget is spent.
func (u *uploader) add(ctx context.Context, kind uint8, id [32]byte, data []byte) error {
	u.mu.Lock()
	if _, ok := u.seen[id]; ok {
		u.mu.Unlock()
		return nil
	}
	u.seen[id] = struct{}{}
	u.mu.Unlock()
	if err := u.budget.Acquire(ctx, int64(len(data))); err != nil {
		return err
	}
	c := &chunk{id: id, kind: kind, plain: uint32(len(data)), held: int64(len(data))}
	c.data = u.arena.take(&c.slot, len(data))
	copy(c.data, data)
	select {
	case u.cand <- c:
		return nil
	case <-ctx.Done():
		u.done(c)
		return ctx.Err()
	}
}

// done drops c's buffers and gives its budget back.
func (u *uploader) done(c *chunk) {
	c.data, c.payload = nil, nil
	u.arena.give(&c.slot)
	u.budget.Release(c.held)
}

// lacker batches candidates into lack queries, up to lackQueries of them
// in flight: one at a time, the chunks of a batch waited in the budget for
// its answer while the readers, out of budget, waited for them
// (docs/performance.md, "Lack queries in flight").
func (u *uploader) lacker(ctx context.Context) error {
	defer close(u.comp)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(lackQueries)
	for {
		c, ok := <-u.cand
		if !ok {
			break
		}
		batch := make([]*chunk, 1, lackBatch)
		batch[0] = c
		size := len(c.data)
	fill:
		for len(batch) < lackBatch && size < 32<<20 {
			select {
			case c, ok := <-u.cand:
				if !ok {
					break fill
				}
				batch = append(batch, c)
				size += len(c.data)
			default:
				break fill
			}
		}
		if gctx.Err() != nil {
			for _, c := range batch {
				u.done(c)
			}
			break
		}
		g.Go(func() error { return u.lack(gctx, batch) })
	}
	return g.Wait()
}

// lack asks the vault which chunks of batch it lacks and passes those on
// to the compressors; it gives back the budget of the others.
func (u *uploader) lack(ctx context.Context, batch []*chunk) error {
	ids := make([][32]byte, len(batch))
	for i, c := range batch {
		ids[i] = c.id
	}
	lacks, err := u.vault.Lack(ctx, u.session, ids)
	if err != nil {
		for _, c := range batch {
			u.done(c)
		}
		return err
	}
	for i, c := range batch {
		if !lacks[i] {
			atomic.AddInt64(&u.stats.ChunksKnown, 1)
			u.done(c)
			continue
		}
		select {
		case u.comp <- c:
		case <-ctx.Done():
			for _, c := range batch[i:] {
				u.done(c)
			}
			return ctx.Err()
		}
	}
	return nil
}

// compressor compresses lacking chunks. The compressed payload is smaller
// than the plain copy, over whose front it is copied.
func (u *uploader) compressor(ctx context.Context) error {
	// scratch receives each payload before it is copied over its plain
	// copy. It is as long as the longest chunk yet: a zstd frame is
	// appended to it piece by piece, and a small chunk's S2 block, made in
	// a buffer of its own when scratch was shorter, would otherwise have
	// replaced it, so that a file tree mixing small and large files grew
	// it again for every large chunk.
	var scratch []byte
	for c := range u.comp {
		if cap(scratch) < len(c.data) {
			scratch = make([]byte, 0, len(c.data))
		}
		payload, flags := wire.Compress(scratch, c.data)
		if flags != 0 {
			c.payload, c.flags, c.data = c.data[:copy(c.data, payload)], flags, nil
			if cap(payload) > cap(scratch) {
				scratch = payload
			}
		} else {
			c.payload = c.data
		}
		select {
		case u.frames <- c:
		case <-ctx.Done():
			u.done(c)
			return ctx.Err()
		}
	}
	return nil
}

// sender streams frames to the vault, one upload request after another,
// until the compressors are done (frames closed).
func (u *uploader) sender(ctx context.Context) error {
	for {
		var first *chunk
		select {
		case c, ok := <-u.frames:
			if !ok {
				return nil
			}
			first = c
		case <-ctx.Done():
			return ctx.Err()
		}
		body := &frameBody{u: u, ctx: ctx, next: first, endAt: u.endAt()}
		err := u.vault.Upload(ctx, u.session, body)
		chunks, bytes := body.Close()
		if err != nil {
			return err
		}
		atomic.AddInt64(&u.stats.ChunksSent, chunks)
		atomic.AddInt64(&u.stats.BytesSent, bytes)
	}
}

// endAt returns where a request starting now ends: when all bodies have
// handed over that many bytes. The senders share the frames, so requests
// ended by their own size started and ended together, and while both
// waited for the vault's answer (its sync) nothing was sent
// (docs/performance.md, "Upload requests out of step"). Ends spaced by
// requestBytes of all bodies' bytes alternate between the senders, and a
// request carries about requestBytes; the first ends after half of it.
func (u *uploader) endAt() int64 {
	u.endMu.Lock()
	defer u.endMu.Unlock()
	e := max(u.nextEnd, u.handed.Load()+requestBytes/2)
	u.nextEnd = e + requestBytes
	return e
}

// requestIdle ends an upload request when no frame has come for this long,
// so that what was sent is acknowledged instead of waiting for more.
const requestIdle = 250 * time.Millisecond

// frameBody is an upload request's body: frames taken from u.frames as the
// connection takes bytes, written from their own buffers, until endAt (or
// maxRequest), the end of the frames, or requestIdle without one.
type frameBody struct {
	u      *uploader
	ctx    context.Context
	mu     sync.Mutex // Read against Close after an early answer
	closed bool
	endAt  int64  // u.handed after which no frame is started
	next   *chunk // frame to start when cur is written
	cur    *chunk
	hdr    [wire.FrameHeaderSize]byte
	off    int // bytes of cur's header and payload written
	bytes  int64
	chunks int64
	timer  *time.Timer
}

// take returns the next frame of this request, or nil to end it.
func (b *frameBody) take(wait bool) *chunk {
	if b.next != nil {
		c := b.next
		b.next = nil
		return c
	}
	if b.bytes >= maxRequest || b.bytes > 0 && b.u.handed.Load() >= b.endAt {
		return nil
	}
	select {
	case c := <-b.u.frames:
		return c
	default:
	}
	if !wait {
		return nil
	}
	if b.timer == nil {
		b.timer = time.NewTimer(requestIdle)
	} else {
		b.timer.Reset(requestIdle)
	}
	select {
	case c := <-b.u.frames: // nil once closed
		return c
	case <-b.timer.C:
	case <-b.ctx.Done():
	}
	return nil
}

func (b *frameBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) {
		if b.cur == nil {
			// Wait for a frame only when nothing is ready to hand over.
			if b.cur = b.take(n == 0); b.cur == nil {
				if n > 0 {
					return n, nil
				}
				return 0, io.EOF
			}
			b.hdr = wire.FrameHeader(&wire.Frame{ID: b.cur.id, Kind: b.cur.kind, Flags: b.cur.flags, PlainLen: b.cur.plain, Payload: b.cur.payload})
			b.off = 0
		}
		if b.off < len(b.hdr) {
			k := copy(p[n:], b.hdr[b.off:])
			n, b.off = n+k, b.off+k
		}
		if b.off >= len(b.hdr) {
			k := copy(p[n:], b.cur.payload[b.off-len(b.hdr):])
			n, b.off = n+k, b.off+k
		}
		if b.off == len(b.hdr)+len(b.cur.payload) {
			b.bytes += int64(b.off)
			b.u.handed.Add(int64(b.off))
			b.chunks++
			b.u.done(b.cur)
			b.cur = nil
		}
	}
	return n, nil
}

// Close ends the body, gives back what it still held and returns the
// chunks and bytes it handed over.
func (b *frameBody) Close() (int64, int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for _, c := range []*chunk{b.cur, b.next} {
		if c != nil {
			b.u.done(c)
		}
	}
	b.cur, b.next = nil, nil
	if b.timer != nil {
		b.timer.Stop()
	}
	return b.chunks, b.bytes
}
