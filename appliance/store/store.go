// Package store is the vault's chunk store: append-only pack files of sealed
// entries plus a bbolt index from chunk ID to location (docs/format.md).
//
// Durability contract: Put returns only after the entries are synced to their
// pack and the index transaction recording them has committed. The packs are
// the truth and the index a cache of them: Open never removes a pack and cuts
// one only at a torn entry at its tail (one that can never have been
// acknowledged); complete entries the index does not know, and whole packs it
// does not know, are scanned and indexed ("Recovery" in docs/format.md).
package store

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"go.etcd.io/bbolt"
	"go.uber.org/zap"

	"vaultnode/internal/pack"
)

// MaxPackSize is the size past which a pack is sealed and a new one started.
const MaxPackSize = 64 << 20

var (
	bucketPacks      = []byte("packs")
	bucketChunks     = []byte("chunks")
	bucketMeta       = []byte("meta")
	bucketQuarantine = []byte("quarantine") // quarantine/<company>: id -> Quarantine
	bucketHealed     = []byte("healed")     // healed/<company>: id -> unix seconds, until verify reports it
	keyNextPack      = []byte("next-pack")
)

// Errors of the store.
var (
	ErrNotFound = errors.New("chunk not found")
	ErrDamaged  = errors.New("stored chunk is damaged")
	ErrNoSpace  = errors.New("no space left on the vault's data disk")
	// ErrQuarantined is a chunk verify found damaged: it reads as damaged
	// and Has reports it absent until an agent sends it again.
	ErrQuarantined = fmt.Errorf("%w (quarantined until a backup that has it sends it again)", ErrDamaged)
	// ErrInUse is an index another process holds open.
	ErrInUse = errors.New("index is in use by another process")
)

// Location is where an entry lives.
type Location struct {
	Pack     uint32
	Offset   uint32
	BodyLen  uint32
	PlainLen uint32
	Kind     pack.Kind
	Flags    uint8
}

// End is the offset just past the entry (header and body) in its pack.
func (l Location) End() int64 { return int64(l.Offset) + pack.EntryHeaderSize + int64(l.BodyLen) }

// ComparePackOrder orders locations as they lie on the disk: by pack, then
// by offset (for slices.SortFunc: reads in that order go front to back).
func ComparePackOrder(a, b Location) int {
	if c := cmp.Compare(a.Pack, b.Pack); c != 0 {
		return c
	}
	return cmp.Compare(a.Offset, b.Offset)
}

// Store is a chunk store in one directory.
type Store struct {
	dir   string
	db    *bbolt.DB
	packs Packs
	log   *zap.Logger
	opts  Options

	// busy is held shared by each Appender from Append to Commit or Abort,
	// and exclusively by Rebuild.
	busy sync.RWMutex

	mu       sync.Mutex
	free     map[string][]*writer // open packs per company not in use
	writing  map[uint32]bool      // packs with a writer, free or in use
	usage    map[string]int64     // bytes of each company's packs (gc.go)
	nextPack uint32

	rmu     sync.Mutex
	readers map[uint32]*packFile

	// Index group commit (index.go): appenders waiting for the index and
	// whether one of them is committing.
	imu      sync.Mutex
	iqueue   []*indexCommit
	irunning bool
}

type writer struct {
	f       PackWriter
	number  uint32
	company string
	size    int64 // committed size
	fresh   bool  // no index record yet
}

func parsePackName(name string) (uint32, bool) {
	hex, ok := strings.CutSuffix(name, ".pack")
	if !ok || len(hex) != 8 {
		return 0, false
	}
	n, err := strconv.ParseUint(hex, 16, 32)
	return uint32(n), err == nil
}

// PackPath says where pack n lives (its file, on disk).
func (s *Store) PackPath(n uint32) string { return s.packs.Name(n) }

// Close closes the store.
func (s *Store) Close() error {
	s.mu.Lock()
	for _, ws := range s.free {
		for _, w := range ws {
			w.f.Close()
		}
	}
	s.free = nil
	s.mu.Unlock()
	s.rmu.Lock()
	for _, pf := range s.readers {
		pf.evicted = true
		if pf.refs == 0 {
			pf.Close()
		}
	}
	s.readers = nil
	s.rmu.Unlock()
	return s.db.Close()
}

