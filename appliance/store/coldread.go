package store

import (
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sync/semaphore"
	"golang.org/x/sys/unix"

	"vaultnode/internal/pack"
)

// Reading the entries of a restore that the page cache does not hold.
//
// A restore reads hundreds of MiB of packs that are usually not cached (a
// vault holds far more than its memory). Read through the page cache, each
// byte costs the vault a page allocation, the kernel's copy and its
// readahead's bookkeeping (0.27-0.29 CPU s for the 227 MiB of a restore
// read entry by entry, against 0.04 s with O_DIRECT). But O_DIRECT has no
// readahead: read entry by entry, a disk that seeks would wait once per
// entry, and the CPU would wait for the disk. So a ReadStream, given the
// locations a download will ask for in order, reads them ahead on a
// goroutine of its own, in spans: neighbouring entries of one pack (a
// restore asks for a file's chunks, which lie in pack order) are read
// together, from an aligned offset, into one aligned buffer of at most
// spanMax bytes, with O_DIRECT, while the caller opens the span before.
// A span goes through the page cache as before when cachestat(2) says the
// cache holds all of it (a restore right after the backup), when the file
// system refuses O_DIRECT (EINVAL) or the kernel lacks cachestat, and when
// the span buffers of all downloads together (spanBudget) are taken. A
// direct read sees what the vault wrote through the cache: the kernel
// writes a range's dirty pages back before reading it directly (and
// cachestat counts dirty pages as cached). Whatever a span lacks (a short
// read of a truncated pack, an entry outside it) is read by getAt as
// before, so its errors are the same; every entry read from a span passes
// the same header and tag checks.

const (
	// directAlign is the alignment of a direct read's offset, length and
	// buffer: the logical block size of any disk here (512 or 4096 B).
	directAlign = 4096
	// spanMax is the most a span reads (an entry larger than it, up to a
	// 4 MiB chunk, is read alone).
	spanMax = 2 << 20
	// spanGap is the largest hole between two wanted entries a span reads
	// through rather than ending: cheaper than a seek, and than a second
	// read on a disk that does not seek.
	spanGap = 128 << 10
	// spanMin is the least a span must want (bytes of its entries) to be
	// read directly: a direct read costs the vault a device round trip
	// (tens of µs of CPU in a VM) however small, and small entries that
	// do not lie together (small files backed up by parallel readers,
	// restored in name order) made 28,000 reads of a few KiB in a restore
	// of 100,000 small files, 0.86 CPU s against 0.16 s through the cache,
	// whose readahead serves them from a few large reads.
	spanMin = 256 << 10
	// spansAhead is how many spans a stream reads ahead of the one its
	// caller is using.
	spansAhead = 2
	// spanBudget bounds the span buffers of all streams together; a span
	// that finds no room at once is read through the page cache.
	spanBudget = 48 << 20
)

var spanSem = semaphore.NewWeighted(spanBudget)

// spanBufs keeps buffers of spanMax+directAlign bytes (a span's aligned
// bytes at an aligned place in them), as many as spanBudget holds: kept
// across the collector's cycles (a sync.Pool emptied by each cycle made the
// stream allocate and zero 2 MiB buffers again and again).
var spanBufs = make(chan *[]byte, spanBudget/(spanMax+directAlign))

// noCachestat is set once cachestat(2) is missing (ENOSYS): no stream
// reads directly from then on.
var noCachestat atomic.Bool

// coldReads counts entries read from direct spans (tests).
var coldReads atomic.Int64

// directReader is a PackReader that can read directly (diskPack).
type directReader interface {
	// cached reports whether the page cache holds all of [off, end); an
	// error when it cannot tell.
	cached(off, end int64) (bool, error)
	// readDirect reads into buf (aligned) at off (aligned) with O_DIRECT;
	// ok is false when the file cannot be read so (then nothing was read).
	readDirect(buf []byte, off int64) (n int, ok bool, err error)
}

// directFile is a pack's second descriptor, opened with O_DIRECT on first
// need; failed once the file system refused it.
type directFile struct {
	path   string
	mu     sync.Mutex
	f      *os.File
	closed bool
	failed atomic.Bool
}

