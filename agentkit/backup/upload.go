package backup

import (
	"context"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/semaphore"

	"vaultnode/internal/wire"
)

// chunk is a piece of content waiting to be sent.
type chunk struct {
	id   [32]byte
	kind uint8
	data []byte
}

// uploader sends each new chunk once: it asks the vault in batches which
// chunks it lacks, compresses those and uploads them in bodies of about
// batchBytes. Memory is bounded by budget.
type uploader struct {
	vault   Vault
	session string
	stats   *Stats

	mu   sync.Mutex
	seen map[[32]byte]struct{}

	budget *semaphore.Weighted
	cand   chan *chunk
	comp   chan *chunk
	bodies chan *body

	bmu sync.Mutex
	cur *body
}

type body struct {
	buf   []byte
	bytes int64 // budget held by the chunks of this body
	n     int
}

const (
	// senders is the number of uploads in flight: the vault syncs each
	// before answering, so several in flight keep its disk busy.
	senders     = 4
	budgetBytes = 48 << 20
	batchBytes  = 8 << 20
	lackBatch   = 256
)

func newUploader(v Vault, session string, stats *Stats) *uploader {
	return &uploader{vault: v, session: session, stats: stats, seen: map[[32]byte]struct{}{},
		budget: semaphore.NewWeighted(budgetBytes), cand: make(chan *chunk, lackBatch),
		comp: make(chan *chunk, 16), bodies: make(chan *body, 1)}
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
	c := &chunk{id: id, kind: kind, data: append([]byte(nil), data...)}
	select {
	case u.cand <- c:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lacker batches candidates into lack queries.
func (u *uploader) lacker(ctx context.Context) error {
	defer close(u.comp)
	batch := make([]*chunk, 0, lackBatch)
	ids := make([][32]byte, 0, lackBatch)
	for {
		c, ok := <-u.cand
		if !ok {
			return nil
		}
		batch = append(batch[:0], c)
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
		ids = ids[:0]
		for _, c := range batch {
			ids = append(ids, c.id)
		}
		lacks, err := u.vault.Lack(ctx, u.session, ids)
		if err != nil {
			return err
		}
		for i, c := range batch {
			if !lacks[i] {
				atomic.AddInt64(&u.stats.ChunksKnown, 1)
				u.budget.Release(int64(len(c.data)))
				continue
			}
			select {
			case u.comp <- c:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

// compressor compresses lacking chunks into upload bodies.
func (u *uploader) compressor(ctx context.Context) error {
	var scratch []byte
	for c := range u.comp {
		payload, flags := wire.Compress(scratch, c.data)
		f := wire.Frame{ID: c.id, Kind: c.kind, Flags: flags, PlainLen: uint32(len(c.data)), Payload: payload}
		u.bmu.Lock()
		if u.cur == nil {
			u.cur = &body{buf: make([]byte, 0, batchBytes+batchBytes/4)}
		}
		u.cur.buf = wire.AppendFrame(u.cur.buf, &f)
		u.cur.bytes += int64(len(c.data))
		u.cur.n++
		var full *body
		if len(u.cur.buf) >= batchBytes {
			full, u.cur = u.cur, nil
		}
		u.bmu.Unlock()
		if flags != 0 {
			scratch = payload
		}
		c.data = nil
		if full != nil {
			select {
			case u.bodies <- full:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return nil
}

// flush hands the last partial body over; call after every compressor ended.
func (u *uploader) flush(ctx context.Context) error {
	defer close(u.bodies)
	u.bmu.Lock()
	last := u.cur
	u.cur = nil
	u.bmu.Unlock()
	if last == nil {
		return nil
	}
	select {
	case u.bodies <- last:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sender posts bodies.
func (u *uploader) sender(ctx context.Context) error {
	for b := range u.bodies {
		if err := u.vault.Upload(ctx, u.session, b.buf); err != nil {
			return err
		}
		atomic.AddInt64(&u.stats.ChunksSent, int64(b.n))
		atomic.AddInt64(&u.stats.BytesSent, int64(len(b.buf)))
		u.budget.Release(b.bytes)
	}
	return nil
}
