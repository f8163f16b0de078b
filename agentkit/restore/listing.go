// Package restore brings versions back: it reads a version's listing from
// the vault and recreates files, directories, links and special files with
// their metadata, checking every chunk on the way.
package restore

import (
	"context"
	"fmt"
	"io"

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

// verify turns a downloaded frame into checked plaintext appended to dst.
func verify(h *keys.Hasher, f *wire.Frame, dst []byte) ([]byte, error) {
	switch f.Kind {
	case wire.StatusOK:
	case wire.StatusMissing:
		return nil, &ChunkError{f.ID, "missing from the vault"}
	default:
		return nil, &ChunkError{f.ID, "damaged on the vault: " + string(f.Payload)}
	}
	out, err := wire.Decompress(dst, f.Flags, f.Payload, f.PlainLen)
	if err != nil {
		return nil, &ChunkError{f.ID, err.Error()}
	}
	if h.Sum(out[len(dst):]) != f.ID {
		return nil, &ChunkError{f.ID, "content does not match its id (damaged)"}
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
			err := src.GetChunks(ctx, ids, func(f *wire.Frame) error {
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
	rd, err := tree.NewReader(pr)
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
	w := &fileWriter{r: &restorer{ctx: ctx, o: Options{Source: src, ChunkKey: chunkKey}, stats: &Stats{}}}
	return io.NopCloser(&chunkReader{ctx: ctx, w: w, refs: n.Chunks})
}
