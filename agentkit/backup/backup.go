// Package backup runs one synchronization of a files configuration: it walks
// the selection in tree order, reuses the chunk lists of files unchanged
// since the last committed version (size, mtime, ctime, inode), reads,
// chunks and hashes the rest in parallel, sends only the chunks the vault
// lacks, and commits a version whose listing is a full view of the selection.
package backup

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"vaultnode/agentkit/client"
	"vaultnode/agentkit/selection"
	"vaultnode/agentkit/state"
	"vaultnode/internal/chunker"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// Vault is what a synchronization needs of the vault.
type Vault interface {
	Open(ctx context.Context, config string) (*wire.Session, error)
	Lack(ctx context.Context, session string, ids [][32]byte) ([]bool, error)
	// Upload sends a request body of frames; the vault has stored them all
	// when it returns nil.
	Upload(ctx context.Context, session string, frames io.Reader) error
	Commit(ctx context.Context, session string, c wire.Commit) (uint64, error)
	Abort(ctx context.Context, session string) error
}

// Options of Run.
type Options struct {
	Vault    Vault
	Config   wire.Config
	ChunkKey [32]byte
	GearKey  [32]byte
	State    *state.Dir
	Log      *zap.Logger
	// Progress, when set, is called about every Interval with the counters.
	Progress func(s *Stats)
	Interval time.Duration
	Workers  int // file readers; default GOMAXPROCS
	// Retries is how many times a file that changes while read is re-read.
	Retries int
	// SourceOf, when set, maps each configured root to the directory to
	// read instead (a read-only snapshot of it); the version records the
	// root's paths.
	SourceOf func(root string) string
	// Lock is the configuration's lock when the caller took it, to prepare
	// the source under it (snapshots, system state); else Run takes it and
	// refuses with state.ErrBusy when another synchronization holds it.
	Lock *state.Lock
}

// Stats are the counters of a run, updated atomically.
type Stats struct {
	Start        time.Time
	Files        int64 // files seen
	Dirs         int64
	Bytes        int64 // logical bytes of files seen
	FilesRead    int64 // files whose content was read
	BytesRead    int64 // content bytes read
	Unreadable   int64
	Inconsistent int64
	Deleted      int64
	ChunksKnown  int64 // chunks the vault already had
	ChunksReused int64 // chunks of a file read again that its previous version had: not offered
	ChunksSent   int64
	BytesSent    int64 // bytes of upload bodies
	Done         bool
}

// Snapshot returns a consistent copy of the counters.
func (s *Stats) Snapshot() Stats {
	return Stats{Start: s.Start, Files: atomic.LoadInt64(&s.Files), Dirs: atomic.LoadInt64(&s.Dirs),
		Bytes: atomic.LoadInt64(&s.Bytes), FilesRead: atomic.LoadInt64(&s.FilesRead), BytesRead: atomic.LoadInt64(&s.BytesRead),
		Unreadable: atomic.LoadInt64(&s.Unreadable), Inconsistent: atomic.LoadInt64(&s.Inconsistent),
		Deleted: atomic.LoadInt64(&s.Deleted), ChunksKnown: atomic.LoadInt64(&s.ChunksKnown),
		ChunksReused: atomic.LoadInt64(&s.ChunksReused),
		ChunksSent:   atomic.LoadInt64(&s.ChunksSent), BytesSent: atomic.LoadInt64(&s.BytesSent), Done: s.Done}
}

// Result is a committed synchronization.
type Result struct {
	Seq      uint64
	Stats    Stats
	Problems []string // files not fully protected, with the reason
	Duration time.Duration
	Commit   time.Duration // of Duration, the commit request: the vault checking and recording the listing
}