// file returns the twin, opened on first need; nil when it cannot be.
// The caller holds a reference to the pack's reader (Store.reader), which
// keeps the twin open.
func (d *directFile) file() *os.File {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil && !d.closed && !d.failed.Load() {
		f, err := os.OpenFile(d.path, os.O_RDONLY|unix.O_DIRECT, 0)
		if err != nil {
			d.failed.Store(true) // EINVAL: the file system refuses O_DIRECT
			return nil
		}
		d.f = f
	}
	return d.f
}

func (d *directFile) close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	if d.f == nil {
		return nil
	}
	err := d.f.Close()
	d.f = nil
	return err
}

func (p diskPack) cached(off, end int64) (bool, error) {
	first := off / pageSize
	last := (end + pageSize - 1) / pageSize
	var st unix.Cachestat_t
	r := unix.CachestatRange{Off: uint64(first * pageSize), Len: uint64((last - first) * pageSize)}
	if err := unix.Cachestat(uint(p.Fd()), &r, &st, 0); err != nil {
		if errors.Is(err, unix.ENOSYS) {
			noCachestat.Store(true)
		}
		return false, err
	}
	return int64(st.Cache) >= last-first, nil
}

var pageSize = int64(os.Getpagesize())

func (p diskPack) readDirect(buf []byte, off int64) (int, bool, error) {
	if p.direct == nil || p.direct.failed.Load() {
		return 0, false, nil
	}
	f := p.direct.file()
	if f == nil {
		return 0, false, nil
	}
	n, err := f.ReadAt(buf, off)
	if errors.Is(err, unix.EINVAL) { // the file system wants another alignment
		p.direct.failed.Store(true)
		return 0, false, nil
	}
	if errors.Is(err, io.EOF) {
		err = nil // a short span: the caller reads the rest as before
	}
	return n, true, err
}

// span is a run of wanted entries [first, last] of one pack: in buf (the
// bytes read at start) when read directly, else nothing (read through the
// page cache).
type span struct {
	pack        uint32
	first, last int
	start       int64
	buf         []byte
	bp          *[]byte // pooled, when it is
	held        int64   // of spanSem
}

func (sp *span) free() {
	if sp.held > 0 {
		spanSem.Release(sp.held)
	}
	if sp.bp != nil {
		select {
		case spanBufs <- sp.bp:
		default:
		}
	}
	sp.buf, sp.bp, sp.held = nil, nil, 0
}

// ReadStream reads the entries of one download, in the order of locs,
// reading ahead (above). Its caller gets entry i with Get(i, ...), i
// increasing, and Closes it once done.
type ReadStream struct {
	s       *Store
	company string
	aead    *pack.Sealer
	locs    []Location
	ok      []bool
	// plans are the spans to read directly, in order; the goroutine
	// sends each on spans once read (or found cached), and Get takes
	// them in turn: plans[k] is the next.
	plans []*span
	k     int
	spans chan *span
	stop  chan struct{}
	done  chan struct{}
	cur   *span
}

// ReadStream starts reading ahead the entries at locs for company (ok[i]
// false: locs[i] is not known; Get(i) looks it up). When some span is
// worth reading directly, the stream owns a goroutine until Close.
func (s *Store) ReadStream(company string, aead *pack.Sealer, locs []Location, ok []bool) *ReadStream {
	rs := &ReadStream{s: s, company: company, aead: aead, locs: locs, ok: ok}
	if !s.opts.DirectReads || noCachestat.Load() || aead == nil {
		return rs
	}
	for i := 0; i < len(locs); {
		if !ok[i] {
			i++
			continue
		}
		sp := rs.plan(i)
		i = sp.last + 1
		if sp.held > 0 {
			rs.plans = append(rs.plans, sp)
		}
	}
	if len(rs.plans) == 0 {
		return rs
	}
	rs.spans = make(chan *span, spansAhead)
	rs.stop = make(chan struct{})
	rs.done = make(chan struct{})
	go func() {
		defer close(rs.done)
		defer close(rs.spans)
		rs.readAhead()
	}()
	return rs
}

// Close stops the stream's goroutine and gives back what it holds.
func (rs *ReadStream) Close() {
	if rs.cur != nil {
		rs.cur.free()
		rs.cur = nil
	}
	if rs.spans == nil {
		return
	}
	close(rs.stop)
	for sp := range rs.spans {
		sp.free()
	}
	<-rs.done
	rs.spans = nil
}

