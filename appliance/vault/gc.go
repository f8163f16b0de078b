package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/jobs"
	"vaultnode/appliance/store"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// Garbage collection: removes the chunks no live version, journal record
// or open session references, while backups run. The plan and the
// ordering rules are in docs/format.md ("Deletion ordering"); in short:
//
//  1. The collection starts: from now on every session that ends hands its
//     protect set to the collection (retired), instead of dropping it.
//  2. Snapshot: the ids of every index record now (S0). Only these may be
//     swept: a chunk stored after this instant survives.
//  3. Mark: every chunk reachable from the catalog's versions (manifest,
//     listing chunks, file chunks) and journal records, in explicit sets.
//  4. Sweep S0 minus the marks, in batches, each under gcMu held
//     exclusively, skipping whatever an open or retired session protects.
//     A session adds ids to its protect set and asks the store whether it
//     has them under gcMu held shared (hasProtected), so a lack or commit
//     check either saw the chunk protected by the sweep or saw it gone
//     (and answered "lacking" or missing_chunk): never "present" for a
//     chunk that is then swept.
//  5. Packs whose dead share passes the threshold are rewritten (the copy
//     synced and indexed before the old pack goes) or removed, through
//     the store's Packs.
//
// A listing that cannot be read (damaged) stops the sweep of its company:
// what it references is unknown.

// DefaultRepackThreshold is the dead share past which a pack is rewritten.
const DefaultRepackThreshold = 0.1

// DefaultCollectDuty is the share of the time a collection works while a
// backup session is open: after each unit of work (a version marked, a
// sweep batch, a pack rewritten) it pauses so that backups keep most of
// the disk and the processors. With no session open it works flat out.
const DefaultCollectDuty = 0.25

// pace pauses after a unit of work that began at start, while a backup
// session is open (DefaultCollectDuty).
func (v *Vault) pace(ctx context.Context, start time.Time) error {
	v.smu.Lock()
	busy := len(v.sessions) > 0
	v.smu.Unlock()
	if !busy {
		return ctx.Err()
	}
	duty := v.opts.CollectDuty
	if duty <= 0 || duty > 1 {
		duty = DefaultCollectDuty
	}
	d := time.Duration(float64(v.clk.Now().Sub(start)) * (1 - duty) / duty)
	if d <= 0 {
		return ctx.Err()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-v.clk.After(min(d, 2*time.Second)):
		return nil
	}
}

// ErrCollecting is a collection started while another runs.
var ErrCollecting = errors.New("a garbage collection is already running")

// CollectResult is what a collection did.
type CollectResult struct {
	Companies      int           `json:"companies"`
	Chunks         int64         `json:"chunks"`          // index records before
	Marked         int64         `json:"marked"`          // chunks of the snapshot reachable from the catalog
	Swept          int64         `json:"swept"`           // records removed
	SweptBytes     int64         `json:"swept_bytes"`     // their pack bytes
	Protected      int64         `json:"protected"`       // unmarked, kept for an open session
	PacksRewritten int           `json:"packs_rewritten"` // packs copied and removed
	PacksRemoved   int           `json:"packs_removed"`   // packs removed with nothing live
	MovedBytes     int64         `json:"moved_bytes"`
	Reclaimed      int64         `json:"reclaimed"`   // pack bytes given back
	StoreBytes     int64         `json:"store_bytes"` // committed bytes of every pack, after
	LiveBytes      int64         `json:"live_bytes"`  // bytes of entries the index names, after
	Skipped        []string      `json:"skipped,omitempty"`
	Took           time.Duration `json:"took"`
}

// CollectJob is garbage collection as a job of appliance/jobs: register it
// with runner.Register(jobs.KindCollect, v.CollectJob).
func (v *Vault) CollectJob(ctx context.Context, p *jobs.Progress) (any, error) {
	return v.Collect(ctx, p)
}

// hasProtected adds ids to a session's protect set and asks the store
// whether it holds them, as one step against a sweep batch.
func (v *Vault) hasProtected(s *session, ids [][32]byte) ([]bool, error) {
	v.gcMu.RLock()
	defer v.gcMu.RUnlock()
	v.protectIDs(s, ids)
	return v.Store.Has(s.company, ids)
}

// protect adds ids to a session's protect set.
func (v *Vault) protect(s *session, ids [][32]byte) {
	v.gcMu.RLock()
	v.protectIDs(s, ids)
	v.gcMu.RUnlock()
}