// Run synchronizes one configuration and commits a version.
func Run(ctx context.Context, o Options) (*Result, error) {
	switch {
	case o.Lock == nil:
		l, err := o.State.Lock(o.Config.Name)
		if err != nil {
			return nil, err
		}
		defer l.Release()
		o.Lock = l
	case o.Lock.Config != o.Config.Name:
		return nil, fmt.Errorf("synchronizing configuration %q under the lock of %q", o.Config.Name, o.Lock.Config)
	}
	res, err := runFollowing(ctx, o, true)
	if !client.IsCode(err, wire.CodeMissingChunk) {
		return res, err
	}
	// The vault lacks chunks our cache says it has: it was restored from
	// an older state, or the cache's version was pruned and collected, or
	// the cache is from another vault. Synchronize against the vault's
	// newest version (the cache dropped, its listing is fetched: fetch.go),
	// whose chunks it should have; failing that, read everything again.
	if _, ok := o.Vault.(listingSource); ok {
		o.Log.Warn("vault lacks chunks of the cached version; synchronizing against its newest version", zap.Error(err))
		if derr := o.State.DropListing(o.Config.Name); derr != nil {
			return nil, fmt.Errorf("drop the listing cache: %w (after: %w)", derr, err)
		}
		if res, err = runFollowing(ctx, o, true); !client.IsCode(err, wire.CodeMissingChunk) {
			return res, err
		}
	}
	o.Log.Warn("vault lacks chunks of the version the synchronization started from; synchronizing without it", zap.Error(err))
	return runFollowing(ctx, o, false)
}

// failoverer is a vault client that follows a pair's leader.
type failoverer interface{ Failovers() int64 }

// runFollowing is run, started again in a new session when it failed after
// the client moved to another member of a pair (the session lived on the
// old leader). Chunks the pair acknowledged are on the new leader, so lack
// says so and they are not sent again.
func runFollowing(ctx context.Context, o Options, useCache bool) (*Result, error) {
	f, ok := o.Vault.(failoverer)
	for attempt := 1; ; attempt++ {
		var before int64
		if ok {
			before = f.Failovers()
		}
		res, err := run(ctx, o, useCache)
		if err == nil || !ok || f.Failovers() == before || attempt >= 3 || ctx.Err() != nil {
			return res, err
		}
		if o.Log != nil {
			o.Log.Warn("the vault's pair changed leader during the synchronization: again in a new session", zap.Error(err))
		}
	}
}

// defaults fills the options left zero.
func (o *Options) defaults(workers int) {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Workers <= 0 {
		o.Workers = workers
	}
	if o.Retries <= 0 {
		o.Retries = 3
	}
	if o.Interval <= 0 {
		o.Interval = 200 * time.Millisecond
	}
}