// Has reports for each id whether the company's index holds it, good: a
// quarantined chunk or a malformed record reads as absent, so that an
// agent sends the chunk again.
//
// The ids are looked up in key order, whatever their order in ids: one
// cursor walks the index forward, stepping to the next keys when an id is
// close to the last one and seeking only past that, so a batch of ids
// visits each index leaf once, in order, instead of descending from the
// root for every id in random order (issue 16: a commit looks up every
// chunk of a version).
func (s *Store) Has(company string, ids [][32]byte) ([]bool, error) {
	out := make([]bool, len(ids))
	order := make([]int32, len(ids))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int { return bytes.Compare(ids[a][:], ids[b][:]) })
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketChunks).Bucket([]byte(company))
		if b == nil {
			return nil
		}
		q := tx.Bucket(bucketQuarantine).Bucket([]byte(company))
		c := b.Cursor()
		var k, v []byte
		prev := int32(-1)
		for _, i := range order {
			id := ids[i][:]
			if prev >= 0 && ids[prev] == ids[i] {
				out[i] = out[prev]
				continue
			}
			// The cursor is at the first key at or past the previous id:
			// step forward a few keys while they are before id (dense
			// batches), seek past that.
			if prev < 0 {
				k, v = c.Seek(id)
			}
			for steps := 0; k != nil && bytes.Compare(k, id) < 0; steps++ {
				if steps == hasSteps {
					k, v = c.Seek(id)
					break
				}
				k, v = c.Next()
			}
			prev = i
			if k == nil || !bytes.Equal(k, id) {
				continue
			}
			if _, err := parseLocation(v); err != nil {
				continue
			}
			out[i] = q == nil || q.Get(id) == nil
		}
		return nil
	})
	return out, err
}

// hasSteps is how many keys Has steps forward before it seeks instead.
const hasSteps = 4

// IndexPages is the index file's size in pages of the page cache (4 KiB).
func (s *Store) IndexPages() (int64, error) {
	fi, err := os.Stat(s.db.Path())
	if err != nil {
		return 0, fmt.Errorf("stat index: %w", err)
	}
	return fi.Size() / 4096, nil
}

// WarmIndex reads the whole index file once, in large sequential reads,
// so that the page cache holds it; it stops early when stop is closed.
// bbolt maps the index with MADV_RANDOM: every leaf a lookup touches is
// read alone, 4 KiB at a time, at random offsets, and a commit that looks
// up millions of chunks in an index the page cache no longer holds waited
// on one such read after another (issue 16: the commit's time grew 7-9x
// from one to three million chunks). A caller about to touch a large part
// of the index reads it whole beside its lookups. (posix_fadvise's
// WILLNEED reads only the device's read-ahead window of the range on
// current kernels, so the file is read here.)
func (s *Store) WarmIndex(stop <-chan struct{}) error {
	f, err := os.Open(s.db.Path())
	if err != nil {
		return fmt.Errorf("open index to read ahead: %w", err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(buf)) {
		select {
		case <-stop:
			return nil
		default:
		}
		n, err := f.ReadAt(buf, off)
		if err == io.EOF || n == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read index ahead: %w", err)
		}
	}
}

// Lookup returns where an entry is: ErrNotFound when the index has no
// record of it, ErrQuarantined (an ErrDamaged) when verify found it
// damaged, ErrDamaged when its record is malformed.
func (s *Store) Lookup(company string, id [32]byte) (Location, error) {
	var loc Location
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketChunks).Bucket([]byte(company))
		if b == nil {
			return ErrNotFound
		}
		v := b.Get(id[:])
		if v == nil {
			return ErrNotFound
		}
		var err error
		if loc, err = parseLocation(v); err != nil {
			return fmt.Errorf("%w: index chunks/%s/%x: %w", ErrDamaged, company, id[:8], err)
		}
		if q := tx.Bucket(bucketQuarantine).Bucket([]byte(company)); q != nil {
			if qv := q.Get(id[:]); qv != nil {
				r, _ := parseQuarantine(qv)
				return fmt.Errorf("chunk %x: %w: %s", id[:8], ErrQuarantined, r.Reason)
			}
		}
		return nil
	})
	return loc, err
}