func (v *Vault) protectIDs(s *session, ids [][32]byte) {
	s.mu.Lock()
	was := s.protect.all
	s.protect.add(ids...)
	now := s.protect.all
	s.mu.Unlock()
	if now && !was {
		v.log.Info("a session names more chunks than its protect set keeps: a collection while it is open, or ending, sweeps nothing of its company",
			zap.String("company", s.company), zap.String("session", s.id), zap.Int("max_chunks", maxProtectKeys))
	}
}

// retireLocked hands an ending session's protect set to a running
// collection. smu is held.
func (v *Vault) retireLocked(s *session) {
	s.stopWarmLocked() // the session ended: its listing read-ahead too (warm.go)
	if v.retired == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.protect.empty() {
		return
	}
	r := v.retired[s.company]
	if r == nil {
		r = new(idSet)
		v.retired[s.company] = r
	}
	r.addSet(&s.protect)
}

// Collect runs one garbage collection; p (may be nil) gets progress.
func (v *Vault) Collect(ctx context.Context, p *jobs.Progress) (CollectResult, error) {
	var res CollectResult
	if p == nil {
		p = new(jobs.Progress)
	}
	if !v.collecting.TryLock() {
		return res, ErrCollecting
	}
	defer v.collecting.Unlock()
	start := v.clk.Now()
	if v.pair != nil {
		stop, err := v.pairCollecting(ctx)
		if err != nil {
			return res, err
		}
		defer stop()
	}
	if _, err := v.Store.FinishRemovals(ctx); err != nil {
		return res, err
	}
	v.smu.Lock()
	v.retired = map[string]*idSet{}
	v.smu.Unlock()
	// Barrier: a commit that found its session open (holdOpen) before
	// retired was set writes its catalog record before the mark below
	// reads the catalog, since its protect set may have been dropped.
	v.recordMu.Lock()
	v.recordMu.Unlock()
	defer func() {
		v.smu.Lock()
		v.retired = nil
		v.smu.Unlock()
	}()

	companies, err := v.Catalog.Companies()
	if err != nil {
		return res, err
	}
	res.Companies = len(companies)
	snap := map[string][][32]byte{}
	for _, co := range companies {
		ids, err := v.Store.ChunkIDs(ctx, co.Name)
		if err != nil {
			return res, err
		}
		snap[co.Name] = ids
		res.Chunks += int64(len(ids))
	}
	p.SetTotals(res.Chunks, 0)

	live := map[string]*marks{}
	for co, ids := range snap {
		live[co] = newMarks(ids)
	}
	snap = nil
	bad, err := v.mark(ctx, "", nil, func(company string, ids ...[32]byte) {
		if m := live[company]; m != nil {
			m.add(ids...)
		}
	})
	if err != nil {
		return res, err
	}
	for _, co := range companies {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if why := bad[co.Name]; why != "" {
			res.Skipped = append(res.Skipped, co.Name+": "+why)
			v.log.Warn("garbage collection leaves a company's chunks alone", zap.String("company", co.Name), zap.String("why", why))
			continue
		}
		m := live[co.Name]
		res.Marked += m.n
		cand := m.unmarked()
		p.Add(int64(len(m.snap)-len(cand)), 0)
		delete(live, co.Name)
		if err := v.sweep(ctx, co.Name, cand, &res, p); err != nil {
			return res, err
		}
	}
	live = nil
	if err := v.repack(ctx, &res, p); err != nil {
		return res, err
	}
	use, err := v.Store.PackUsage(ctx)
	if err != nil {
		return res, err
	}
	for _, u := range use {
		res.StoreBytes += u.Committed
		res.LiveBytes += u.Live
	}
	res.Took = v.clk.Now().Sub(start)
	v.log.Info("garbage collection done", zap.Int64("swept", res.Swept), zap.Int64("protected", res.Protected),
		zap.Int("packs_rewritten", res.PacksRewritten), zap.Int("packs_removed", res.PacksRemoved),
		zap.Int64("reclaimed", res.Reclaimed), zap.Duration("took", res.Took))
	return res, nil
}

// sweep removes the records of cand, a batch at a time, sparing what a
// session protects.
func (v *Vault) sweep(ctx context.Context, company string, cand [][32]byte, res *CollectResult, p *jobs.Progress) error {
	batch := 1024
	if v.pair != nil {
		// Each batch is a command of the pair's log that every member
		// applies (pairgc.go): fewer, larger ones.
		batch = sweepBatch
	}
	for len(cand) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		start := v.clk.Now()
		b := cand[:min(batch, len(cand))]
		cand = cand[len(b):]
		var del [][32]byte
		v.gcMu.Lock()
		v.smu.Lock()
		for _, id := range b {
			if v.protectedLocked(company, id) {
				res.Protected++
				continue
			}
			del = append(del, id)
		}
		v.smu.Unlock()
		var n int
		var bytes int64
		var err error
		if v.pair != nil {
			n, bytes, err = v.submitSweep(company, del, len(cand) == 0)
		} else {
			n, bytes, err = v.Store.DeleteChunks(company, del)
		}
		v.gcMu.Unlock()
		if err != nil {
			return err
		}
		res.Swept += int64(n)
		res.SweptBytes += bytes
		p.Add(int64(len(b)), bytes)
		if err := v.pace(ctx, start); err != nil {
			return err
		}
	}
	return nil
}