func run(ctx context.Context, o Options, useCache bool) (*Result, error) {
	o.defaults(runtime.GOMAXPROCS(0))
	switch o.Config.Kind {
	case "", wire.KindFiles, wire.KindDatabase:
	default:
		return nil, fmt.Errorf("configuration %q is of kind %q, which this agent does not know: update the agent", o.Config.Name, o.Config.Kind)
	}
	gear, err := chunker.NewGear(o.GearKey)
	if err != nil {
		return nil, err
	}
	sel, err := selection.New(selection.Options{Include: o.Config.Include, Exclude: o.Config.Exclude,
		NoAuto: o.Config.NoAutoExclude, StatePath: o.State.Path})
	if err != nil {
		return nil, err
	}
	cdir, err := o.State.ConfigDir(o.Config.Name)
	if err != nil {
		return nil, err
	}
	sweepTemps(cdir, o.Log)
	// The session opens while the walk starts (pipeline): the walk and the
	// first reads do not need it, and the open's round trip came before
	// any file was looked at (9-96 ms of an incremental backup in traces
	// under load; docs/performance.md, "Incremental backups of large
	// changed files").
	var sessID string // set by open, read after pipeline returns
	open := func(ctx context.Context) (string, error) {
		sess, err := o.Vault.Open(ctx, o.Config.Name)
		if err != nil {
			return "", fmt.Errorf("open session: %w", err)
		}
		sessID = sess.ID
		return sess.ID, nil
	}
	committed := false
	defer func() {
		if !committed && sessID != "" {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			o.Vault.Abort(actx, sessID)
			cancel()
		}
	}()

	var prev *tree.Reader
	path, last := o.State.LastListing(o.Config.Name)
	if useCache {
		// The cache, or when there is none or it cannot be read, the
		// newest version's listing fetched from the vault (fetch.go).
		tr, closeCache, err := openCacheFile(path)
		if err != nil {
			o.Log.Warn("ignoring unreadable listing cache", zap.String("path", path), zap.Error(err))
		}
		if src, ok := o.Vault.(listingSource); ok && tr == nil {
			t0 := time.Now()
			switch l, err := fetchListing(ctx, src, o.State, o.Config.Name, cdir, o.ChunkKey); {
			case err == nil:
				path, last = o.State.LastListing(o.Config.Name)
				if tr, closeCache, err = openCacheFile(path); err != nil {
					o.Log.Warn("ignoring unreadable listing cache", zap.String("path", path), zap.Error(err))
				} else {
					o.Log.Info("no listing cache: the newest version's listing was fetched from the vault",
						zap.Uint64("version", l.Seq), zap.Duration("took", time.Since(t0)))
				}
			case !errors.Is(err, errNoVersion) && ctx.Err() == nil:
				o.Log.Warn("no listing cache, and the newest version's listing could not be fetched from the vault: every file is read", zap.Error(err))
			}
		}
		if tr != nil {
			prev = tr
			defer closeCache()
		}
	}
	// The new listing cache. The disk under the agent's state may be full
	// or failing (a full disk is when a backup matters most): the backup
	// then goes on without it, and the next one compares its files with an
	// older cache or the vault's listing (cacheWriter).
	var cache *cacheWriter
	var zw *s2.Writer
	tmp, cacheErr := os.CreateTemp(cdir, listingTemp)
	if cacheErr != nil {
		cacheErr = fmt.Errorf("create listing cache: %w", cacheErr)
	} else {
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		zw = s2.NewWriter(tmp, s2.WriterConcurrency(1))
		cache = &cacheWriter{w: zw}
	}

	stats := &Stats{Start: time.Now()}
	dirs := &dirRecorder{}
	produce := func(ctx context.Context, up *uploader, order chan<- []*item, work chan<- *item) error {
		if o.Config.Kind == wire.KindDatabase {
			d := &dumper{cfg: o.Config, gear: gear, hasher: keys.NewHasher(o.ChunkKey), up: up, stats: stats, log: o.Log,
				known: previousDump(prev, o.Config.Name)}
			return d.run(ctx, order)
		}
		w := &walker{ctx: ctx, sel: sel, cfg: o.Config, prev: prev, prevStarted: last.Started, dirs: dirs,
			order: order, work: work, stats: stats,
			links: map[[2]uint64][]byte{}, log: o.Log, spill: filepath.Join(o.State.Path, "tmp"), sourceOf: o.SourceOf}
		if prev != nil {
			w.prevPath, w.prevDir, w.prevTag = path, filepath.Dir(path), last.Started.UnixNano()
		}
		return w.run()
	}
	var cw io.Writer // nil, not a nil *cacheWriter, when there is no cache
	if cache != nil {
		cw = cache
	}
	listing, problems, err := pipeline(ctx, o, open, gear, stats, cw, produce)
	if err != nil {
		return nil, err
	}
	if cache != nil {
		if cacheErr = cache.err; cacheErr == nil {
			if err := zw.Close(); err != nil {
				cacheErr = fmt.Errorf("write listing cache: %w", err)
			}
		}
	}
	// The directory index beside it, kept once the listing is (renamed.go):
	// not written when the listing cache could not be, since it is kept
	// only with it.
	dirsTmp, dirsErr := "", error(nil)
	if o.Config.Kind != wire.KindDatabase && cacheErr == nil {
		dirsTmp, dirsErr = dirs.write(cdir, stats.Start.UnixNano())
		if dirsTmp != "" {
			defer os.Remove(dirsTmp) // gone once kept
		}
	}
	// The cache must be on disk before it is kept (CommitListing), not
	// before the commit: its fsync runs beside the commit's request instead
	// of between the last upload and it (4-74 ms in traces under load;
	// docs/performance.md, "Incremental backups of large changed files").
	synced := make(chan error, 1)
	if cacheErr != nil {
		synced <- cacheErr
	} else {
		go func() { synced <- tmp.Sync() }()
	}
	commitStart := time.Now()
	seq, err := o.Vault.Commit(ctx, sessID, wire.Commit{Listing: listing, Started: stats.Start})
	commitTook := time.Since(commitStart)
	syncErr := <-synced // before the deferred Close and Remove of tmp
	if err != nil {
		return nil, fmt.Errorf("commit version: %w", err)
	}
	committed = true
	if syncErr != nil {
		o.Log.Warn("could not write the listing cache under the agent's state (the version is committed; free space there): the next synchronization compares the files with an older cache or the vault's listing",
			zap.String("dir", cdir), zap.Error(syncErr))
	} else if err := o.State.CommitListing(o.Config.Name, tmp.Name(), state.Last{Seq: seq, Started: stats.Start}); err != nil {
		o.Log.Warn("could not keep the listing cache (the version is committed); the next synchronization compares the files with an older cache or the vault's listing",
			zap.String("dir", cdir), zap.Error(err))
	} else if o.Config.Kind != wire.KindDatabase {
		if dirsErr == nil {
			dirsErr = keepDirIndex(cdir, dirsTmp)
		}
		if dirsErr != nil {
			o.Log.Warn("could not keep the directory index; renamed directories will be read again", zap.Error(dirsErr))
		}
	}
	stats.Done = true
	if o.Progress != nil {
		o.Progress(stats)
	}
	return &Result{Seq: seq, Stats: stats.Snapshot(), Problems: problems, Duration: time.Since(stats.Start), Commit: commitTook}, nil
}