// Get returns entry i as Store.GetAt would (id and loc as given to it):
// from the span read ahead that holds it, else read now.
func (rs *ReadStream) Get(i int, id [32]byte, loc Location, dst []byte) ([]byte, Location, error) {
	if sp := rs.spanFor(i); sp != nil && sp.buf != nil && sp.pack == loc.Pack {
		off := int64(loc.Offset) - sp.start
		n := pack.EntryHeaderSize + int64(loc.BodyLen)
		if off >= 0 && off+n <= int64(len(sp.buf)) {
			coldReads.Add(1)
			out, err := checkEntry(rs.aead, id, loc, sp.buf[off:off+n], dst)
			return out, loc, err
		}
	}
	return rs.s.getAt(rs.company, rs.aead, id, loc, dst)
}

// spanFor returns the span that covers entry i, or nil; the spans before
// it are given back.
func (rs *ReadStream) spanFor(i int) *span {
	if rs.cur != nil && rs.cur.last < i {
		rs.cur.free()
		rs.cur = nil
	}
	for rs.cur == nil && rs.k < len(rs.plans) && rs.plans[rs.k].first <= i {
		sp, more := <-rs.spans
		if !more { // stopped
			rs.k = len(rs.plans)
			break
		}
		rs.k++
		if sp.last < i {
			sp.free()
			continue
		}
		rs.cur = sp
	}
	if rs.cur != nil && rs.cur.first <= i {
		return rs.cur
	}
	return nil
}

// readAhead reads the planned spans in order, each that is cold.
func (rs *ReadStream) readAhead() {
	for _, sp := range rs.plans {
		rs.read(sp)
		select {
		case rs.spans <- sp:
		case <-rs.stop:
			sp.free()
			return
		}
	}
}

// plan makes the span that begins with entry i: the entries after it in
// the same pack, each at or after the one before, no more than spanGap
// after its end, while the aligned span stays within spanMax. A span that
// wants less than spanMin is left to the page cache.
func (rs *ReadStream) plan(i int) *span {
	l := rs.locs[i]
	sp := &span{pack: l.Pack, first: i, last: i, start: int64(l.Offset) &^ (directAlign - 1)}
	end := l.End()
	want := end - int64(l.Offset)
	for j := i + 1; j < len(rs.locs) && rs.ok[j]; j++ {
		n := rs.locs[j]
		if n.Pack != l.Pack || n.Offset < rs.locs[j-1].Offset || int64(n.Offset) > end+spanGap ||
			alignUp(max(end, n.End()))-sp.start > spanMax {
			break
		}
		end = max(end, n.End())
		want += n.End() - int64(n.Offset)
		sp.last = j
	}
	sp.held = alignUp(end) - sp.start // the bytes to read, until read sets what it holds
	if want < spanMin {
		sp.held = 0 // through the cache
	}
	return sp
}

func alignUp(n int64) int64 { return (n + directAlign - 1) &^ (directAlign - 1) }

// read reads span sp directly if its pack's page cache lacks part of it
// and a buffer is there at once; else it leaves sp without bytes.
func (rs *ReadStream) read(sp *span) {
	size := sp.held
	sp.held = 0
	if size == 0 {
		return
	}
	f, err := rs.s.reader(sp.pack)
	if err != nil {
		return // getAt says why, or finds the entry elsewhere
	}
	defer rs.s.release(f)
	dr, ok := f.PackReader.(directReader)
	if !ok {
		return
	}
	if cached, err := dr.cached(sp.start, sp.start+size); cached || err != nil {
		return
	}
	if !spanSem.TryAcquire(size + directAlign) {
		return
	}
	sp.held = size + directAlign
	var raw []byte
	if size <= spanMax {
		var bp *[]byte
		select {
		case bp = <-spanBufs:
		default:
			b := make([]byte, spanMax+directAlign)
			bp = &b
		}
		sp.bp, raw = bp, *bp
	} else {
		raw = make([]byte, size+directAlign)
	}
	a := int(-uintptr(unsafe.Pointer(unsafe.SliceData(raw))) & (directAlign - 1))
	n, ok, err := dr.readDirect(raw[a:a+int(size)], sp.start)
	if !ok || err != nil {
		sp.free() // getAt reads it, and says what is wrong
		return
	}
	sp.buf = raw[a : a+n]
}