// protectedLocked reports whether an open session of the company, or one
// that ended during this collection, protects id. smu is held.
func (v *Vault) protectedLocked(company string, id [32]byte) bool {
	if r := v.retired[company]; r != nil && r.has(id) {
		return true
	}
	for _, s := range v.sessions {
		if s.company != company {
			continue
		}
		s.mu.Lock()
		ok := s.protect.has(id)
		s.mu.Unlock()
		if ok {
			return true
		}
	}
	return false
}

// markFilter makes mark walk only some records: want says whether to walk
// the record of that key (recordKey), done is told each record whose
// references were all reported.
type markFilter struct {
	want func(key [32]byte) bool
	done func(key [32]byte)
}

// recordKey names a version or journal record with everything its marks
// depend on: the same key is the same references.
func recordKey(computer, config string, seq, n uint64, manifest [32]byte, listing []tree.ChunkRef) [32]byte {
	h := sha256.New()
	fmt.Fprintf(h, "%q %q %d %d ", computer, config, seq, n)
	h.Write(manifest[:])
	for _, r := range listing {
		h.Write(r.ID[:])
	}
	return [32]byte(h.Sum(nil))
}

// mark reports, per company (only the company only, when given), every id
// reachable from the catalog to add (in batches, with repeats); bad names
// the companies whose references could not all be read. With f, only the
// records f wants are walked.
func (v *Vault) mark(ctx context.Context, only string, f *markFilter, add func(company string, ids ...[32]byte)) (bad map[string]string, err error) {
	bad = map[string]string{}
	walk := func(company, what string, listing []tree.ChunkRef) {
		if bad[company] != "" {
			return
		}
		if err := v.markListing(ctx, company, listing, func(ids [][32]byte) { add(company, ids...) }); err != nil {
			bad[company] = fmt.Sprintf("%s: %v", what, err)
		}
	}
	// The versions are read in one catalog transaction first, then
	// walked: a long walk does not hold the catalog open.
	var vers []catalog.Version
	err = v.Catalog.AllVersionRecords(func(ver catalog.Version) error {
		vers = append(vers, ver)
		return ctx.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("mark versions: %w", err)
	}
	for _, ver := range vers {
		if only != "" && ver.Company != only {
			continue
		}
		start := v.clk.Now()
		if ver.ManifestID.IsZero() {
			bad[ver.Company] = fmt.Sprintf("version %s/%s@%d has no manifest id recorded", ver.Computer, ver.Config, ver.Seq)
			continue
		}
		var key [32]byte
		if f != nil {
			if key = recordKey(ver.Computer, ver.Config, ver.Seq, 0, ver.ManifestID, ver.Listing); !f.want(key) {
				continue
			}
		}
		add(ver.Company, [32]byte(ver.ManifestID))
		walk(ver.Company, fmt.Sprintf("version %s/%s@%d", ver.Computer, ver.Config, ver.Seq), ver.Listing)
		if f != nil && bad[ver.Company] == "" {
			f.done(key)
		}
		if err = v.pace(ctx, start); err != nil {
			break
		}
	}
	vers = nil
	if err != nil {
		return nil, fmt.Errorf("mark versions: %w", err)
	}
	// Journal records too are read first and walked outside the
	// catalog's read transaction (see journalRecords).
	recs, err := v.journalRecords(ctx)
	if err != nil {
		return nil, fmt.Errorf("mark journal records: %w", err)
	}
	owner := map[string]string{}
	for _, r := range recs {
		co, ok := owner[r.computer]
		if !ok {
			cp, err := v.Catalog.Computer(r.computer)
			if err != nil {
				return nil, fmt.Errorf("mark journal records: journal record of %s: %w", r.computer, err)
			}
			co, owner[r.computer] = cp.Company, cp.Company
		}
		if only != "" && co != only {
			continue
		}
		var key [32]byte
		if f != nil {
			if key = recordKey(r.computer, r.config, r.j.Base, r.j.N, [32]byte{}, r.j.Listing); !f.want(key) {
				continue
			}
		}
		if testHookWalk != nil {
			testHookWalk()
		}
		walk(co, fmt.Sprintf("journal record %s/%s@%d+%d", r.computer, r.config, r.j.Base, r.j.N), r.j.Listing)
		if f != nil && bad[co] == "" {
			f.done(key)
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("mark journal records: %w", err)
		}
	}
	return bad, nil
}

// marks is one company's mark set: a bit per id of the collection's sorted
// snapshot. Memory is the snapshot's 32 bytes per chunk plus one bit,
// whatever the number of versions referencing each chunk; an id outside
// the snapshot (stored since it was taken) is no candidate, so needs no bit.
type marks struct {
	snap [][32]byte
	bits []uint64
	n    int64 // distinct snapshot ids marked
}

func newMarks(snap [][32]byte) *marks {
	return &marks{snap: snap, bits: make([]uint64, (len(snap)+63)/64)}
}

func (m *marks) add(ids ...[32]byte) {
	for _, id := range ids {
		i, ok := slices.BinarySearchFunc(m.snap, id, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
		if ok && m.bits[i/64]&(1<<(i%64)) == 0 {
			m.bits[i/64] |= 1 << (i % 64)
			m.n++
		}
	}
}

// find answers id's place in the snapshot, and whether it is there.
func (m *marks) find(id [32]byte) (int, bool) {
	return slices.BinarySearchFunc(m.snap, id, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
}

// has reports whether the snapshot's i-th id is marked.
func (m *marks) has(i int) bool { return m.bits[i/64]&(1<<(i%64)) != 0 }

// unmarked returns the snapshot's ids that were not marked, in order.
func (m *marks) unmarked() [][32]byte {
	var out [][32]byte
	for i, id := range m.snap {
		if m.bits[i/64]&(1<<(i%64)) == 0 {
			out = append(out, id)
		}
	}
	return out
}

// journalRecord is a journal record with its computer and configuration.
type journalRecord struct {
	computer, config string
	j                wire.Journal
}

// testHookWalk, set by tests, runs before a collection or a verify walks a
// journal record's listing.
var testHookWalk func()

// journalRecords reads every journal record in one catalog transaction.
// Walking a listing inside that transaction would hold it for the whole
// walk: a catalog write that must grow the file (bbolt remaps it) would
// wait for the walk, holding every other write behind it, and a read
// opened meanwhile by the walk (the record's computer) would deadlock
// behind that write.
func (v *Vault) journalRecords(ctx context.Context) ([]journalRecord, error) {
	var recs []journalRecord
	err := v.Catalog.AllJournal(func(computer, config string, j wire.Journal) error {
		recs = append(recs, journalRecord{computer, config, j})
		return ctx.Err()
	})
	return recs, err
}

// markListing reports the listing's chunks and every chunk its nodes
// reference.
func (v *Vault) markListing(ctx context.Context, company string, listing []tree.ChunkRef, mark func([][32]byte)) error {
	v.listingsMarked.Add(1)
	k, err := v.companyKeys(company)
	if err != nil {
		return err
	}
	ids := make([][32]byte, 0, len(listing))
	for _, r := range listing {
		ids = append(ids, r.ID)
	}
	mark(ids)
	lr := v.listingReader(company, k, listing, nil)
	defer lr.Close()
	rd, err := tree.NewListingReader(lr, listing)
	if err != nil {
		return err
	}
	rd.Reuse() // mark takes each node's ids, copied
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := rd.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		ids = ids[:0]
		for _, c := range n.Chunks {
			ids = append(ids, c.ID)
		}
		mark(ids)
	}
}

// repack rewrites or removes the packs whose dead share passes the
// threshold.
func (v *Vault) repack(ctx context.Context, res *CollectResult, p *jobs.Progress) error {
	use, err := v.Store.PackUsage(ctx)
	if err != nil {
		return err
	}
	threshold := v.opts.RepackThreshold
	if threshold <= 0 {
		threshold = DefaultRepackThreshold
	}
	for _, u := range use {
		if err := ctx.Err(); err != nil {
			return err
		}
		if u.Entries > 0 && u.Dead() < threshold {
			continue
		}
		start := v.clk.Now()
		r, err := v.Store.Repack(ctx, u.Number)
		if errors.Is(err, store.ErrPackBusy) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			v.log.Warn("pack left as it is", zap.Uint32("pack", u.Number), zap.Error(err))
			continue
		}
		if r.Moved == 0 {
			res.PacksRemoved++
		} else {
			res.PacksRewritten++
		}
		res.MovedBytes += r.MovedBytes
		res.Reclaimed += r.Freed - r.MovedBytes
		p.Add(0, r.Freed)
		if err := v.pace(ctx, start); err != nil {
			return err
		}
	}
	return nil
}
