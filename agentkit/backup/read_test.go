package backup

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"vaultnode/internal/chunker"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
)

// TestSmallReaderMatchesChunker: a reader with a small-file buffer (the
// small-file readers) makes the same chunks as a chunking reader, for sizes
// around the minimum chunk, empty and sparse files, and falls back to
// chunking when a file is larger than its buffer.
func TestSmallReaderMatchesChunker(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(3, 4))
	var key [32]byte
	key[0] = 7
	gear, err := chunker.NewGear(key)
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{0, 1, 4096, chunker.MinSize - 1, chunker.MinSize, chunker.MinSize + 1, 3 * chunker.MinSize}
	for _, size := range sizes {
		p := filepath.Join(dir, "f")
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		chunks := func(bufSize int) []tree.ChunkRef {
			up := newUploader(nil, "", &Stats{})
			go func() {
				for c := range up.cand {
					up.done(c)
				}
			}()
			defer close(up.cand)
			r := &reader{gear: gear, hasher: keys.NewHasher(key), up: up, stats: &Stats{}, retries: 1, buf: make([]byte, bufSize)}
			fd, err := unix.Open(p, unix.O_RDONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			it := &item{fd: fd, done: make(chan struct{})}
			it.node.Path = []byte("f")
			if err := r.read(context.Background(), it); err != nil {
				t.Fatal(err)
			}
			if it.node.Status != tree.StatusOK || it.node.Size != int64(size) {
				t.Fatalf("size %d: node %+v", size, it.node)
			}
			return it.node.Chunks
		}
		small, big := chunks(chunker.MinSize+1), chunks(2*chunker.MaxSize)
		if !slices.Equal(small, big) {
			t.Errorf("size %d: small reader's chunks %v, chunker's %v", size, small, big)
		}
		var total int
		for _, c := range small {
			total += int(c.Len)
		}
		if total != size || (size == 0) != (len(small) == 0) {
			t.Errorf("size %d: chunks cover %d bytes in %d chunks", size, total, len(small))
		}
	}
}

// askedReader records the largest read asked of it.
type askedReader struct{ most int }

func (a *askedReader) Read(p []byte) (int, error) {
	a.most = max(a.most, len(p))
	return len(p), nil
}

// TestPiecesBoundEachRead: a large file is read readPiece bytes at a time
// however much room the chunker's buffer has, and its chunks are the ones
// of reads as large as that room.
func TestPiecesBoundEachRead(t *testing.T) {
	src := &askedReader{}
	if n, _ := (pieces{src}).Read(make([]byte, 2*chunker.MaxSize)); n != readPiece || src.most != readPiece {
		t.Fatalf("a read into %d bytes asked %d and gave %d, want %d", 2*chunker.MaxSize, src.most, n, readPiece)
	}

	var key [32]byte
	gear, err := chunker.NewGear(key)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	data := make([]byte, 3*chunker.MaxSize+12345)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	cut := func(r io.Reader) []int {
		c := chunker.New(gear, r, nil)
		var sizes []int
		for {
			b, err := c.Next()
			if err == io.EOF {
				return sizes
			}
			if err != nil {
				t.Fatal(err)
			}
			sizes = append(sizes, len(b))
		}
	}
	inPieces, whole := cut(pieces{bytes.NewReader(data)}), cut(bytes.NewReader(data))
	if !slices.Equal(inPieces, whole) || len(whole) < 3 {
		t.Fatalf("chunks read in pieces %v, in reads as large as the room %v", inPieces, whole)
	}
}