// tempPatterns are the temporary files a synchronization writes in its
// configuration's directory and renames in, or removes, when it ends.
var tempPatterns = []string{listingTemp, dirsTemp}

const (
	listingTemp = "listing-*.tmp"
	dirsTemp    = "dirs-*.tmp"
)

// sweepTemps removes the temporary files of synchronizations killed before
// they ended. Run holds the configuration's lock, so none is in use.
func sweepTemps(cdir string, log *zap.Logger) {
	for _, pat := range tempPatterns {
		stale, _ := filepath.Glob(filepath.Join(cdir, pat))
		for _, p := range stale {
			if err := os.Remove(p); err != nil {
				log.Warn("cannot remove a temporary file of an earlier synchronization", zap.String("path", p), zap.Error(err))
				continue
			}
			log.Info("removed a temporary file of a synchronization that did not end", zap.String("path", p))
		}
	}
}

// smallReaders is the least number of readers of small files.
const smallReaders = 8

// producer emits the nodes of a synchronization in tree order into order,
// in batches of up to orderBatch, and those whose content must be read also
// into work.
type producer func(ctx context.Context, up *uploader, order chan<- []*item, work chan<- *item) error

// orderBatch is how many nodes travel to the listing writer at once: one
// at a time, the writer (faster than a walk) was parked and woken for
// almost every node (docs/performance.md, "Nodes to the listing writer in
// batches").
const orderBatch = 64

