package restore

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"vaultnode/internal/chunker"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
)

// Chunks of zeros are allocated, not written. A file's zero-filled regions
// (a preallocated database file, the empty space of a raw disk image) keep
// their blocks, as the backup recorded them, but through fallocate: no page
// cache is filled and nothing is written to the disk, and the blocks read
// as zeros like the ones written would. (Holes, which the backup recorded
// as holes, stay holes.)
//
// The chunker cuts a run of zeros into chunks of whole chunker.ZeroUnit
// units (at most chunker.MaxSize): the restore computes the id of each such
// length itself, once, and those chunks are never downloaded. A chunk of
// zeros of any other length (cut before that rule, or a file's last chunk)
// is known as such once downloaded, and its later places are allocated too.
type zeroChunks struct {
	key  [32]byte
	mu   sync.Mutex
	unit [chunker.MaxSize / chunker.ZeroUnit]*keys.ID // by length in units, less one

	any  atomic.Bool           // seen holds an id
	seen map[[32]byte]struct{} // other chunks downloaded and found zeros
}

// zeroSeenMax bounds zeroChunks.seen: a zero chunk of each length is
// possible, but only a file's last chunk has a length of its own.
const zeroSeenMax = 4096

// is reports whether c is known to hold zeros only.
func (z *zeroChunks) is(c tree.ChunkRef) bool {
	if c.Len > 0 && c.Len%chunker.ZeroUnit == 0 && c.Len <= chunker.MaxSize {
		// A data chunk of such a length is rare (one in 65,536 of the
		// lengths the rolling hash cuts, and largest chunks): each length's
		// id is hashed once per restore, at most 64 of them.
		if c.ID == z.unitID(int(c.Len)) {
			return true
		}
	}
	if !z.any.Load() {
		return false
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	_, ok := z.seen[c.ID]
	return ok
}

// unitID is the id of n zeros, n a whole number of chunker.ZeroUnit.
func (z *zeroChunks) unitID(n int) keys.ID {
	z.mu.Lock()
	defer z.mu.Unlock()
	p := &z.unit[n/chunker.ZeroUnit-1]
	if *p == nil {
		h := keys.NewHasher(z.key) // over zeroBuf: no 4 MiB of fresh pages
		for left := n; left > 0; left -= min(left, len(zeroBuf)) {
			h.Write(zeroBuf[:min(left, len(zeroBuf))])
		}
		id := h.ID()
		*p = &id
	}
	return **p
}

// found records that chunk id, checked against its id, is zeros.
func (z *zeroChunks) found(id [32]byte) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.seen == nil {
		z.seen = map[[32]byte]struct{}{}
	}
	if len(z.seen) < zeroSeenMax {
		z.seen[id] = struct{}{}
		z.any.Store(true)
	}
}

// zeroPieceMin is the least run of zeros in downloaded content that is
// allocated rather than written: below a block, allocating saves nothing.
const zeroPieceMin = 4 << 10

// zeroBuf is written where a filesystem cannot allocate.
var zeroBuf [1 << 20]byte

// allocate makes [off, off+n) of a file this restore created read as
// zeros, giving it blocks without writing them; where the filesystem
// cannot (no fallocate), it writes zeros.
func allocate(fd int, off, n int64) error { return fallocateOrZero(fd, 0, off, n) }

// clearRange makes n bytes at off of the file fd read as zeros, holding no
// blocks where the filesystem can punch a hole, written with zeros where
// it cannot.
func clearRange(fd int, off, n int64) error {
	return fallocateOrZero(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// fallocateOrZero is fallocate(2) with mode, or zeros written over the
// range where the filesystem does not support it.
func fallocateOrZero(fd int, mode uint32, off, n int64) error {
	for {
		err := unix.Fallocate(fd, mode, off, n)
		switch err {
		case nil:
			return nil
		case unix.EINTR:
			continue
		case unix.EOPNOTSUPP, unix.ENOSYS:
		default:
			return err
		}
		break
	}
	for n > 0 {
		k := min(n, int64(len(zeroBuf)))
		if err := pwriteAll(fd, zeroBuf[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// allocateLike allocates as many bytes as p holds (zeros) at off.
func allocateLike(fd int, p []byte, off int64) error { return allocate(fd, off, int64(len(p))) }