// Entry is one sealed entry to append: Data holds header and body as made by
// pack.AppendEntry.
type Entry struct {
	Header pack.EntryHeader
	Data   []byte
}

// Put appends sealed entries of one company and commits them to the index.
// It returns after both are durable.
func (s *Store) Put(company string, entries []Entry) error {
	if len(entries) == 0 {
		return nil
	}
	a, err := s.Append(company)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := a.Add(e.Header, e.Data); err != nil {
			a.Abort()
			return err
		}
	}
	return a.Commit()
}

// Appender adds entries of one company to an open pack, one at a time, so
// a caller streaming an upload holds one entry in memory, not the batch.
// Nothing it adds is visible or durable until Commit; after Abort (or a
// crash) the bytes it wrote lie past the pack's committed length and are
// overwritten or truncated.
type Appender struct {
	s       *Store
	w       *writer
	company string
	off     int64
	ids     [][32]byte
	locs    []Location
	done    bool
	dirty   bool // bytes were written past the committed length
	// move: the entries are copies of entries at from (Repack): a record
	// is pointed at its copy only if it still names the original.
	move bool
	from []Location
	// copied: the entries are a replica's copy (Options.Replicate is not
	// told of them).
	copied bool
	rep    Replica // Options.Replica's copy, from the first Add
	// buf gathers entries smaller than appendDirect, written to the pack
	// at bufOff in one call when it would pass appendBuf, before a larger
	// entry and at Commit.
	buf    []byte
	bufOff int64
	// behind: the pack's bytes before it were handed to WriteBehind.
	behind int64
	// kept is where the first entry that is not content (a listing, a
	// manifest) lies, when hasKept: a commit reads listings back soon,
	// so the page cache keeps them and what follows (commit).
	kept    int64
	hasKept bool
}

// WriteBehinder is a PackWriter that can start writing a range to its
// disk without waiting (diskPack). Without it, an upload request's sync
// wrote the whole request at its end: with 24 GiB of memory the kernel
// starts writeback only past gigabytes of dirty pages, so the agent's
// stream waited 0.3-0.4 s for a 48 MiB request (docs/performance.md,
// "Upload requests out of step").
type WriteBehinder interface {
	WriteBehind(off, n int64)
}

// CacheDropper is a PackWriter whose committed bytes can leave the page
// cache (diskPack: posix_fadvise DONTNEED).
type CacheDropper interface {
	DropCached(off, n int64)
}

// writeBehind is how many bytes an appender writes before it starts their
// writeback.
const writeBehind = 8 << 20

// Entries smaller than appendDirect are gathered into writes of up to
// appendBuf bytes: an upload of small files wrote one pwrite a chunk
// (docs/performance.md, "Small entries written one by one"). Larger ones
// are written from the caller's buffer, as before, without a copy.
const (
	appendBuf    = 256 << 10
	appendDirect = 64 << 10
)

// Copied marks the appender's entries as copies another member made:
// Options.Replicate is not told of their commit.
func (a *Appender) Copied() { a.copied = true }

// Append starts adding entries for a company. The pack is taken at the
// first Add, so an appender that adds nothing leaves no trace.
// Until Commit or Abort the appender holds off Rebuild.
func (s *Store) Append(company string) (*Appender, error) {
	s.busy.RLock()
	return &Appender{s: s, company: company}, nil
}

// Add writes one sealed entry (header and body, as pack.AppendEntry makes).
func (a *Appender) Add(h pack.EntryHeader, data []byte) error { return a.add(h, data, nil) }

// Reserve takes the pack the entries go to now rather than at the first
// Add: a new pack is created (and synced, with its directory) here, so a
// caller can do it ahead, off its path (a copy's next part is prepared
// while the frames of this one arrive). Abort gives an unused pack back.
func (a *Appender) Reserve() error {
	if a.done {
		return errors.New("appender already finished")
	}
	return a.take()
}

func (a *Appender) take() error {
	if a.w != nil {
		return nil
	}
	w, err := a.s.takeWriter(a.company)
	if err != nil {
		return err
	}
	a.w, a.off, a.behind = w, w.size, w.size
	return nil
}