// pipeline runs a producer with the file readers, the listing writer (into
// the vault as listing chunks, and into cache when not nil) and the upload
// stages, and returns the listing's chunks once every chunk is acknowledged.
// open gives the session's id: it runs beside the producer and the readers,
// and only the requests to the vault (lack queries, uploads) wait for it;
// until then the readers stop at the upload budget.
func pipeline(ctx context.Context, o Options, open func(context.Context) (string, error), gear *chunker.Gear, stats *Stats, cache io.Writer, produce producer) ([]tree.ChunkRef, []string, error) {
	g, gctx := errgroup.WithContext(ctx)
	up := newUploader(o.Vault, "", stats)
	opened := make(chan struct{})
	g.Go(func() error {
		id, err := open(gctx)
		if err != nil {
			return err
		}
		up.session = id // before close: the stages read it after <-opened
		close(opened)
		return nil
	})
	waitOpen := func() error {
		select {
		case <-opened:
			return nil
		case <-gctx.Done():
			return gctx.Err()
		}
	}
	order := make(chan []*item, 4096/orderBatch)
	work := make(chan *item, 64)
	var problems []string

	if o.Progress != nil {
		progDone := make(chan struct{})
		defer close(progDone)
		go func() {
			t := time.NewTicker(o.Interval)
			defer t.Stop()
			for {
				select {
				case <-progDone:
					return
				case <-t.C:
					o.Progress(stats)
				}
			}
		}()
	}

	// Upload stages: lack queries, compression, streamed upload requests.
	g.Go(func() error {
		// Without a session the lacker still runs, on a cancelled
		// context: it gives back the candidates' budget and closes the
		// compressors' channel, asking nothing.
		waitOpen()
		return up.lacker(gctx)
	})
	cg, cctx := errgroup.WithContext(gctx)
	for range max(1, runtime.GOMAXPROCS(0)) {
		cg.Go(func() error { return up.compressor(cctx) })
	}
	g.Go(func() error {
		err := cg.Wait()
		close(up.frames)
		return err
	})
	for range senders {
		g.Go(func() error {
			if err := waitOpen(); err != nil {
				return err
			}
			return up.sender(gctx)
		})
	}

	// Producers of chunks: the walker, the file readers and the listing.
	// Files of at most one minimum chunk go to their own readers with small
	// buffers: on a cold cache each waits mostly for its disk reads, so
	// more of them at once keep the disk busy (a tree of 50,000 small
	// files: see docs/performance.md), for 256 KiB of buffer each instead
	// of the 8 MiB of a reader that chunks.
	pg, pctx := errgroup.WithContext(gctx)
	bigWork, smallWork := make(chan *item, 64), make(chan *item, 64)
	pg.Go(func() error {
		defer close(bigWork)
		defer close(smallWork)
		for it := range work {
			to := bigWork
			if it.node.Size <= chunker.MinSize {
				to = smallWork
			}
			select {
			case to <- it:
			case <-pctx.Done():
				it.closeFile()
				for it := range work {
					it.closeFile()
				}
				return pctx.Err()
			}
		}
		return nil
	})
	// The producer starts first: its walk (cold directory and inode
	// reads) is what a no-change or incremental backup waits for, and the
	// readers' buffers are made when a file first comes, so a backup that
	// reads no file allocates none of them and its start runs no garbage
	// collection for them (docs/performance.md, "Chunker, frames, readers' buffers").
	pg.Go(func() error {
		err := produce(pctx, up, order, work)
		close(work)
		close(order)
		return err
	})
	readers := func(n, bufSize, batch int, from <-chan *item) {
		for range n {
			pg.Go(func() error {
				var r *reader
				var b readBatch
				for it := range from {
					if r == nil {
						r = &reader{gear: gear, hasher: keys.NewHasher(o.ChunkKey), up: up, stats: stats, retries: o.Retries,
							buf: make([]byte, bufSize)}
					}
					b.take(it, from, batch)
					if err := b.read(pctx, r); err != nil {
						return err
					}
				}
				return nil
			})
		}
	}
	readers(o.Workers, 2*chunker.MaxSize, 1, bigWork)
	readers(max(o.Workers, smallReaders), chunker.MinSize+1, smallBatch, smallWork)
	var listing []tree.ChunkRef
	lr, lw := io.Pipe()
	pg.Go(func() error {
		h := keys.NewHasher(o.ChunkKey)
		// Small listing chunks (chunker.NewListing): a backup after scattered
		// changes sends a few of them rather than the whole listing again.
		c := chunker.NewListing(gear, lr, nil)
		for {
			b, err := c.Next()
			if err == io.EOF {
				return nil
			}
			if err == nil {
				id := h.Sum(b)
				listing = append(listing, tree.ChunkRef{ID: id, Len: uint32(len(b))})
				err = up.add(pctx, wire.FrameListing, id, b)
			}
			if err != nil {
				lr.CloseWithError(err)
				return err
			}
		}
	})
	pg.Go(func() error {
		// Nodes reach the listing chunker through a buffer: written to the
		// pipe one at a time, each node was a handoff between goroutines
		// (docs/performance.md, "The listing to its chunker in 64 KiB").
		bw := bufio.NewWriterSize(lw, 64<<10)
		tw, err := tree.NewWriter(listingOut(cache, bw))
		if err != nil {
			lw.CloseWithError(err)
			return err
		}
		writeBatch := func(batch []*item) error {
			for _, it := range batch {
				select {
				case <-it.done:
				case <-pctx.Done():
					return pctx.Err()
				}
				if it.node.Status != tree.StatusOK {
					problems = append(problems, fmt.Sprintf("%s: %s", it.node.Path, it.node.Err))
				}
				err := tw.Write(&it.node)
				if tree.IsLimit(err) {
					skip, problem := fitLimits(&it.node, err)
					problems = append(problems, problem)
					o.Log.Warn("node over a listing limit", zap.String("problem", problem))
					if err = nil; !skip {
						err = tw.Write(&it.node)
					}
				}
				if err != nil {
					return err
				}
			}
			return nil
		}
		for batch := range order {
			if err := writeBatch(batch); err != nil {
				lw.CloseWithError(err)
				for range order {
				}
				return err
			}
		}
		if err := bw.Flush(); err != nil {
			lw.CloseWithError(err)
			return err
		}
		return lw.Close()
	})
	g.Go(func() error {
		err := pg.Wait()
		close(up.cand)
		// A failed backup leaves files its readers did not take: close
		// them (a daemon retries failed backups for days).
		for _, ch := range []chan *item{bigWork, smallWork} {
			for it := range ch {
				it.closeFile()
			}
		}
		return err
	})
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	return listing, problems, nil
}

