package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.etcd.io/bbolt"
	"go.uber.org/zap"

	"vaultnode/internal/clock"
	"vaultnode/internal/pack"
)

// Options configure a store.
type Options struct {
	// Keys returns the cipher of a company's pack key. With it, entries the
	// index does not yet hold are authenticated before Open or Rebuild
	// indexes them; without it (or when it fails for a company) only their
	// headers are checked, and verify finds a bad body later.
	Keys func(company string) (*pack.Sealer, error)
	// Clock stamps quarantine and heal records; the real clock if nil.
	Clock clock.Clock
	// LockTimeout is how long Open waits for another process to release
	// index.db before it gives up with ErrInUse (default 2 s).
	LockTimeout time.Duration
	// Progress, if set, is called after each pack Open indexes whole (all
	// of them when index.db is missing); Open also logs the progress.
	Progress func(RebuildProgress)
	// Packs holds the pack files; DiskPacks in DIR/packs if nil.
	Packs Packs
	// Replicate, if set, is given the entries of every commit of new
	// entries (not garbage collection's copies) after they are durable
	// here and before Put or Commit returns: whole sealed entries, as
	// they lie in the pack (appliance/pair copies them to the other data
	// member). Its error is the commit's: the entries stay stored here
	// and a later copy (catch-up) brings them over.
	Replicate func(company string, entries *io.SectionReader) error
	// Replica, if set, replaces Replicate with a copy made while the
	// entries are written: it is called at an appender's first Add (not
	// for garbage collection's copies nor a replica's own) and told every
	// entry, so the other member writes them meanwhile and syncs them
	// while this one does (appliance/pair).
	Replica func(company string) Replica
	// DirectReads lets a ReadStream read the spans of a download that the
	// page cache lacks with O_DIRECT (coldread.go); off: every entry is
	// read through the cache.
	DirectReads bool
}

// Replica is the copy of one appender's new entries to another member,
// made as they are written. Its error at Commit is the commit's, as
// Replicate's is.
type Replica interface {
	// Add copies one whole sealed entry; data is the caller's again when
	// Add returns.
	Add(data []byte)
	// AddOwned is Add of an entry the caller gives away: the replica
	// sends data itself, without a copy, and calls release once it no
	// longer needs it (at the latest when Commit or Abort returns).
	AddOwned(data []byte, release func())
	// End says no more entries come, before this member syncs them.
	End()
	// Commit returns once the entries, all of which lie in entries here
	// (durable now), are durable on the other member too, or the copy
	// failed for good.
	Commit(entries *io.SectionReader) error
	// Abort drops the copy: nothing here is committed.
	Abort()
}

// Open opens or creates the store in dir and recovers from any crash: it
// indexes what the index lacks (a missing index.db is rebuilt from every
// pack, with progress logged) and cuts torn tails; it never removes a
// pack.
func Open(dir string, log *zap.Logger, opts Options) (*Store, error) {
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = 2 * time.Second
	}
	if opts.Packs == nil {
		d, err := NewDiskPacks(filepath.Join(dir, "packs"))
		if err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		opts.Packs = d
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	path := filepath.Join(dir, "index.db")
	_, err := os.Stat(path)
	missing := errors.Is(err, fs.ErrNotExist)
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout: opts.LockTimeout, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType,
	})
	if errors.Is(err, bbolt.ErrTimeout) {
		return nil, fmt.Errorf("open index %s: %w (is vaultd running on this directory?)", path, ErrInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("open index %s: %w: stop the vault and run `vaultctl rebuild-index` to rebuild it from the packs", path, err)
	}
	s := &Store{dir: dir, db: db, log: log, opts: opts, packs: opts.Packs, free: map[string][]*writer{}, readers: map[uint32]*packFile{}}
	if missing {
		// A new store has no packs either: only a lost index is news.
		if files, err := s.packFiles(context.Background()); err != nil || len(files) > 0 {
			log.Warn("index.db is missing: rebuilding it from the packs", zap.String("index", path), zap.Int("packs", len(files)))
		}
	}
	if err := s.recover(context.Background()); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.recount(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// packFiles lists the packs by number, with their sizes.
func (s *Store) packFiles(ctx context.Context) (map[uint32]int64, error) {
	files := map[uint32]int64{}
	err := s.packs.List(ctx, func(n uint32, size int64) error {
		files[n] = size
		return nil
	})
	return files, err
}

func createBuckets(tx *bbolt.Tx) error {
	for _, b := range [][]byte{bucketPacks, bucketChunks, bucketMeta, bucketQuarantine, bucketHealed} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("index bucket %s: %w", b, err)
		}
	}
	return nil
}