// AddOwned is Add of an entry the caller gives away: release is called
// once neither the appender nor the copy to another member needs data any
// more (before AddOwned returns when there is no such copy, or it fails).
// An upload that seals each entry into a buffer of its own so spares the
// copy a copy of each entry (Options.Replica).
func (a *Appender) AddOwned(h pack.EntryHeader, data []byte, release func()) error {
	return a.add(h, data, release)
}

func (a *Appender) add(h pack.EntryHeader, data []byte, release func()) error {
	given := false
	if release != nil {
		defer func() {
			if !given {
				release()
			}
		}()
	}
	if a.done {
		return errors.New("appender already finished")
	}
	if err := a.take(); err != nil {
		return err
	}
	a.dirty = true
	if len(data) >= appendDirect {
		if err := a.flush(); err != nil {
			return err
		}
		if _, err := a.w.f.WriteAt(data, a.off); err != nil {
			return classify(fmt.Errorf("append to pack %08x: %w", a.w.number, err))
		}
		a.wrote(a.off + int64(len(data)))
	} else {
		if len(a.buf)+len(data) > appendBuf {
			if err := a.flush(); err != nil {
				return err
			}
		}
		if len(a.buf) == 0 {
			a.bufOff = a.off
		}
		a.buf = append(a.buf, data...)
	}
	if a.rep == nil && a.s.opts.Replica != nil && !a.move && !a.copied {
		a.rep = a.s.opts.Replica(a.company)
	}
	switch {
	case a.rep != nil && release != nil:
		given = true
		a.rep.AddOwned(data, release)
	case a.rep != nil:
		a.rep.Add(data)
	}
	a.ids = append(a.ids, h.ID)
	if h.Kind != pack.KindData && !a.hasKept {
		a.kept, a.hasKept = a.off, true
	}
	a.locs = append(a.locs, Location{Pack: a.w.number, Offset: uint32(a.off), BodyLen: h.BodyLen,
		PlainLen: h.PlainLen, Kind: h.Kind, Flags: h.Flags})
	a.off += int64(len(data))
	return nil
}

// flush writes the small entries gathered in buf to the pack.
func (a *Appender) flush() error {
	if len(a.buf) == 0 {
		return nil
	}
	if _, err := a.w.f.WriteAt(a.buf, a.bufOff); err != nil {
		return classify(fmt.Errorf("append to pack %08x: %w", a.w.number, err))
	}
	a.wrote(a.bufOff + int64(len(a.buf)))
	a.buf = a.buf[:0]
	return nil
}

// wrote notes that the pack holds what the appender wrote up to end, and
// starts its writeback once writeBehind bytes wait for it.
func (a *Appender) wrote(end int64) {
	if end-a.behind < writeBehind {
		return
	}
	if wb, ok := a.w.f.(WriteBehinder); ok {
		wb.WriteBehind(a.behind, end-a.behind)
	}
	a.behind = end
}

// Len is the number of entries added.
func (a *Appender) Len() int { return len(a.ids) }

// Abort gives the pack back without committing anything; bytes it wrote
// are cut off at once (a failed write may have filled the disk).
func (a *Appender) Abort() {
	if a.done {
		return
	}
	defer a.s.busy.RUnlock()
	a.abort()
}

func (a *Appender) abort() {
	if a.done {
		return
	}
	a.done = true
	if a.rep != nil {
		a.rep.Abort()
	}
	if a.w == nil {
		return
	}
	if a.dirty {
		a.s.dropWriter(a.w)
		return
	}
	a.s.giveWriter(a.w)
}

// Commit syncs the pack and records every added entry in the index; it
// returns after both are durable.
func (a *Appender) Commit() error {
	if a.done {
		return errors.New("appender already finished")
	}
	defer a.s.busy.RUnlock()
	return a.commit()
}