// cacheWriter passes the listing on to the listing cache until a write
// fails, then drops the rest and keeps the error: the listing still reaches
// the vault, and the cache is not kept.
type cacheWriter struct {
	w   io.Writer
	err error
}

func (c *cacheWriter) Write(p []byte) (int, error) {
	if c.err == nil {
		if _, err := c.w.Write(p); err != nil {
			c.err = fmt.Errorf("write listing cache: %w", err)
		}
	}
	return len(p), nil
}

func listingOut(cache io.Writer, lw io.Writer) io.Writer {
	if cache == nil {
		return lw
	}
	return io.MultiWriter(cache, lw)
}

// The listing cache (the last committed listing, kept by the agent to find
// unchanged files) is written as an S2 stream: zstd's fastest level took
// about a third of the listing writer's time in a no-change backup of
// 100,000 small files, S2 a tenth of that, for a file about half again as
// large (docs/performance.md, "The listing cache in S2"). Caches written
// before are zstd streams and are still read.
var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// openCacheFile opens the listing cache at path ("": none) and returns its
// nodes and what closes it; nil nodes when there is no cache.
func openCacheFile(path string) (*tree.Reader, func(), error) {
	if path == "" {
		return nil, nil, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	tr, release, err := openListingCache(f)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return tr, func() { release(); f.Close() }, nil
}

// openListingCache returns the nodes of the listing cache f, S2 or zstd
// by its first bytes, and the function that releases its decompressor.
// The walk's previous listing and a renamed directory's second reader of
// it (renamed.go) both open it so.
func openListingCache(f io.Reader) (*tree.Reader, func(), error) {
	br := bufio.NewReaderSize(f, 64<<10)
	head, err := br.Peek(len(zstdMagic))
	if err != nil && err != io.EOF {
		return nil, nil, fmt.Errorf("read listing cache: %w", err)
	}
	var r io.Reader = s2.NewReader(br)
	release := func() {}
	if bytes.Equal(head, zstdMagic) {
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, fmt.Errorf("read listing cache: %w", err)
		}
		r, release = zr, zr.Close
	}
	tr, err := tree.NewReader(r)
	if err != nil {
		release()
		return nil, nil, err
	}
	return tr, release, nil
}