// recover brings the index up to the packs: a pack longer than its
// committed length has its complete entries past it indexed and a torn
// tail cut; a pack the index does not know is indexed whole.
func (s *Store) recover(ctx context.Context) error {
	known := map[uint32]packRecord{}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if err := createBuckets(tx); err != nil {
			return err
		}
		if v := tx.Bucket(bucketMeta).Get(keyNextPack); v != nil {
			n, err := parseNextPack(v)
			if err != nil {
				s.log.Warn("ignoring a malformed index record: the next pack number is taken from the pack files",
					zap.String("bucket", "meta"), zap.String("key", string(keyNextPack)), zap.Error(err))
			}
			s.nextPack = n
		}
		return tx.Bucket(bucketPacks).ForEach(func(k, v []byte) error {
			n, err := parsePackKey(k)
			if err != nil {
				s.log.Warn("skipping a malformed index record", zap.String("bucket", "packs"), zap.Error(err))
				return nil
			}
			r, err := parsePackRecord(v)
			if err != nil {
				s.log.Warn("malformed index record of a pack: the pack is scanned again",
					zap.String("bucket", "packs"), zap.String("pack", fmt.Sprintf("%08x", n)), zap.Error(err))
				return nil
			}
			known[n] = r
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("read index: %w", err)
	}
	files, err := s.packFiles(ctx)
	if err != nil {
		return err
	}
	for n := range known {
		if _, ok := files[n]; !ok {
			s.log.Error("the index names a pack whose file is missing: run `vaultctl verify` to see what it held",
				zap.String("pack", s.PackPath(n)))
		}
	}
	doomed, err := s.doomed()
	if err != nil {
		return fmt.Errorf("read index: %w", err)
	}
	var unknown []uint32
	for _, n := range slices.Sorted(mapKeys(files)) {
		p := s.PackPath(n)
		if n >= s.nextPack {
			s.nextPack = n + 1
		}
		r, ok := known[n]
		if !ok && slices.Contains(doomed, n) {
			// Garbage collection decided to remove it (nothing in it is
			// live) and a crash came before the file went: the next
			// collection finishes the removal.
			s.log.Info("pack awaiting removal by the next collection", zap.String("pack", p))
			continue
		}
		if !ok {
			unknown = append(unknown, n)
			continue
		}
		switch size := files[n]; {
		case size < int64(r.Committed):
			s.log.Error("pack is shorter than its committed length: left as it is; run `vaultctl verify` to see what is lost",
				zap.String("pack", p), zap.Int64("size", size), zap.Uint64("committed", r.Committed))
		case size > int64(r.Committed):
			s.log.Info("indexing entries past the committed length of a pack", zap.String("pack", p),
				zap.Int64("size", size), zap.Uint64("committed", r.Committed))
			if _, err := s.indexPack(ctx, n, r.Company, int64(r.Committed)); err != nil {
				return err
			}
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	s.log.Info("indexing packs the index does not know", zap.Int("packs", len(unknown)))
	_, err = s.indexPacks(ctx, unknown, func(p RebuildProgress) {
		if s.opts.Progress != nil {
			s.opts.Progress(p)
		}
		if p.Done == p.Packs || p.Done%64 == 0 {
			s.log.Info("indexing packs", zap.Int("done", p.Done), zap.Int("packs", p.Packs),
				zap.Int64("entries", p.Entries), zap.Int64("bytes", p.Bytes))
		}
	})
	return err
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// RebuildProgress is reported after each pack a rebuild indexed.
type RebuildProgress struct {
	Packs   int   // packs to index
	Done    int   // packs indexed so far
	Entries int64 // entries indexed so far
	Bytes   int64 // pack bytes scanned so far
	Cut     int64 // bytes of torn tails cut so far
	Skipped int   // entries left out: bad seal, or damaged bytes
}

func (s *Store) indexPacks(ctx context.Context, ns []uint32, progress func(RebuildProgress)) (RebuildProgress, error) {
	pr := RebuildProgress{Packs: len(ns)}
	for _, n := range ns {
		st, err := s.indexPack(ctx, n, "", pack.FileHeaderSize)
		if err != nil {
			return pr, err
		}
		pr.Done++
		pr.Entries += st.entries
		pr.Bytes += st.bytes
		pr.Cut += st.cut
		pr.Skipped += st.skipped
		if progress != nil {
			progress(pr)
		}
	}
	return pr, nil
}

// Rebuild throws the index away and rebuilds it from the packs alone
// (quarantine records go too: the next verify finds the damage again). It
// waits for appends in flight and holds off new ones. A crash at any
// instant leaves an index that the next Open completes. progress, if not
// nil, is called after each pack.
func (s *Store) Rebuild(ctx context.Context, progress func(RebuildProgress)) (RebuildProgress, error) {
	s.busy.Lock()
	defer s.busy.Unlock()
	s.mu.Lock()
	for _, ws := range s.free {
		for _, w := range ws {
			w.f.Close()
		}
	}
	s.free = map[string][]*writer{}
	s.writing = map[uint32]bool{}
	s.mu.Unlock()
	doomed, err := s.doomed()
	if err != nil {
		return RebuildProgress{}, fmt.Errorf("rebuild index: %w", err)
	}
	err = s.db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketPacks, bucketChunks, bucketQuarantine, bucketHealed} {
			if err := tx.DeleteBucket(b); err != nil && !errors.Is(err, bbolt.ErrBucketNotFound) {
				return fmt.Errorf("drop index bucket %s: %w", b, err)
			}
		}
		return createBuckets(tx)
	})
	if err != nil {
		return RebuildProgress{}, fmt.Errorf("rebuild index: %w", err)
	}
	files, err := s.packFiles(ctx)
	if err != nil {
		return RebuildProgress{}, err
	}
	for _, n := range doomed {
		delete(files, n) // nothing live: the next collection removes it
	}
	ns := slices.Sorted(mapKeys(files))
	s.log.Info("rebuilding the index from the packs", zap.Int("packs", len(ns)))
	pr, err := s.indexPacks(ctx, ns, progress)
	if err != nil {
		return pr, fmt.Errorf("rebuild index: %w", err)
	}
	s.log.Info("index rebuilt", zap.Int("packs", pr.Done), zap.Int64("entries", pr.Entries), zap.Int("skipped", pr.Skipped))
	return pr, s.recount()
}

type packStats struct {
	entries, bytes, cut int64
	skipped             int
}

// indexPack scans pack n from offset from and records every complete,
// good entry the index lacks, then the pack's new committed length. A
// torn entry at the tail is cut; damaged bytes followed by good entries
// are left in place and skipped. company "" means the index has no record
// of the pack: its header says whose it is.
func (s *Store) indexPack(ctx context.Context, n uint32, company string, from int64) (packStats, error) {
	var st packStats
	path := s.PackPath(n)
	f, err := s.packs.OpenWriter(ctx, n)
	if err != nil {
		return st, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return st, fmt.Errorf("stat pack %s: %w", path, err)
	}
	if size >= maxCommitted {
		// Index offsets are 32 bits; the vault never writes such a pack.
		s.log.Error("pack file larger than any pack the vault writes: left alone and not indexed",
			zap.String("pack", path), zap.Int64("size", size), zap.Int64("limit", maxCommitted-1))
		return st, nil
	}
	if company == "" {
		hb := make([]byte, pack.FileHeaderSize)
		_, err := f.ReadAt(hb, 0)
		var h pack.FileHeader
		if err == nil {
			h, err = pack.ParseFileHeader(hb)
		}
		if err != nil {
			s.log.Error("not a readable pack: left alone and not indexed", zap.String("pack", path), zap.Error(eofErr(err)))
			return st, nil
		}
		if h.Number != n {
			s.log.Warn("pack header names another pack number; indexed under its file name",
				zap.String("pack", path), zap.Uint32("header_number", h.Number))
		}
		company = h.Company
	}
	var aead *pack.Sealer
	if s.opts.Keys != nil {
		if aead, err = s.opts.Keys(company); err != nil {
			s.log.Warn("no key for the pack's company: entries are checked by their headers only",
				zap.String("pack", path), zap.String("company", company), zap.Error(err))
			aead = nil
		}
	}
	type found struct {
		id  [32]byte
		loc Location
	}
	var entries []found
	var scratch []byte
	end := size
	w := &walker{f: f, name: path}
	err = w.walk(ctx, from, size, aead != nil, func(off int64, h *pack.EntryHeader, body []byte) error {
		if aead != nil {
			var err error
			if scratch, err = pack.OpenBody(scratch[:0], aead, h, body); err != nil {
				st.skipped++
				s.log.Warn("entry fails authentication: not indexed", zap.String("pack", path), zap.Int64("offset", off),
					zap.String("chunk", fmt.Sprintf("%x", h.ID[:8])))
				return nil
			}
		}
		entries = append(entries, found{h.ID, Location{Pack: n, Offset: uint32(off), BodyLen: h.BodyLen,
			PlainLen: h.PlainLen, Kind: h.Kind, Flags: h.Flags}})
		return nil
	}, func(sp Span) error {
		if sp.Torn {
			end = sp.Offset
			return nil
		}
		st.skipped++
		s.log.Warn("damaged bytes in a pack: left in place, the entries after them are indexed", zap.String("pack", path),
			zap.Int64("offset", sp.Offset), zap.Int64("next_entry", sp.Next), zap.Error(sp.Err))
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("scan pack %s: %w", path, err)
	}
	if end < size {
		// Only an entry cut short or with a broken header, with nothing
		// valid after it: the remains of an append that was never synced,
		// hence never acknowledged.
		s.log.Warn("cutting a torn entry at the tail of a pack", zap.String("pack", path),
			zap.Int64("offset", end), zap.Int64("size", size))
		if err := f.Truncate(ctx, end); err != nil {
			return st, fmt.Errorf("cut torn tail of pack %s: %w", path, err)
		}
		st.cut = size - end
	}
	// What is indexed must be durable first: the entries found may never
	// have been synced.
	if err := f.Sync(ctx); err != nil {
		return st, fmt.Errorf("sync pack %s: %w", path, err)
	}
	now := s.opts.Clock.Now().Unix()
	err = s.db.Update(func(tx *bbolt.Tx) error {
		cb, err := tx.Bucket(bucketChunks).CreateBucketIfNotExists([]byte(company))
		if err != nil {
			return fmt.Errorf("index bucket chunks/%s: %w", company, err)
		}
		for _, e := range entries {
			if err := putChunk(tx, cb, company, e.id, e.loc, now); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketPacks).Put(packKey(n), packRecord{Company: company, Committed: uint64(end)}.marshal()); err != nil {
			return err
		}
		mb := tx.Bucket(bucketMeta)
		if cur, err := parseNextPack(mb.Get(keyNextPack)); err != nil || cur <= n {
			return mb.Put(keyNextPack, packKey(n+1))
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("index pack %s: %w", path, err)
	}
	st.entries, st.bytes = int64(len(entries)), end
	return st, nil
}

// putChunk records a chunk's location unless the index already holds a
// good one: a record that is malformed, or quarantined at another
// location, is replaced (the chunk healed).
func putChunk(tx *bbolt.Tx, cb *bbolt.Bucket, company string, id [32]byte, loc Location, now int64) error {
	if v := cb.Get(id[:]); v != nil {
		if _, err := parseLocation(v); err == nil {
			qb := tx.Bucket(bucketQuarantine).Bucket([]byte(company))
			if qb == nil {
				return nil
			}
			qv := qb.Get(id[:])
			if qv == nil {
				return nil // stored meanwhile by another session: keep the first
			}
			if q, err := parseQuarantine(qv); err == nil && q.Pack == loc.Pack && q.Offset == loc.Offset {
				return nil // the damaged entry itself
			}
			if err := qb.Delete(id[:]); err != nil {
				return err
			}
			hb, err := tx.Bucket(bucketHealed).CreateBucketIfNotExists([]byte(company))
			if err != nil {
				return err
			}
			if err := hb.Put(id[:], binaryTime(now)); err != nil {
				return err
			}
		}
	}
	return cb.Put(id[:], loc.marshal())
}