func (a *Appender) commit() error {
	if a.done {
		return errors.New("appender already finished")
	}
	a.done = true
	s, w := a.s, a.w
	if w == nil {
		return nil
	}
	if err := a.flush(); err != nil {
		a.abortReplica()
		s.dropWriter(w)
		return err
	}
	if a.rep != nil {
		// The other member syncs its copy while this one syncs.
		a.rep.End()
	}
	if err := w.f.Sync(context.Background()); err != nil {
		a.abortReplica()
		s.dropWriter(w)
		return classify(fmt.Errorf("sync pack %08x: %w", w.number, err))
	}
	off := a.off
	err := s.commitIndex(a)
	if err != nil {
		a.abortReplica()
		if errors.Is(err, errPartialIndex) {
			s.retireWriter(w) // entries past the committed length are indexed
		} else {
			s.dropWriter(w)
		}
		return classify(fmt.Errorf("commit index: %w", err))
	}
	if w.fresh {
		s.addUsage(a.company, off) // the header too: the pack's record is new
	} else {
		s.addUsage(a.company, off-w.size)
	}
	from := w.size
	w.size = off
	w.fresh = false
	var rerr error
	switch {
	case a.rep != nil:
		// The writer is still held: nothing else appends to this pack
		// or rewrites it while a copy made again reads it.
		rerr = a.rep.Commit(io.NewSectionReader(w.f, from, off-from))
	case s.opts.Replica == nil && s.opts.Replicate != nil && !a.move && !a.copied && off > from:
		rerr = s.opts.Replicate(a.company, io.NewSectionReader(w.f, from, off-from))
	}
	// The content a commit wrote is read again seldom (a restore, a
	// check, a collection, all long after) and from the disk anyway by
	// then: it leaves the page cache once synced (and replicated),
	// instead of pushing the index's pages out. Its pages go back to the
	// kernel while still warm, and the next commit's writes take them:
	// filling the cache with new pages instead cost the vault 1.6 CPU s a
	// GB written on this machine kind (docs/performance.md, item 75).
	// Listings stay: the version's commit reads them.
	end := off
	if a.hasKept {
		end = min(end, a.kept)
	}
	if d, ok := w.f.(CacheDropper); ok && end > from {
		d.DropCached(from, end-from)
	}
	s.giveWriter(w)
	return rerr
}

// abortReplica drops the copy of a commit that failed here.
func (a *Appender) abortReplica() {
	if a.rep != nil {
		a.rep.Abort()
	}
}

// ReadPackAt reads len(dst) bytes of pack n at off: neighbouring entries
// in one read (a catch-up's copy). The caller checks what it got.
func (s *Store) ReadPackAt(n uint32, dst []byte, off int64) error {
	f, err := s.reader(n)
	if err != nil {
		return fmt.Errorf("%w: pack %08x: %w", ErrDamaged, n, err)
	}
	defer s.release(f)
	if _, err := f.ReadAt(dst, off); err != nil {
		return fmt.Errorf("%w: pack %08x offset %d: %w", ErrDamaged, n, off, err)
	}
	return nil
}

// ReadEntry reads a chunk's whole sealed entry (header and body) as it
// lies in its pack, checking only its header: what a replica copies.
func (s *Store) ReadEntry(company string, id [32]byte, dst []byte) ([]byte, error) {
	loc, err := s.Lookup(company, id)
	if err != nil {
		return nil, err
	}
	f, err := s.reader(loc.Pack)
	if err != nil {
		return nil, fmt.Errorf("%w: pack %08x: %w", ErrDamaged, loc.Pack, err)
	}
	defer s.release(f)
	n := pack.EntryHeaderSize + int(loc.BodyLen)
	dst = append(dst[:0], make([]byte, n)...)
	if _, err := f.ReadAt(dst, int64(loc.Offset)); err != nil {
		return nil, fmt.Errorf("%w: pack %08x offset %d: %w", ErrDamaged, loc.Pack, loc.Offset, err)
	}
	h, err := pack.ParseEntryHeader(dst)
	if err != nil || h.ID != id {
		return nil, fmt.Errorf("%w: pack %08x offset %d holds another entry", ErrDamaged, loc.Pack, loc.Offset)
	}
	return dst, nil
}

func classify(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}

func (s *Store) takeWriter(company string) (*writer, error) {
	s.mu.Lock()
	if ws := s.free[company]; len(ws) > 0 {
		w := ws[len(ws)-1]
		s.free[company] = ws[:len(ws)-1]
		s.mu.Unlock()
		return w, nil
	}
	n := s.nextPack
	s.nextPack++
	s.mu.Unlock()
	f, err := s.packs.Create(context.Background(), n, company)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.writing == nil {
		s.writing = map[uint32]bool{}
	}
	s.writing[n] = true
	s.mu.Unlock()
	return &writer{f: f, number: n, company: company, size: pack.FileHeaderSize, fresh: true}, nil
}

