package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"vaultnode/internal/atomicfile"
	"vaultnode/internal/pack"
)

// Error classes of a Packs implementation, matched with errors.Is.
var (
	ErrPackNotFound = errors.New("pack not found")
	ErrPackExists   = errors.New("pack already exists")
	// ErrNoSpace (above) is the third: the medium is full.
)

// Packs is where a store's pack files live, by number: the local data
// disk now (DiskPacks), a tape tier's staging area or a replica later. The
// store is its only user and declares it here; storetest.Run is the
// conformance suite every implementation passes.
//
// Contracts:
//   - Every method takes a context first and fails with ctx.Err() once it
//     is done, before changing anything.
//   - Create makes pack n holding only its 32-byte file header (naming
//     company and n), durable, its name included, when it returns;
//     ErrPackExists if pack n exists (whatever its content); nothing is
//     created for an invalid company id.
//   - Bytes written through a PackWriter are durable once Sync returns nil.
//     A crash may lose any suffix of the bytes written since the last Sync,
//     never bytes before it; a pack never has holes.
//   - Truncate cuts a pack to a size, durably once Sync returns.
//   - Open reads a pack as it is when read: bytes synced by a writer are
//     visible to a reader opened before or after.
//   - List reports every pack once, in any order, with its size; a pack
//     created or removed meanwhile may or may not be reported.
//   - Remove deletes a pack durably; ErrPackNotFound if there is none.
//     Open, OpenWriter and Remove of a missing pack fail with
//     ErrPackNotFound; a full medium fails with ErrNoSpace.
type Packs interface {
	Create(ctx context.Context, n uint32, company string) (PackWriter, error)
	// OpenWriter opens an existing pack to append to or cut it.
	OpenWriter(ctx context.Context, n uint32) (PackWriter, error)
	Open(ctx context.Context, n uint32) (PackReader, error)
	List(ctx context.Context, fn func(n uint32, size int64) error) error
	Remove(ctx context.Context, n uint32) error
	// Name says where pack n lives, for messages (a file path on disk).
	Name(n uint32) string
}

// PackReader reads one pack.
type PackReader interface {
	io.ReaderAt
	Size() (int64, error)
	Close() error
}

// PackWriter appends to or cuts one pack; it reads too.
type PackWriter interface {
	PackReader
	WriteAt(b []byte, off int64) (int, error)
	Sync(ctx context.Context) error
	Truncate(ctx context.Context, size int64) error
}

// DiskPacks keeps packs as files DIR/NNN/NNNNNNNN.pack (hex; 256 per
// directory), written with pwrite and made durable with fdatasync.
type DiskPacks struct{ dir string }

// NewDiskPacks keeps packs under dir, which is made if missing.
func NewDiskPacks(dir string) (*DiskPacks, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("make pack directory: %w", classify(err))
	}
	return &DiskPacks{dir: dir}, nil
}

// Name is pack n's file.
func (d *DiskPacks) Name(n uint32) string {
	return filepath.Join(d.dir, fmt.Sprintf("%03x", n>>8), fmt.Sprintf("%08x.pack", n))
}

func packErr(verb string, n uint32, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		err = fmt.Errorf("%w: %w", ErrPackNotFound, err)
	case errors.Is(err, fs.ErrExist):
		err = fmt.Errorf("%w: %w", ErrPackExists, err)
	}
	return classify(fmt.Errorf("%s pack %08x: %w", verb, n, err))
}

// Create makes pack n with its header, durably.
func (d *DiskPacks) Create(ctx context.Context, n uint32, company string) (PackWriter, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	hdr, err := pack.FileHeader{Company: company, Number: n}.Marshal()
	if err != nil {
		return nil, fmt.Errorf("create pack %08x: %w", n, err)
	}
	p := d.Name(n)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, packErr("create", n, err)
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, packErr("create", n, err)
	}
	_, err = f.Write(hdr)
	if err == nil {
		err = syscall.Fdatasync(int(f.Fd()))
	}
	if err == nil {
		// The new file's name must be durable before the index names it:
		// fdatasync covers its data, not its directory entries.
		err = errors.Join(atomicfile.SyncDir(filepath.Dir(p)), atomicfile.SyncDir(d.dir))
	}
	if err != nil {
		f.Close()
		os.Remove(p)
		return nil, packErr("create", n, err)
	}
	return diskPack{File: f}, nil
}

// OpenWriter opens pack n for writing.
func (d *DiskPacks) OpenWriter(ctx context.Context, n uint32) (PackWriter, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(d.Name(n), os.O_RDWR, 0)
	if err != nil {
		return nil, packErr("open", n, err)
	}
	return diskPack{File: f}, nil
}

// Open opens pack n for reading.
func (d *DiskPacks) Open(ctx context.Context, n uint32) (PackReader, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(d.Name(n))
	if err != nil {
		return nil, packErr("open", n, err)
	}
	return diskPack{File: f, direct: &directFile{path: d.Name(n)}}, nil
}

// List walks the pack files; files that are not packs, or packs in
// another's directory, are left out.
func (d *DiskPacks) List(ctx context.Context, fn func(n uint32, size int64) error) error {
	err := filepath.WalkDir(d.dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		n, ok := parsePackName(e.Name())
		if !ok || p != d.Name(n) {
			return nil
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed meanwhile
		}
		if err != nil {
			return err
		}
		return fn(n, fi.Size())
	})
	if err != nil {
		return fmt.Errorf("list packs: %w", err)
	}
	return nil
}

// Remove deletes pack n durably.
func (d *DiskPacks) Remove(ctx context.Context, n uint32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p := d.Name(n)
	if err := os.Remove(p); err != nil {
		return packErr("remove", n, err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(p)); err != nil {
		return packErr("remove", n, err)
	}
	return nil
}

// diskPack is a pack file; direct, for a reader, its O_DIRECT twin
// (coldread.go).
type diskPack struct {
	*os.File
	direct *directFile
}

// Close closes the file and its twin.
func (p diskPack) Close() error {
	err := p.File.Close()
	if p.direct != nil {
		if derr := p.direct.close(); err == nil {
			err = derr
		}
	}
	return err
}

func (p diskPack) Size() (int64, error) {
	fi, err := p.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (p diskPack) WriteAt(b []byte, off int64) (int, error) {
	n, err := p.File.WriteAt(b, off)
	return n, classify(err)
}

// WriteBehind starts writing n bytes at off to the disk without waiting
// (sync_file_range SYNC_FILE_RANGE_WRITE), so that the Sync that makes
// them durable finds less left to write. A hint: an error shows in Sync.
func (p diskPack) WriteBehind(off, n int64) {
	_ = unix.SyncFileRange(int(p.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// DropCached drops the cached pages of [off, off+n) that are clean (a
// hint: pages still dirty, and the partly written last one, stay).
func (p diskPack) DropCached(off, n int64) {
	_ = unix.Fadvise(int(p.Fd()), off, n, unix.FADV_DONTNEED)
}

func (p diskPack) Sync(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return classify(syscall.Fdatasync(int(p.Fd())))
}

func (p diskPack) Truncate(ctx context.Context, size int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return classify(p.File.Truncate(size))
}
