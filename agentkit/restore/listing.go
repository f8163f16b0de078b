// Package restore brings versions back: it reads a version's listing from
// the vault and recreates files, directories, links and special files with
// their metadata, checking every chunk on the way.
package restore

import (
	"context"
	"fmt"
	"io"
	"sync"

	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// Source is what restore needs of the vault.
type Source interface {
	GetChunks(ctx context.Context, ids [][32]byte, fn func(f *wire.Frame) error) error
}

// ChunkError says why one chunk could not be used.
type ChunkError struct {
	ID     [32]byte
	Reason string
}

func (e *ChunkError) Error() string { return fmt.Sprintf("chunk %x: %s", e.ID[:8], e.Reason) }

// The faults a downloaded chunk can have, each worded once.
func errDamaged(id [32]byte) error { return &ChunkError{id, "content does not match its id (damaged)"} }
func errMissing(id [32]byte) error { return &ChunkError{id, "missing from the vault"} }
func errVault(id [32]byte, msg []byte) error {
	return &ChunkError{id, "damaged on the vault: " + string(msg)}
}
func errSubstituted(want, got [32]byte) error {
	return &ChunkError{want, fmt.Sprintf("the vault answered chunk %x in its place", got[:8])}
}
func errLength(id [32]byte, got, want uint32) error {
	return &ChunkError{id, fmt.Sprintf("holds %d bytes, the listing says %d", got, want)}
}

// verify turns a downloaded frame into checked plaintext appended to dst.
func verify(h *keys.Hasher, f *wire.Frame, dst []byte) ([]byte, error) {
	switch f.Kind {
	case wire.StatusOK:
	case wire.StatusMissing:
		return nil, errMissing(f.ID)
	default:
		return nil, errVault(f.ID, f.Payload)
	}
	out, err := wire.Decompress(dst, f.Flags, f.Payload, f.PlainLen)
	if err != nil {
		return nil, &ChunkError{f.ID, err.Error()}
	}
	if h.Sum(out[len(dst):]) != f.ID {
		return nil, errDamaged(f.ID)
	}
	return out, nil
}

// OpenListing streams and decodes a version's listing.
func OpenListing(ctx context.Context, src Source, chunkKey [32]byte, refs []tree.ChunkRef) (*tree.Reader, func(), error) {
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	go func() {
		h := keys.NewHasher(chunkKey)
		var buf []byte
		for i := 0; i < len(refs); i += 16 {
			ids := idsOf(refs[i:min(i+16, len(refs))])
			k := 0
			err := src.GetChunks(ctx, ids, func(f *wire.Frame) error {
				if k >= len(ids) || f.ID != ids[k] {
					return fmt.Errorf("listing: the vault answered chunk %x out of place", f.ID[:8])
				}
				k++
				var err error
				buf, err = verify(h, f, buf[:0])
				if err != nil {
					return fmt.Errorf("listing %w", err)
				}
				_, err = pw.Write(buf)
				return err
			})
			if err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.Close()
	}()
	rd, err := tree.NewListingReader(pr, refs)
	stop := func() { cancel(); pr.Close() }
	if err != nil {
		stop()
		return nil, nil, err
	}
	return rd, stop, nil
}

func idsOf(refs []tree.ChunkRef) [][32]byte {
	ids := make([][32]byte, len(refs))
	for i, r := range refs {
		ids[i] = r.ID
	}
	return ids
}

// OpenContent returns a reader of a file node's content as its chunks hold
// it (the data extents concatenated for a sparse file), every chunk checked.
func OpenContent(ctx context.Context, src Source, chunkKey [32]byte, n *tree.Node) io.ReadCloser {
	return io.NopCloser(&chunkReader{ctx: ctx, src: src, key: chunkKey, refs: n.Chunks})
}

// chunkReader streams a file's chunks, prefetching one batch ahead.
type chunkReader struct {
	ctx   context.Context
	src   Source
	key   [32]byte
	refs  []tree.ChunkRef
	cur   [][]byte // checked chunks of the batch being read, what is left of each
	whole [][]byte // the same chunks whole, to give back to the pool
	next  chan batchResult
}

// Chunk buffers are pooled by power-of-two size: a restore would otherwise
// allocate (and the runtime zero) every byte it writes.
var bufPools [24]sync.Pool

func poolClass(n int) int {
	c := 16 // 64 KiB at least
	for 1<<c < n {
		c++
	}
	return c
}

func getBuf(n int) []byte {
	c := poolClass(n)
	if c >= len(bufPools) {
		return make([]byte, 0, n)
	}
	if b, ok := bufPools[c].Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return make([]byte, 0, 1<<c)
}

func putBuf(b []byte) {
	c := poolClass(cap(b))
	if c < len(bufPools) && 1<<c == cap(b) {
		b = b[:0]
		bufPools[c].Put(&b)
	}
}

type batchResult struct {
	data [][]byte
	err  error
}

const batchChunks = 8

func (c *chunkReader) fetch(refs []tree.ChunkRef) chan batchResult {
	ch := make(chan batchResult, 1)
	go func() {
		h := keys.NewHasher(c.key)
		var res batchResult
		res.err = c.src.GetChunks(c.ctx, idsOf(refs), func(f *wire.Frame) error {
			k := len(res.data)
			if k >= len(refs) || f.ID != refs[k].ID {
				return &ChunkError{f.ID, "answered by the vault out of place"}
			}
			b, err := verify(h, f, getBuf(int(f.PlainLen)))
			if err != nil {
				return err
			}
			res.data = append(res.data, b)
			return nil
		})
		ch <- res
	}()
	return ch
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.cur) == 0 || len(c.cur[0]) == 0 {
		if len(c.cur) > 0 {
			putBuf(c.whole[0])
			c.cur, c.whole = c.cur[1:], c.whole[1:]
			continue
		}
		if c.next == nil {
			if len(c.refs) == 0 {
				return 0, io.EOF
			}
			k := min(batchChunks, len(c.refs))
			c.next = c.fetch(c.refs[:k])
			c.refs = c.refs[k:]
		}
		res := <-c.next
		c.next = nil
		if res.err != nil {
			return 0, res.err
		}
		if len(c.refs) > 0 { // prefetch the next batch while this one is written
			k := min(batchChunks, len(c.refs))
			c.next = c.fetch(c.refs[:k])
			c.refs = c.refs[k:]
		}
		c.cur = res.data
		c.whole = append(c.whole[:0], res.data...)
	}
	n := copy(p, c.cur[0])
	c.cur[0] = c.cur[0][n:]
	return n, nil
}