func (s *Store) giveWriter(w *writer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.size >= MaxPackSize || s.free == nil {
		delete(s.writing, w.number)
		w.f.Close()
		return
	}
	s.free[w.company] = append(s.free[w.company], w)
}

// dropWriter abandons a pack after a failed write: its tail past the
// committed size is cut so a later reader never sees it.
func (s *Store) dropWriter(w *writer) {
	s.mu.Lock()
	delete(s.writing, w.number)
	s.mu.Unlock()
	if !w.fresh {
		_ = w.f.Truncate(context.Background(), w.size)
		w.f.Close()
		return
	}
	w.f.Close()
	_ = s.packs.Remove(context.Background(), w.number)
}

// retireWriter stops appending to a pack after an index commit that failed
// part way: its tail past the committed length is kept (some of it is
// indexed; opening the store indexes the rest).
func (s *Store) retireWriter(w *writer) {
	s.mu.Lock()
	delete(s.writing, w.number)
	s.mu.Unlock()
	w.f.Close()
}

// packFile is an open pack shared by concurrent Gets. An evicted one is
// closed by its last user, never under a reader.
type packFile struct {
	PackReader
	refs    int
	evicted bool
}

// reader returns pack n open for reading; release it after use.
func (s *Store) reader(n uint32) (*packFile, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if pf := s.readers[n]; pf != nil {
		pf.refs++
		return pf, nil
	}
	f, err := s.packs.Open(context.Background(), n)
	if err != nil {
		return nil, err
	}
	if len(s.readers) >= 128 {
		for k, old := range s.readers {
			delete(s.readers, k)
			old.evicted = true
			if old.refs == 0 {
				old.Close()
			}
			break
		}
	}
	pf := &packFile{PackReader: f, refs: 1}
	s.readers[n] = pf
	return pf, nil
}

func (s *Store) release(pf *packFile) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	pf.refs--
	if pf.evicted && pf.refs == 0 {
		pf.Close()
	}
}

// Get reads and opens an entry, appending its payload (as stored: maybe
// zstd) to dst. A damaged entry gives ErrDamaged, never data.
func (s *Store) Get(company string, aead *pack.Sealer, id [32]byte, dst []byte) ([]byte, Location, error) {
	return s.get(company, aead, id, dst)
}

// GetAt is Get for a caller that has just looked id up (a download sizes
// its buffer from the location): it reads at loc without a second index
// lookup. A loc gone stale since (garbage collection moved the entry and
// removed its pack) is looked up again, as Get does; one pointing at
// another entry is reported as damage by the header check.
func (s *Store) GetAt(company string, aead *pack.Sealer, id [32]byte, loc Location, dst []byte) ([]byte, Location, error) {
	return s.getAt(company, aead, id, loc, dst)
}

// GetSealed reads an entry as stored, header and sealed body, without
// opening it (the tape copies it so: its tag still authenticates it when
// it is read back). The header is checked (CRC, id, length); the body is
// not opened.
func (s *Store) GetSealed(company string, id [32]byte) ([]byte, Location, error) {
	return s.get(company, nil, id, nil)
}

// GetSealedInto is GetSealed reading into dst's memory when it is large
// enough (the tape job reuses its buffers instead of allocating one per
// chunk): the answer then shares dst's array.
func (s *Store) GetSealedInto(company string, id [32]byte, dst []byte) ([]byte, Location, error) {
	return s.get(company, nil, id, dst)
}

func (s *Store) get(company string, aead *pack.Sealer, id [32]byte, dst []byte) ([]byte, Location, error) {
	loc, err := s.Lookup(company, id)
	if err != nil {
		return nil, loc, err
	}
	return s.getAt(company, aead, id, loc, dst)
}

