package vault

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/bbolt"
	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/jobs"
)

// Garbage collection in a pair (docs/pair.md, "Garbage collection"). The
// leader collects as a single vault does (gc.go) but sweeps through the
// log: each batch of unreferenced, unprotected ids is a KindSweep command,
// and every member deletes those ids from its own store when it applies
// the command, before the catalog records the entry (pair.Config.
// BeforeApply), so a crash in the middle replays the deletion instead of
// forgetting it. Never delete data because an index forgot it: a member
// other than the collecting leader (the follower, or the leader itself
// replaying after a restart) deletes only the ids that its own catalog,
// at that log index, does not reference (sweepCheck: one mark of the
// company per collection, then only the records committed since; the
// same catalog, so the same marks, plus whatever was committed since the
// leader's mark, which it protected anyway). The leader's own run relies
// on its mark and its sessions' protect sets, under gcMu, as alone.
//
// A chunk the leader swept may be uploaded again at once; its copy must
// not reach a member that has not applied the sweep yet (the member would
// keep its old copy, then delete it). So copies and lack questions carry
// the index of the last sweep the leader applied (pair.HeaderSweep) and
// the member applies its log up to there first. Packs are each member's
// own: a member rewrites its packs after it applied sweeps
// (followerRepack), as the leader does at the end of its collection.

// KindSweep is a garbage collection's sweep of one company's ids.
const KindSweep catalog.Kind = "gc_sweep"

// MaxSweepIDs bounds the ids of one sweep command (2 MiB of ids, under
// catalog.MaxCommand once encoded).
const MaxSweepIDs = 1 << 16

// sweepBatch is the ids the leader puts in one sweep command (tests make
// it small to have many batches).
var sweepBatch = MaxSweepIDs

// sweepPlan is a KindSweep command's payload.
type sweepPlan struct {
	Collection string `json:"collection"` // the collection's run (random)
	Origin     string `json:"origin"`     // the member that collected
	Company    string `json:"company"`
	IDs        []byte `json:"ids"` // 32 bytes each, sorted
	// Last: the collection's last batch of this company (a member drops
	// its check of the company).
	Last bool `json:"last,omitempty"`
}

// KindSweepsDone forgets the sweeps kept for snapshots up to an index
// every data member applied.
const KindSweepsDone catalog.Kind = "gc_sweeps_done"

// bucketSweeps keeps each sweep applied (log index, big-endian -> the
// command's payload) until every data member applied it: a member brought
// up to date by a catalog snapshot applies to its store the sweeps inside
// the snapshot (pairsnap.go).
var bucketSweeps = []byte("gc_sweeps")

// sweepsDone is a KindSweepsDone command's payload.
type sweepsDone struct {
	Upto uint64 `json:"upto"`
}

func init() {
	catalog.RegisterKind(KindSweep, func(tx *bbolt.Tx, payload []byte) (any, error) {
		// The stores apply the sweep (beforeApply); the catalog keeps it
		// for the members that will receive it inside a snapshot.
		if _, err := decodeSweep(payload); err != nil {
			return nil, err
		}
		b, err := tx.CreateBucketIfNotExists(bucketSweeps)
		if err != nil {
			return nil, err
		}
		return nil, b.Put(binary.BigEndian.AppendUint64(nil, catalog.EntryIndex(tx)), payload)
	})
	catalog.RegisterKind(KindSweepsDone, func(tx *bbolt.Tx, payload []byte) (any, error) {
		var d sweepsDone
		if err := json.Unmarshal(payload, &d); err != nil {
			return nil, fmt.Errorf("%w: sweeps done: %v", catalog.ErrInvalid, err)
		}
		b := tx.Bucket(bucketSweeps)
		if b == nil {
			return nil, nil
		}
		c := b.Cursor()
		for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= d.Upto; k, _ = c.First() {
			if err := c.Delete(); err != nil {
				return nil, err
			}
		}
		return nil, nil
	})
}

// keptSweeps calls fn for each sweep the catalog keeps after index from,
// in log order, reading one at a time (they may be many after a long
// absence).
func (v *Vault) keptSweeps(from uint64, fn func(index uint64, plan sweepPlan) error) error {
	for {
		var index uint64
		var payload []byte
		err := v.Catalog.View(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketSweeps)
			if b == nil {
				return nil
			}
			if k, val := b.Cursor().Seek(binary.BigEndian.AppendUint64(nil, from+1)); k != nil {
				index, payload = binary.BigEndian.Uint64(k), slices.Clone(val)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("read the sweeps kept in the catalog: %w", err)
		}
		if payload == nil {
			return nil
		}
		plan, err := decodeSweep(payload)
		if err != nil {
			return fmt.Errorf("sweep kept at index %d: %w", index, err)
		}
		if err := fn(index, plan); err != nil {
			return err
		}
		from = index
	}
}

