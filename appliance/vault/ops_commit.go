package vault

import (
	"time"

	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"vaultnode/appliance/store"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// MaxClockSkew is how far an agent's start of a synchronization may be
// from the opening of its session before the vault records the opening
// instead (docs/protocol.md).
const MaxClockSkew = time.Hour

// Commits: a session's version, or a journal record on top of the last
// version. The catalog transaction is the single commit point; before it,
// nothing of the session is visible.

// Commit makes a session's listing the configuration's next version: every
// chunk it references must be stored; the totals are computed from the
// listing itself; the manifest goes into a pack and then into the catalog.
func (v *Vault) Commit(ctx context.Context, p *Principal, id string, req wire.Commit) (wire.Committed, error) {
	c, s, err := v.session(p, id)
	if err != nil {
		return wire.Committed{}, err
	}
	var facts factsGatherer // for the testing period's examination (testing.go)
	if cfg, err := v.Catalog.Config(c.ID, s.config); err == nil {
		facts.roots = cfgRoots(cfg.Paths)
	} // a configuration removed meanwhile is examined without its roots
	totals, same, err := v.sameAsNewest(s, c.ID, req.Listing)
	if err != nil {
		return wire.Committed{}, err
	}
	var learned *learnedListing
	if !same {
		learned = newLearned(req.Listing)
		known := v.knownFor(s, c.ID) // known.go
		if totals, err = v.checkListingKnown(ctx, s, c.keys, req.Listing, &facts, known, learned); err != nil {
			return wire.Committed{}, err
		}
	}
	s.mu.Lock()
	totals.ChunksSent, totals.BytesSent = s.chunksSent, s.bytesSent
	s.mu.Unlock()
	last, err := v.Catalog.LastSeq(c.ID, s.config)
	if err != nil {
		return wire.Committed{}, err
	}
	started := req.Started
	if started.IsZero() || started.Sub(s.started).Abs() > MaxClockSkew {
		// No start, or an agent whose clock is far off the vault's: the
		// vault's own time of the session's opening, so a fresh version
		// never looks stale (or from the future) on the vault.
		started = s.started
	}
	m := wire.Manifest{Magic: wire.ManifestMagic, Company: s.company, Computer: c.ID, Config: s.config,
		Seq: last + 1, Started: started.UTC(), Finished: v.clk.Now().UTC(), Listing: req.Listing, Totals: totals}
	mb, err := tree.Marshal(&m)
	if err != nil {
		return wire.Committed{}, err
	}
	eh := pack.EntryHeader{Kind: pack.KindManifest, ID: keys.NewHasher(c.keys.set.ChunkID).Sum(mb), PlainLen: uint32(len(mb))}
	data := pack.AppendEntry(nil, c.keys.aead, &eh, mb)
	v.protect(s, [][32]byte{eh.ID})
	if err := v.Store.Put(s.company, []store.Entry{{Header: eh, Data: data}}); err != nil {
		return wire.Committed{}, err
	}
	if err := v.pairGate(); err != nil { // pair.go
		return wire.Committed{}, err
	}
	release, err := v.holdOpen(s)
	if err != nil {
		return wire.Committed{}, err
	}
	err = v.Catalog.AddVersion(m, eh.ID)
	release()
	if err != nil {
		return wire.Committed{}, err
	}
	v.endSession(s)
	if !same { // else the newest version's facts, remembered or read when examined
		v.rememberFacts(c.ID, s.config, req.Listing, facts.finish())
		v.remember(c.ID, s.config, learned.record(m.Seq))
	} else {
		v.renumber(c.ID, s.config, last, m.Seq)
	}
	trusted := -1 // the listing was the newest version's: nothing read
	if learned != nil {
		trusted = learned.known
	}
	v.log.Info("version committed", zap.String("computer", c.ID), zap.String("config", s.config), zap.Uint64("seq", m.Seq),
		zap.Int64("files", totals.Files), zap.Int64("bytes", totals.Bytes), zap.Int64("bytes_sent", totals.BytesSent),
		zap.Int("references_known", trusted))
	v.pokeNotify() // a new version may make the computer protected, or bring warnings (notify.go)
	return wire.Committed{Seq: m.Seq}, nil
}

// AddJournal records a continuous-mode journal record on top of the
// configuration's last version, checked like a commit. A record time in
// the future (or none) becomes the vault's now.
func (v *Vault) AddJournal(ctx context.Context, p *Principal, id string, req wire.JournalCommit) (wire.Journal, error) {
	c, s, err := v.session(p, id)
	if err != nil {
		return wire.Journal{}, err
	}
	base, err := v.Catalog.LastSeq(c.ID, s.config)
	if err != nil {
		return wire.Journal{}, err
	}
	if base == 0 {
		return wire.Journal{}, fail(http.StatusConflict, wire.CodeBadRequest, "configuration %q has no version yet: commit a full synchronization before journal records", s.config)
	}
	totals, err := v.checkListing(ctx, s, c.keys, req.Listing)
	if err != nil {
		return wire.Journal{}, err
	}
	t := req.Time
	if t.IsZero() || t.After(v.clk.Now()) {
		t = v.clk.Now()
	}
	if err := v.pairGate(); err != nil { // pair.go
		return wire.Journal{}, err
	}
	release, err := v.holdOpen(s)
	if err != nil {
		return wire.Journal{}, err
	}
	defer release()
	return v.Catalog.AddJournal(c.ID, s.config, wire.Journal{Base: base, Time: t.UTC(), Listing: req.Listing, Totals: totals})
}

// testHookLookups, set by tests, is told how many references a commit's
// check looks up, batch by batch.
var testHookLookups func(ids int)

var testHookMu sync.Mutex

// testHookBeforeRecord, set by tests, runs in a commit or journal record
// after its checks and before holdOpen.
var testHookBeforeRecord func()

// holdOpen is taken by a commit or journal record before it writes its
// catalog record: it checks that the session is still open and holds the
// record barrier shared until release. A session that ended while its
// commit was being checked (expired, or replaced when its agent restarted)
// may have lost its protect set outside any collection, and a collection
// that started since may not have seen this version: its chunks may be
// gone, so the commit is refused. A session still open here stays
// protected: if it ends during a collection, its protect set is retired;
// a collection that starts later waits at the barrier (Collect) until the
// record is written, so its mark sees it.
func (v *Vault) holdOpen(s *session) (release func(), err error) {
	if testHookBeforeRecord != nil {
		testHookBeforeRecord()
	}
	v.recordMu.RLock()
	v.smu.Lock()
	open := v.sessions[s.id] == s
	v.smu.Unlock()
	if !open {
		v.recordMu.RUnlock()
		return nil, fail(http.StatusNotFound, wire.CodeUnknownSession,
			"session %q ended while its commit was checked (expired, or replaced by a new session): open a new session and commit again", s.id)
	}
	return v.recordMu.RUnlock, nil
}

// sameAsNewest answers the newest version's totals when a commit's listing
// is that version's (a no-change backup): every chunk it references is then
// stored, so the listing is neither read nor looked up again. The session
// first protects its whole company until it ends, and only then checks that
// the version is still there: one that a prune took meanwhile may have lost
// chunks to a collection, and the listing is checked as any other. A
// quarantined chunk anywhere in the company also means the listing is
// checked, so that the commit still asks the agent for a damaged chunk's
// good copy (TestDamageHeals).
func (v *Vault) sameAsNewest(s *session, computer string, listing []tree.ChunkRef) (wire.Totals, bool, error) {
	newest := func() (wire.Manifest, bool) {
		m, ok, err := v.Catalog.Newest(computer, s.config)
		if err != nil {
			v.log.Warn("commit: the newest version is unreadable; the listing is checked in full", zap.Error(err))
		}
		return m, ok && err == nil && sameListing(m.Listing, listing)
	}
	m, ok := newest()
	if !ok {
		return wire.Totals{}, false, nil
	}
	if q, err := v.Store.AnyQuarantined(s.company); err != nil || q {
		return wire.Totals{}, false, err
	}
	v.gcMu.RLock()
	s.mu.Lock()
	s.protect.saturate()
	s.mu.Unlock()
	v.gcMu.RUnlock()
	again, ok := newest()
	if !ok || again.Seq != m.Seq {
		return wire.Totals{}, false, nil
	}
	t := m.Totals
	t.ChunksSent, t.BytesSent = 0, 0 // the session's, set by the caller
	return t, true, nil
}

// checkListing reads a version's listing and checks that every chunk it
// references is in the store; it returns the version's totals, computed
// from the listing itself.
// Every id is protected from garbage collection for the session's life
// before the store is asked for it (gc.go).
func (v *Vault) checkListing(ctx context.Context, s *session, k *companyKeys, listing []tree.ChunkRef) (wire.Totals, error) {
	return v.checkListingFacts(ctx, s, k, listing, nil)
}

// checkListingFacts is checkListing that also hands every node to facts
// when not nil.
func (v *Vault) checkListingFacts(ctx context.Context, s *session, k *companyKeys, listing []tree.ChunkRef, facts *factsGatherer) (wire.Totals, error) {
	return v.checkListingKnown(ctx, s, k, listing, facts, nil, nil)
}

// checkListingKnown is checkListingFacts that notes in learned (when not
// nil) where each listing chunk's first node begins, and does not look up
// the references of a node lying wholly inside a chunk that known (when not
// nil) trusts (known.go).
func (v *Vault) checkListingKnown(ctx context.Context, s *session, k *companyKeys, listing []tree.ChunkRef, facts *factsGatherer,
	known *knownListing, learned *learnedListing) (wire.Totals, error) {
	var t wire.Totals
	company := s.company
	if len(listing) == 0 {
		return t, fail(http.StatusBadRequest, wire.CodeBadRequest, "commit: empty listing")
	}
	lr := v.listingReader(company, k, listing, s)
	defer lr.Close() // stops the reader's goroutine when we return early
	rd, err := tree.NewListingReader(lr, listing)
	if err != nil {
		return t, listingErr(err)
	}
	rd.Reuse() // each node is counted, looked up and handed to facts (which copies what it keeps), then dropped
	// The store lookups of one batch of ids run on another core while the
	// next batch is decoded (docs/performance.md, "Listing nodes through
	// reflection"). The checker holds one batch, the decoder fills the
	// other.
	check := func(ids [][32]byte) error {
		if testHookLookups != nil {
			testHookMu.Lock() // a second decoder looks up too (commit_split.go)
			testHookLookups(len(ids))
			testHookMu.Unlock()
		}
		has, err := v.hasProtected(s, ids)
		if err != nil {
			return err
		}
		for i, h := range has {
			if !h {
				return fail(http.StatusConflict, wire.CodeMissingChunk, "commit: the listing references chunk %x that the vault lacks: upload it first", ids[i][:8])
			}
		}
		return nil
	}
	// Past warmIndexFraction of the index's pages in ids the commit will
	// have touched a good part of the index's leaves: the rest is read
	// whole, sequentially, before the next lookups (Store.WarmIndex).
	warmAt := int64(-1)
	if pages, err := v.Store.IndexPages(); err == nil {
		warmAt = max(pages/warmIndexFraction, listingLookupBatch)
	}
	batches := make(chan [][32]byte)
	checked := make(chan error, 1)
	var failed atomic.Bool
	go func() {
		var err error
		var seen int64
		// The index is read ahead beside the lookups, stopped when they
		// are done.
		stopWarm := make(chan struct{})
		var warmed chan struct{}
		for ids := range batches {
			if err == nil {
				seen += int64(len(ids))
				if warmAt >= 0 && seen >= warmAt {
					warmAt = -1
					warmed = make(chan struct{})
					go func() {
						defer close(warmed)
						if werr := v.Store.WarmIndex(stopWarm); werr != nil {
							v.log.Warn("commit: reading the index ahead failed; its lookups read it page by page", zap.Error(werr))
						}
					}()
				}
				if err = check(ids); err != nil {
					failed.Store(true)
				}
			}
		}
		close(stopWarm)
		if warmed != nil {
			<-warmed
		}
		checked <- err
	}()
	// finish waits for the checker; its error concerns an earlier part of
	// the listing than one the decoder meets, so it comes first.
	finished := false
	finish := func(err error) error {
		if !finished {
			finished = true
			close(batches)
			if cerr := <-checked; cerr != nil {
				return cerr
			}
		}
		return err
	}
	defer finish(nil)
	// A second decoder takes the listing's second half when the newest
	// version's record says where it likely begins (commit_split.go).
	var sp *listingSplit
	if known != nil && learned != nil {
		sp = v.startSplit(ctx, s, k, listing, facts, known, check)
	}
	defer func() {
		if sp != nil {
			sp.stop()
		}
	}()
	var last []byte // the last node's path, while a second decoder runs
	bufs := [2][][32]byte{make([][32]byte, 0, listingLookupBatch), make([][32]byte, 0, listingLookupBatch)}
	cur := 0
	pending := bufs[cur]
	flush := func() error {
		// The checker took the other buffer only after it was done with
		// the one it held before: the decoder may fill that again.
		batches <- pending
		cur = 1 - cur
		pending = bufs[cur][:0]
		if failed.Load() {
			return errLookupFailed // the checker's own error comes from finish
		}
		return nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return t, finish(err)
		}
		start := rd.Offset()
		if sp != nil && start >= sp.seam {
			if start == sp.seam {
				if tail, ok := sp.wait(last); ok {
					joinTail(&t, facts, learned, tail, sp.j)
					if testHookSplit != nil {
						testHookSplit(true)
					}
					break
				}
			}
			sp.stop() // not a node boundary, or a fault after it: read on alone
			sp = nil
			if testHookSplit != nil {
				testHookSplit(false)
			}
		}
		n, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return t, finish(listingErr(err))
		}
		if sp != nil {
			last = append(last[:0], n.Path...)
		}
		trusted := learned != nil && learned.trusted(learned.node(start, rd.Offset()), known)
		if tallyNode(&t, facts, learned, n, trusted, &pending, flush) != nil {
			return t, finish(nil)
		}
	}
	if len(pending) > 0 {
		flush() // a lookup failure comes from finish
	}
	return t, finish(nil)
}