func (s *Store) getAt(company string, aead *pack.Sealer, id [32]byte, loc Location, dst []byte) ([]byte, Location, error) {
	f, err := s.reader(loc.Pack)
	if errors.Is(err, ErrPackNotFound) {
		// Garbage collection moved the entry and removed its pack between
		// the lookup and the open: look again.
		var again Location
		if again, err = s.Lookup(company, id); err != nil {
			return nil, again, err
		}
		if again != loc {
			loc = again
			f, err = s.reader(loc.Pack)
		} else {
			err = fmt.Errorf("pack %08x: %w", loc.Pack, ErrPackNotFound)
		}
	}
	if err != nil {
		return nil, loc, fmt.Errorf("%w: pack %08x: %w", ErrDamaged, loc.Pack, err)
	}
	n := pack.EntryHeaderSize + int(loc.BodyLen)
	if sealed := int(loc.BodyLen) - pack.NonceSize; aead != nil && loc.BodyLen >= inPlaceMin && cap(dst)-len(dst) >= sealed {
		out, err := openInPlace(f, aead, id, loc, dst, sealed)
		dropRead(f, loc, n)
		s.release(f)
		return out, loc, err
	}
	var buf []byte
	if aead == nil {
		// The sealed entry is the answer, in dst when it fits.
		if cap(dst) >= n {
			buf = dst[:n]
		} else {
			buf = make([]byte, n)
		}
	} else {
		// Only the plaintext leaves: the sealed entry is read into a
		// pooled buffer (a restore reads hundreds of MiB through here;
		// a new buffer per chunk cost its zeroing and the collector's
		// time).
		bp := getSealed(n)
		defer putSealed(bp)
		buf = (*bp)[:n]
	}
	_, err = f.ReadAt(buf, int64(loc.Offset))
	dropRead(f, loc, n)
	s.release(f)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, loc, fmt.Errorf("%w: pack %08x offset %d: %w", ErrDamaged, loc.Pack, loc.Offset, err)
	}
	out, err := checkEntry(aead, id, loc, buf, dst)
	return out, loc, err
}

// inPlaceMin is the smallest body opened in place: a smaller entry is read
// whole in one pread into a pooled buffer, since a second system call
// costs more than copying it (a restore of 100,000 small files spent 0.25 s
// more of the vault's CPU in the second pread).
const inPlaceMin = 256 << 10

// dropReadMin is the least content entry dropped from the page cache once
// read.
const dropReadMin = 256 << 10

// dropRead drops a large content entry just read (n bytes at loc) from the
// page cache, like a commit's content (item 75): a restore reads each once,
// and the kernel's readahead then takes the pages given back, while still
// warm, for the entries that follow, instead of new ones (the page
// cache's new pages cost a restore of 1.9 GiB of photos 1.34 of the vault's
// 4.04 CPU s on this machine kind). Listings stay: commits read them.
func dropRead(f *packFile, loc Location, n int) {
	if loc.Kind != pack.KindData || n < dropReadMin {
		return
	}
	if d, ok := f.PackReader.(CacheDropper); ok {
		d.DropCached(int64(loc.Offset), int64(n))
	}
}

// openInPlace reads the entry at loc in two parts, its header and nonce,
// then the ciphertext (sealed bytes, with the tag) right after dst where
// its plaintext goes, and opens it there: one buffer a chunk read, not a
// sealed copy beside it. Each pooled buffer a restore touches afresh
// costs page faults, dear on some machines (docs/performance.md, item 41).
func openInPlace(f io.ReaderAt, aead *pack.Sealer, id [32]byte, loc Location, dst []byte, sealed int) ([]byte, error) {
	var pre [pack.EntryHeaderSize + pack.NonceSize]byte
	if err := readAt(f, pre[:], int64(loc.Offset), loc); err != nil {
		return nil, err
	}
	h, err := checkHeader(id, loc, pre[:pack.EntryHeaderSize])
	if err != nil {
		return nil, err
	}
	ct := dst[len(dst) : len(dst)+sealed]
	if err := readAt(f, ct, int64(loc.Offset)+int64(len(pre)), loc); err != nil {
		return nil, err
	}
	out, err := pack.OpenSealed(dst, aead, &h, pre[pack.EntryHeaderSize:], ct)
	if err != nil {
		return nil, fmt.Errorf("%w: pack %08x offset %d: %w", ErrDamaged, loc.Pack, loc.Offset, err)
	}
	return out, nil
}

// readAt fills b from f at off, a part of the entry at loc.
func readAt(f io.ReaderAt, b []byte, off int64, loc Location) error {
	if _, err := f.ReadAt(b, off); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("%w: pack %08x offset %d: %w", ErrDamaged, loc.Pack, loc.Offset, err)
	}
	return nil
}