// forgetSweeps runs on the leader: once every data member applied the
// sweeps kept in the catalog, they are dropped (KindSweepsDone). A member
// unreachable now keeps them there until it is back or removed.
func (v *Vault) forgetSweeps(ctx context.Context) error {
	var first uint64
	err := v.Catalog.View(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(bucketSweeps); b != nil {
			if k, _ := b.Cursor().First(); k != nil {
				first = binary.BigEndian.Uint64(k)
			}
		}
		return nil
	})
	if err != nil || first == 0 {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	upto := v.pair.node.Applied()
	for _, m := range v.pair.node.Status().Members {
		if m.Witness || m.ID == v.pair.node.ID() {
			continue
		}
		st, err := v.pair.node.PeerStatus(ctx, m.Raft)
		if err != nil {
			return nil // asked again later
		}
		upto = min(upto, st.Applied)
	}
	if upto < first {
		return nil
	}
	cmd, err := catalog.NewCommand(KindSweepsDone, sweepsDone{Upto: upto})
	if err != nil {
		return err
	}
	_, err = v.pair.node.Submit(cmd)
	return err
}

func decodeSweep(b []byte) (sweepPlan, error) {
	var p sweepPlan
	if len(b) > catalog.MaxCommand {
		return p, fmt.Errorf("%w: sweep of %d bytes", catalog.ErrInvalid, len(b))
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("%w: sweep: %v", catalog.ErrInvalid, err)
	}
	if err := catalog.ValidCompanyName(p.Company); err != nil {
		return p, fmt.Errorf("%w: sweep: %v", catalog.ErrInvalid, err)
	}
	if len(p.IDs)%32 != 0 || len(p.IDs)/32 > MaxSweepIDs {
		return p, fmt.Errorf("%w: sweep of %d id bytes: whole 32-byte ids, at most %d", catalog.ErrInvalid, len(p.IDs), MaxSweepIDs)
	}
	if p.Collection == "" || len(p.Collection) > 64 || len(p.Origin) > 64 {
		return p, fmt.Errorf("%w: sweep: collection and origin of 1 to 64 bytes", catalog.ErrInvalid)
	}
	return p, nil
}