// tallyNode counts n into t and hands it to facts (when not nil). A node
// whose chunks are trusted counts them known in learned; the ids of any
// other are appended to pending, each full batch handed to flush, whose
// error ends the walk. Both decoders of a commit (commit_split.go) use it.
func tallyNode(t *wire.Totals, facts *factsGatherer, learned *learnedListing, n *tree.Node, trusted bool,
	pending *[][32]byte, flush func() error) error {
	if facts != nil {
		facts.add(n)
	}
	countNode(t, n)
	if trusted {
		learned.known += len(n.Chunks)
		return nil
	}
	for _, c := range n.Chunks {
		*pending = append(*pending, c.ID)
		if len(*pending) == listingLookupBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// errLookupFailed stops a commit's decoder once its checker failed.
var errLookupFailed = errors.New("commit: a lookup failed")

// listingLookupBatch is how many ids a commit looks up at once (Store.Has
// walks them in key order): two batches of 32-byte ids, 1 MiB, at a time.
const listingLookupBatch = 16384

// warmIndexFraction: a commit that looks up more ids than the index has
// pages over this has the index read ahead whole (Store.WarmIndex). Each
// lookup in a cold index reads a leaf page alone; reading the file in large
// sequential reads costs about as much as a few per cent of its pages read
// one at a time.
const warmIndexFraction = 16

func listingErr(err error) error {
	var ae *apiError
	if errors.As(err, &ae) {
		return err
	}
	var se *storeReadError
	if errors.As(err, &se) {
		if errors.Is(err, store.ErrNotFound) {
			return fail(http.StatusConflict, wire.CodeMissingChunk, "commit: listing chunk %x is missing: upload it first", se.id[:8])
		}
		return err // the vault could not read its own store: internal, logged
	}
	if tree.IsLimit(err) {
		return fail(http.StatusBadRequest, wire.CodeLimit, "commit: listing over a limit (docs/protocol.md, Limits): %v", err)
	}
	return fail(http.StatusBadRequest, wire.CodeBadRequest, "commit: bad listing: %v", err)
}

// storeReadError is the vault failing to read a listing chunk from its
// store, as opposed to the listing being bad.
type storeReadError struct {
	id  [32]byte
	err error
}

func (e *storeReadError) Error() string { return fmt.Sprintf("listing chunk %x: %v", e.id[:8], e.err) }
func (e *storeReadError) Unwrap() error { return e.err }

// listingAhead is how many listing chunks listingReader reads at once: a
// listing's chunks lie scattered over packs the page cache may no longer
// hold, and one cold read at a time left a no-change commit of 50,000 files
// waiting on 130 of them in turn (docs/performance.md, "Listing chunks
// read ahead").
const listingAhead = 4

// listingAheadMax is the largest listing chunk read ahead of others; a
// larger one is read alone, so reading ahead holds at most listingAhead
// chunks of this size, or one larger.
const listingAheadMax = 256 << 10

// listingCost is how many of listingAhead's places the chunk takes.
func listingCost(ref tree.ChunkRef) int {
	if ref.Len > listingAheadMax {
		return listingAhead
	}
	return 1
}

// listingReader streams the plaintext of a listing's chunks. The caller
// closes it, which also ends its goroutines. With a session, each chunk is
// protected for the session's life before it is read (gc.go). From the
// first Read on, up to listingAhead chunks are read, opened and checked at
// once, and written in order; nothing is read before (a caller may refuse
// the listing's references first).
func (v *Vault) listingReader(company string, k *companyKeys, refs []tree.ChunkRef, s *session) io.ReadCloser {
	pr, pw := io.Pipe()
	lp := &listingPipe{PipeReader: pr, done: make(chan struct{})}
	lp.start = func() { v.readListing(company, k, refs, s, pw, lp.done) }
	return lp
}

// readListing feeds pw with the plaintext of refs, then closes done.
func (v *Vault) readListing(company string, k *companyKeys, refs []tree.ChunkRef, s *session, pw *io.PipeWriter, done chan struct{}) {
	type fetched struct {
		sealed []byte // as stored: maybe compressed
		loc    store.Location
		err    error
	}
	// Chunk i travels through slots[i%listingAhead]; the dispatcher hands
	// out chunk i only once chunk i-listingAhead was written (once all
	// before it were, for a large one: listingCost), so each slot holds at
	// most one and at most listingAhead read buffers exist (they go round
	// through free). Only the reads run ahead: one buffer holds the
	// plaintext, opened and checked in order.
	var slots [listingAhead]chan fetched
	for i := range slots {
		slots[i] = make(chan fetched, 1)
	}
	free := make(chan []byte, listingAhead)
	taken := make(chan struct{}, listingAhead)
	for range listingAhead {
		free <- nil
		taken <- struct{}{}
	}
	stop := make(chan struct{})
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(listingAhead, len(refs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				ref := refs[i]
				if s != nil {
					v.protect(s, [][32]byte{ref.ID})
				}
				buf, loc, err := v.Store.Get(company, k.aead, ref.ID, (<-free)[:0])
				select {
				case slots[i%listingAhead] <- fetched{sealed: buf, loc: loc, err: err}:
				case <-stop:
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(next)
		for i := range refs {
			for range listingCost(refs[i]) {
				select {
				case <-taken:
				case <-stop:
					return
				}
			}
			select {
			case next <- i:
			case <-stop:
				return
			}
		}
	}()
	go func() {
		defer close(done)
		defer wg.Wait()
		defer close(stop)
		h := keys.NewHasher(k.set.ChunkID)
		var plain []byte
		for i, ref := range refs {
			f := <-slots[i%listingAhead]
			err := f.err
			if err == nil {
				plain, err = wire.Decompress(plain[:0], f.loc.Flags, f.sealed, f.loc.PlainLen)
			}
			if err == nil && h.Sum(plain) != ref.ID {
				err = fmt.Errorf("%w: listing chunk %x does not hash to its id", store.ErrDamaged, ref.ID[:8])
			}
			if err != nil {
				pw.CloseWithError(&storeReadError{id: ref.ID, err: err})
				return
			}
			free <- f.sealed
			if _, err := pw.Write(plain); err != nil {
				return
			}
			for range listingCost(ref) {
				taken <- struct{}{}
			}
		}
		pw.Close()
	}()
}

// listingPipe is the reading end of listingReader; its first Read starts
// the reading, and Close also waits for the goroutines that feed it, so no
// chunk is still being read (and no memory still being taken) once a
// refused commit has returned.
type listingPipe struct {
	*io.PipeReader
	start func()
	once  sync.Once
	done  chan struct{}
}

func (p *listingPipe) Read(b []byte) (int, error) {
	p.once.Do(p.start)
	return p.PipeReader.Read(b)
}

func (p *listingPipe) Close() error {
	p.once.Do(func() { close(p.done) }) // never started
	err := p.PipeReader.Close()
	<-p.done
	return err
}