// checkHeader parses the header of the entry read at loc and checks that
// it is the one the index says.
func checkHeader(id [32]byte, loc Location, b []byte) (pack.EntryHeader, error) {
	h, err := pack.ParseEntryHeader(b)
	if err != nil {
		return h, fmt.Errorf("%w: pack %08x offset %d: %w", ErrDamaged, loc.Pack, loc.Offset, err)
	}
	if h.ID != id || h.BodyLen != loc.BodyLen {
		return h, fmt.Errorf("%w: pack %08x offset %d holds another entry", ErrDamaged, loc.Pack, loc.Offset)
	}
	return h, nil
}

// checkEntry checks the sealed entry buf read at loc (its header: CRC, id,
// length) and, with aead, opens its body (the tag) appending the payload to
// dst; without, buf is the answer.
func checkEntry(aead *pack.Sealer, id [32]byte, loc Location, buf, dst []byte) ([]byte, error) {
	h, err := checkHeader(id, loc, buf)
	if err != nil {
		return nil, err
	}
	if aead == nil {
		return buf, nil
	}
	out, err := pack.OpenBody(dst, aead, &h, buf[pack.EntryHeaderSize:])
	if err != nil {
		return nil, fmt.Errorf("%w: pack %08x offset %d: %w", ErrDamaged, loc.Pack, loc.Offset, err)
	}
	return out, nil
}

// sealedPools hold buffers for sealed entries being opened (*[]byte),
// one pool per power-of-two size from 4 KiB to 16 MiB, so that a small
// entry never holds (or allocates) a chunk-sized buffer and a big one
// never finds only small ones.
var sealedPools [13]sync.Pool

const minSealedShift = 12 // 4 KiB

// sealedClass returns the pool index of an n-byte buffer, or -1 when n is
// larger than the largest class (then the buffer is not pooled).
func sealedClass(n int) int {
	c := bits.Len(uint(max(n, 1)-1)) - minSealedShift
	c = max(c, 0)
	if c >= len(sealedPools) {
		return -1
	}
	return c
}

// getSealed returns a buffer of at least n bytes, pooled when it fits a class.
func getSealed(n int) *[]byte {
	c := sealedClass(n)
	if c < 0 {
		b := make([]byte, n)
		return &b
	}
	if bp, ok := sealedPools[c].Get().(*[]byte); ok {
		return bp
	}
	b := make([]byte, 1<<(c+minSealedShift))
	return &b
}

// putSealed returns a buffer from getSealed to its pool.
func putSealed(bp *[]byte) {
	n := cap(*bp)
	if c := sealedClass(n); c >= 0 && n == 1<<(c+minSealedShift) {
		sealedPools[c].Put(bp)
	}
}

// PackInfo describes one pack for verification.
type PackInfo struct {
	Number    uint32
	Company   string
	Committed int64
	Path      string
}

// Packs lists every pack the index knows; malformed records are logged
// and left out (CheckIndex reports them).
func (s *Store) Packs() ([]PackInfo, error) {
	var out []PackInfo
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketPacks).ForEach(func(k, v []byte) error {
			n, err := parsePackKey(k)
			if err == nil {
				var r packRecord
				if r, err = parsePackRecord(v); err == nil {
					out = append(out, PackInfo{Number: n, Company: r.Company, Committed: int64(r.Committed), Path: s.PackPath(n)})
					return nil
				}
			}
			s.log.Warn("skipping a malformed index record", zap.String("bucket", "packs"), zap.String("key", hexKey(k)), zap.Error(err))
			return nil
		})
	})
	return out, err
}

// ForEachChunk calls fn for every index record of a company, quarantined
// or not; malformed records are logged and skipped (CheckIndex reports
// them).
func (s *Store) ForEachChunk(company string, fn func(id [32]byte, loc Location) error) error {
	return s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketChunks).Bucket([]byte(company))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			id, err := parseChunkKey(k)
			var loc Location
			if err == nil {
				loc, err = parseLocation(v)
			}
			if err != nil {
				s.log.Warn("skipping a malformed index record", zap.String("bucket", "chunks/"+company), zap.String("key", hexKey(k)), zap.Error(err))
				return nil
			}
			return fn(id, loc)
		})
	})
}