func (p sweepPlan) ids() [][32]byte {
	out := make([][32]byte, len(p.IDs)/32)
	for i := range out {
		copy(out[i][:], p.IDs[i*32:])
	}
	slices.SortFunc(out, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
	return out
}

// pairGC is a member's share of the pair's garbage collection.
type pairGC struct {
	storeReady chan struct{} // closed once the store is open
	quit       chan struct{} // closed when the vault closes
	quitOnce   sync.Once
	sweepIndex atomic.Uint64          // the last sweep applied here
	run        atomic.Pointer[string] // this process's running collection
	swept      atomic.Int64           // records its own sweeps removed here
	sweptBytes atomic.Int64
	repackDue  atomic.Bool  // sweeps applied since the packs were last rewritten
	restores   atomic.Int64 // catalog snapshots installed, their sweeps and mail applied here
	checkMu    sync.Mutex
	check      *sweepCheck // the running collection's check here, if any
	// crashAfter, when > 0, kills the process (SIGKILL) after that many
	// deletion batches of a sweep applied for another member: the e2e
	// test's crash in the middle of a sweep (VAULTNODE_TEST_CRASH_SWEEP).
	crashAfter int
}

// pairCollecting starts a collection on the leader: its run id lets this
// member's apply of its own sweeps trust the mark just made.
func (v *Vault) pairCollecting(ctx context.Context) (stop func(), err error) {
	if !v.pair.node.IsLeader() {
		return nil, v.notLeader()
	}
	// Every earlier entry applied first: an older sweep still to apply
	// here would wait for gcMu, which this collection holds while its own
	// sweeps go through the log.
	bctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := v.pair.node.WaitLeader(bctx); err != nil {
		return nil, err
	}
	var b [12]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	v.pair.gc.run.Store(&id)
	return func() { v.pair.gc.run.Store(nil) }, nil
}

// submitSweep sends one batch of the leader's sweep through the log; gcMu
// is held, so no session sees these chunks before every member that
// applies the sweep deletes them. It answers what the apply removed here.
func (v *Vault) submitSweep(company string, ids [][32]byte, last bool) (int, int64, error) {
	if len(ids) == 0 {
		return 0, 0, nil
	}
	run := v.pair.gc.run.Load()
	if run == nil {
		return 0, 0, fmt.Errorf("sweep %s: no collection runs", company)
	}
	plan := sweepPlan{Collection: *run, Origin: v.pair.node.ID(), Company: company, IDs: make([]byte, 0, 32*len(ids)), Last: last}
	for _, id := range ids {
		plan.IDs = append(plan.IDs, id[:]...)
	}
	cmd, err := catalog.NewCommand(KindSweep, plan)
	if err != nil {
		return 0, 0, err
	}
	n0, b0 := v.pair.gc.swept.Load(), v.pair.gc.sweptBytes.Load()
	if _, err := v.pair.node.Submit(cmd); err != nil {
		return 0, 0, fmt.Errorf("sweep %s through the pair's log: %w", company, err)
	}
	return int(v.pair.gc.swept.Load() - n0), v.pair.gc.sweptBytes.Load() - b0, nil
}

// beforeApply is pair.Config.BeforeApply: a sweep not yet applied here is
// applied to the store before the catalog records its entry.
func (v *Vault) beforeApply(index uint64, cmd catalog.Command) {
	v.beforeApplyMail(index, cmd)
	if cmd.Kind != KindSweep {
		return
	}
	plan, err := decodeSweep(cmd.Payload)
	if err != nil {
		return // the catalog refuses it alike
	}
	if done, err := v.Catalog.AppliedIndex(); err != nil || done >= index {
		return
	}
	gc := &v.pair.gc
	select {
	case <-gc.storeReady:
	case <-gc.quit:
		return
	}
	n, b, err := v.applySweep(plan)
	if err != nil {
		// Nothing deleted that is not sure garbage; what is left stays
		// until this member collects as leader.
		v.log.Warn("garbage collection sweep not applied here", zap.Uint64("index", index), zap.String("company", plan.Company), zap.Error(err))
	}
	if index > gc.sweepIndex.Load() {
		gc.sweepIndex.Store(index)
	}
	gc.repackDue.Store(true)
	v.log.Info("garbage collection sweep applied", zap.Uint64("index", index), zap.String("company", plan.Company),
		zap.Int("planned", len(plan.IDs)/32), zap.Int("removed", n), zap.Int64("bytes", b))
}

// applySweep deletes the plan's ids from this member's store: directly
// when this process's running collection made the plan, else only those
// its own catalog does not reference now.
func (v *Vault) applySweep(plan sweepPlan) (int, int64, error) {
	gc := &v.pair.gc
	ids := plan.ids()
	own := false
	if r := gc.run.Load(); r != nil && *r == plan.Collection && plan.Origin == v.pair.node.ID() {
		own = true
	}
	if !own {
		var err error
		gc.checkMu.Lock()
		ids, err = v.unreferenced(plan, ids)
		gc.checkMu.Unlock()
		if err != nil {
			return 0, 0, err
		}
		// A member that leads now (it took over before applying this
		// entry) may have sessions counting on some of these chunks:
		// their versions come later in the log. As the collection does,
		// spare what a session protects, under gcMu held exclusively.
		// (Collect holds gcMu only for its own sweeps, which take the
		// path above, and starts after a barrier, so no older sweep waits
		// here for it.)
		v.gcMu.Lock()
		defer v.gcMu.Unlock()
		v.smu.Lock()
		kept := ids[:0]
		for _, id := range ids {
			if !v.protectedLocked(plan.Company, id) {
				kept = append(kept, id)
			}
		}
		v.smu.Unlock()
		ids = kept
	}
	var n int
	var nb int64
	for batch := 0; len(ids) > 0; batch++ {
		if !own && gc.crashAfter > 0 && batch == gc.crashAfter {
			v.log.Warn("crashing in the middle of a sweep (VAULTNODE_TEST_CRASH_SWEEP)", zap.Int("batches", batch))
			syscall.Kill(syscall.Getpid(), syscall.SIGKILL)
		}
		b := ids[:min(1024, len(ids))]
		ids = ids[len(b):]
		k, kb, err := v.Store.DeleteChunks(plan.Company, b)
		n += k
		nb += kb
		if err != nil {
			return n, nb, err
		}
	}
	if own {
		gc.swept.Add(int64(n))
		gc.sweptBytes.Add(nb)
	}
	return n, nb, nil
}

// sweepCheck is a member's mark of one company, kept across the sweep
// batches of one collection (docs/pair.md, "Checking a sweep"): made once
// over the ids this member held when the check began, then brought up to
// date at each batch by walking only the version and journal records
// committed since. A record pruned since stays marked: the marks are a
// superset of what the catalog references now, so the check only keeps
// more, never deletes what a committed record references.
type sweepCheck struct {
	collection, company string
	marks               *marks                // over this member's ids of company when the check began
	walked              map[[32]byte]struct{} // records (recordKey) whose references are marked
}

// unreferenced returns the ids (sorted) of the plan that this member held
// when its check of the collection began and that no version or journal
// record of the company in its catalog references now; gc.checkMu is held.
func (v *Vault) unreferenced(plan sweepPlan, ids [][32]byte) ([][32]byte, error) {
	gc := &v.pair.gc
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-gc.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	c := gc.check
	fresh := false
	if c == nil || c.collection != plan.Collection || c.company != plan.Company {
		gc.check = nil
		snap, err := v.Store.ChunkIDs(ctx, plan.Company)
		if err != nil {
			return nil, fmt.Errorf("list %s's chunks to check a sweep: %w", plan.Company, err)
		}
		c = &sweepCheck{collection: plan.Collection, company: plan.Company, marks: newMarks(snap), walked: map[[32]byte]struct{}{}}
		fresh = true
	}
	if !fresh {
		// A candidate this member did not hold when the check began may
		// have been copied here since: check it against a fresh mark
		// rather than keep it for ever (a catch-up's copy; rare).
		for _, id := range ids {
			if _, ok := c.marks.find(id); !ok {
				gc.check = nil
				return v.unreferenced(plan, ids)
			}
		}
	}
	bad, err := v.mark(ctx, plan.Company, &markFilter{
		want: func(k [32]byte) bool { _, ok := c.walked[k]; return !ok },
		done: func(k [32]byte) { c.walked[k] = struct{}{} },
	}, func(co string, refs ...[32]byte) {
		if co == plan.Company {
			c.marks.add(refs...)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("mark %s to check a sweep: %w", plan.Company, err)
	}
	if why := bad[plan.Company]; why != "" {
		// The records walked are marked; the one that failed is walked
		// again at the next batch.
		gc.check = c
		return nil, fmt.Errorf("mark %s to check a sweep: %s", plan.Company, why)
	}
	gc.check = c
	if plan.Last {
		gc.check = nil // the collection's last batch of this company
	}
	out := make([][32]byte, 0, len(ids))
	kept := 0
	for _, id := range ids {
		i, ok := c.marks.find(id)
		switch {
		case !ok: // not held here when the check began (fresh): nothing to delete
		case c.marks.has(i):
			kept++
		default:
			out = append(out, id)
		}
	}
	if kept > 0 {
		v.log.Warn("a sweep names chunks this member's catalog references: kept", zap.String("company", plan.Company), zap.Int("kept", kept))
	}
	return out, nil
}

// followerRepack rewrites or removes this member's packs whose dead share
// passed the threshold after sweeps it applied (a member not leading:
// the leader does it in its collection).
func (v *Vault) followerRepack(ctx context.Context) {
	if !v.pair.gc.repackDue.Swap(false) {
		return
	}
	if !v.collecting.TryLock() {
		v.pair.gc.repackDue.Store(true)
		return
	}
	defer v.collecting.Unlock()
	if _, err := v.Store.FinishRemovals(ctx); err != nil {
		v.log.Warn("finish pack removals", zap.Error(err))
		return
	}
	var res CollectResult
	if err := v.repack(ctx, &res, new(jobs.Progress)); err != nil {
		v.log.Warn("rewrite packs after a sweep", zap.Error(err))
		v.pair.gc.repackDue.Store(true)
		return
	}
	v.log.Info("packs rewritten after sweeps", zap.Int("packs_rewritten", res.PacksRewritten),
		zap.Int("packs_removed", res.PacksRemoved), zap.Int64("reclaimed", res.Reclaimed))
}
