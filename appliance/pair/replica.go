package pair

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/store"
	"vaultnode/internal/clock"
	"vaultnode/internal/pack"
)

// Chunks never go through raft: the leader copies each commit of new pack
// entries to the other data member before the upload is acknowledged
// (store.Options.Replicate). When the copy fails for DegradeAfter, the
// leader records the member behind (a raft command, so only with a
// majority: leader and witness), and acknowledges on its own data from
// then on; a catch-up copies what the member lacks and clears the record.
// When neither the copy nor the record succeeds, uploads and commits are
// refused (Gate): nothing is acknowledged that only one member holds
// unless the pair knows it.

// PathStatus is the member's Status on the HTTP side of the pair address
// (GET). Copies and lack questions have a stream of their own
// (copyconn.go).
const PathStatus = "/pair/status"

// Every copy or lack request carries the log index of the last garbage
// collection sweep the leader applied: the member applies its log up to
// there before it answers, so a sweep it has not applied yet never
// deletes a chunk the leader stored again after its own sweep, nor does a
// lack answer count a chunk that sweep is about to delete.

// MaxLackIDs bounds one lack request.
const MaxLackIDs = 1 << 16

// MaxEntriesBody bounds one entries request (a commit copies at most a
// pack's worth).
const MaxEntriesBody = store.MaxPackSize + 16<<20

// ErrNotCopied: new chunks could not be copied to the other data member
// and the pair could not record it behind.
var ErrNotCopied = errors.New("chunks not copied to the other member of the pair")

// errUnreachable: a copy got no answer from the member at all.
var errUnreachable = errors.New("member unreachable")

// Replicator copies new entries from the leader to the other data members.
type Replicator struct {
	node  *Node
	st    *store.Store
	log   *zap.Logger
	clk   clock.Clock
	after time.Duration

	// sweep is the log index of the last garbage collection sweep
	// applied here (SetSweepIndex).
	sweep atomic.Pointer[func() uint64]
	// opener gives the AEAD of a company's pack key, to check copies
	// (SetOpener).
	opener atomic.Pointer[func(company string) (*pack.Sealer, error)]
	// streamed and recopied count copies to a member made while the
	// entries were written, and those made again after the stream failed.
	streamed, recopied atomic.Int64

	// stored is set once the store is (SetStore): a member's pair
	// address serves (status, raft) while its store still opens, and a
	// copy or lack question then is refused, not served from no store.
	stored atomic.Bool

	mu    sync.Mutex
	dirty map[string]error // member -> copy failed and not yet recorded behind
	live  map[string]bool  // members catching up: copy new entries too
}

// NewReplicator makes the replicator of a data member; degradeAfter is how
// long a copy may fail before the member is recorded behind (default 10 s).
func NewReplicator(n *Node, st *store.Store, clk clock.Clock, log *zap.Logger, degradeAfter time.Duration) *Replicator {
	if degradeAfter <= 0 {
		degradeAfter = 10 * time.Second
	}
	if clk == nil {
		clk = clock.Real{}
	}
	r := &Replicator{node: n, st: st, log: log, clk: clk, after: degradeAfter,
		dirty: map[string]error{}, live: map[string]bool{}}
	r.stored.Store(st != nil)
	return r
}

// SetStore gives the replicator its store (the store is opened with the
// replicator's Replicate as its hook, so it comes second).
func (r *Replicator) SetStore(st *store.Store) {
	r.st = st
	r.stored.Store(true)
	f := func() int64 {
		use, err := st.CountUsage()
		if err != nil {
			return -1
		}
		var n int64
		for _, b := range use {
			n += b
		}
		return n
	}
	r.node.storeBytes.Store(&f)
}

// SetSweepIndex tells the replicator where to read the log index of the
// last sweep applied here (HeaderSweep).
func (r *Replicator) SetSweepIndex(f func() uint64) { r.sweep.Store(&f) }

// SetOpener tells the replicator how to get a company's pack AEAD: a
// member checks every copied entry's tag before it stores it.
func (r *Replicator) SetOpener(f func(company string) (*pack.Sealer, error)) { r.opener.Store(&f) }

func (r *Replicator) sweepIndex() uint64 {
	if f := r.sweep.Load(); f != nil {
		return (*f)()
	}
	return 0
}

// peers are the other data members and which of them are behind.
func (r *Replicator) peers() ([]Member, map[string]bool, error) {
	ms, err := Members(r.node.cfg.Catalog)
	if err != nil {
		return nil, nil, err
	}
	bs, err := BehindMembers(r.node.cfg.Catalog)
	if err != nil {
		return nil, nil, err
	}
	behind := map[string]bool{}
	for _, b := range bs {
		behind[b.Member] = true
	}
	var out []Member
	for _, m := range ms {
		if m.ID != r.node.cfg.ID && !m.Witness {
			out = append(out, m)
		}
	}
	return out, behind, nil
}

// Replicate is the store's hook: it copies one commit's entries to every
// other data member that is not behind, or records it behind.
func (r *Replicator) Replicate(company string, entries *io.SectionReader) error {
	return r.replicate(company, entries, nil)
}

// replicate is Replicate for the members the entries were not streamed
// to whole (copied: the members that answered a stream).
func (r *Replicator) replicate(company string, entries *io.SectionReader, copied map[string]bool) error {
	if !r.node.IsLeader() {
		// Leadership lost during the upload: the new leader's member
		// may not have these entries, so this is no acknowledgement.
		return r.node.notLeader()
	}
	peers, behind, err := r.peers()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range peers {
		r.mu.Lock()
		live, dirty := r.live[m.ID], r.dirty[m.ID] != nil
		r.mu.Unlock()
		if behind[m.ID] && !live {
			continue // degraded: the catch-up brings it over
		}
		if dirty {
			errs = append(errs, r.recordBehind(m.ID, "an earlier copy failed"))
			continue
		}
		if copied[m.ID] {
			continue
		}
		err := r.sendRetry(m, company, entries)
		if err == nil {
			r.node.answered(m.ID)
			continue
		}
		if behind[m.ID] {
			r.mu.Lock()
			r.live[m.ID] = false // the catch-up fails and tries again
			r.mu.Unlock()
			continue
		}
		r.log.Warn("copy to the other member failed: recording it behind", zap.String("member", m.ID), zap.Error(err))
		errs = append(errs, r.recordBehind(m.ID, err.Error()))
	}
	return errors.Join(errs...)
}

// Replica is the store's Options.Replica: a copy of one appender's
// entries streamed to every other data member that takes copies now, in
// one request each, as they are written. The member writes them as they
// come and syncs them while the leader syncs its own, so a copy costs
// about nothing but the bandwidth. Where a stream fails, Commit copies
// the entries again as Replicate does (and records the member behind if
// that fails too).
func (r *Replicator) Replica(company string) store.Replica {
	s := &stream{r: r, company: company, sweep: r.sweepIndex()}
	if !r.node.IsLeader() {
		return s // Commit answers not leader
	}
	peers, behind, err := r.peers()
	if err != nil {
		return s // Commit meets the error again
	}
	for _, m := range peers {
		r.mu.Lock()
		live, dirty := r.live[m.ID], r.dirty[m.ID] != nil
		r.mu.Unlock()
		if dirty || (behind[m.ID] && !live) || m.ID == r.node.Deposed() {
			// The leader before an election may be gone without a word
			// (a stream to it could hang on a dead connection): it gets
			// the bounded copy of Commit instead.
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		c := &peerCopy{m: m, cancel: cancel, done: make(chan error, 1),
			q: make(chan queued, copyQueueMiB), room: make(chan struct{}, copyQueueMiB), wrote: make(chan struct{})}
		go c.write(ctx, r.node.copies, company, s.sweep) // owner: the stream (End closes its queue, Commit and Abort wait for it)
		s.copies = append(s.copies, c)
	}
	return s
}

// stream is one appender's copy in progress (Replicator.Replica).
type stream struct {
	r       *Replicator
	company string
	copies  []*peerCopy
	ended   bool
	// sweep is the last sweep applied here when the stream started (its
	// requests carry it, or a later one): one applied since may delete on
	// the member a chunk streamed before the member applied it.
	sweep uint64
}

type peerCopy struct {
	m       Member
	cancel  context.CancelFunc
	done    chan error  // the member's answer (nil: it stored every entry)
	failed  atomic.Bool // a write failed: the copy is made again at Commit
	aborted atomic.Bool // the upload was aborted: the member keeps nothing

	// A streamed copy is written to the member by its own goroutine
	// from a queue of up to copyQueueMiB MiB, so the upload goes on
	// while the copy is framed, encrypted and sent: an entry costs the
	// upload about the longer of its local write and its copy, not both.
	q     chan queued   // entries to write; closed by End
	room  chan struct{} // one token per MiB queued
	wrote chan struct{} // closed when the writer ended
}

// copyQueueMiB bounds the entries queued for one streamed copy.
const copyQueueMiB = 8

// copyBufs holds entry buffers of streamed copies (Add's copies).
var copyBufs sync.Pool

// queued is an entry waiting to be written to the member: release gives
// its buffer back once written (or dropped).
type queued struct {
	b       []byte
	release func()
}

func entryMiB(n int) int { return min(max((n+1<<20-1)>>20, 1), copyQueueMiB) }

// write sends the queued entries as one request, one frame each, then
// asks the member to commit them and waits for its answer.
func (c *peerCopy) write(ctx context.Context, pool *copyPool, company string, sweep uint64) {
	defer close(c.wrote)
	q, err := pool.openEntries(ctx, c.m.ID, c.m.Raft, company, sweep)
	if err != nil {
		c.failed.Store(true)
	}
	for e := range c.q {
		if !c.failed.Load() {
			if _, err = q.add(e.b); err != nil {
				c.failed.Store(true)
			}
		}
		for range entryMiB(len(e.b)) {
			<-c.room
		}
		e.release()
	}
	switch {
	case c.aborted.Load():
		if q != nil {
			q.abort()
		}
		err = errAborted
	case !c.failed.Load():
		if err = q.commit(); err == nil {
			err = q.end()
		}
		if err != nil {
			c.failed.Store(true)
		}
	default:
		if q != nil {
			q.abort()
		}
	}
	c.done <- err
}

// Add queues a copy of the entry for each member's request (one copy, in a
// buffer of copyBufs, shared as AddOwned shares an owned entry); data is
// the caller's again when it returns.
func (s *stream) Add(data []byte) {
	p, ok := copyBufs.Get().(*[]byte)
	if !ok {
		p = new([]byte)
	}
	*p = append((*p)[:0], data...)
	s.AddOwned(*p, func() { copyBufs.Put(p) })
}

// AddOwned queues the entry itself for each member's request (no copy:
// an upload's entry was about a tenth of the leader's CPU for the copy
// path): release is called once every request wrote it.
func (s *stream) AddOwned(data []byte, release func()) {
	var live []*peerCopy
	for _, c := range s.copies {
		if !c.failed.Load() {
			live = append(live, c)
		}
	}
	if len(live) == 0 {
		release()
		return
	}
	rel := release
	if len(live) > 1 {
		var left atomic.Int32
		left.Store(int32(len(live)))
		rel = func() {
			if left.Add(-1) == 0 {
				release()
			}
		}
	}
	for _, c := range live {
		for range entryMiB(len(data)) {
			c.room <- struct{}{}
		}
		c.q <- queued{b: data, release: rel}
	}
}

// End closes each request's queue: once written, its body ends and the
// member commits what it got.
func (s *stream) End() {
	if s.ended {
		return
	}
	s.ended = true
	for _, c := range s.copies {
		close(c.q)
	}
}

// Commit waits for each member's answer, then copies again to the
// members a stream failed for, or records them behind (replicate).
func (s *stream) Commit(entries *io.SectionReader) error {
	s.End()
	copied := map[string]bool{}
	swept := s.r.sweepIndex() != s.sweep
	for _, c := range s.copies {
		<-c.wrote
		err := <-c.done
		c.cancel()
		if swept {
			err = errors.New("a garbage collection sweep was applied meanwhile")
		}
		if err == nil && !c.failed.Load() {
			copied[c.m.ID] = true
			s.r.streamed.Add(1)
		} else {
			s.r.recopied.Add(1)
			s.r.log.Debug("streamed copy failed: copying again", zap.String("member", c.m.ID), zap.Error(err))
		}
	}
	s.copies = nil
	return s.r.replicate(s.company, entries, copied)
}

// Abort cuts every request short: the members store none of it.
func (s *stream) Abort() {
	for _, c := range s.copies {
		c.aborted.Store(true)
		c.cancel()
	}
	s.End()
	for _, c := range s.copies {
		<-c.wrote
		<-c.done
	}
	s.copies = nil
}

// errAborted ends the body of a copy whose upload was not committed.
var errAborted = errors.New("upload aborted on the leader")

// sendRetry copies entries to m, again every 100 ms until DegradeAfter
// has passed (a member restarting comes back within it). The member that
// led before this one is not waited for when it cannot be reached: the
// pair elected this one because it stopped answering, so it is down or
// cut off already, and every upload of the failover would wait
// DegradeAfter for nothing; nor is it waited for longer than two
// heartbeat timeouts when it does not answer at all (powered off: a dial
// or a dead connection hangs rather than fails).
func (r *Replicator) sendRetry(m Member, company string, entries *io.SectionReader) error {
	window := r.after
	if r.node.Deposed() == m.ID {
		window = min(window, 2*r.node.cfg.HeartbeatTimeout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), window)
	defer cancel()
	for {
		err := r.send(ctx, m, company, io.NewSectionReader(entries, 0, entries.Size()))
		if err == nil || ctx.Err() != nil {
			return err
		}
		if errors.Is(err, errUnreachable) && r.node.Deposed() == m.ID {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// recordBehind records member behind through the log; when that fails the
// member stays dirty and Gate refuses until it succeeds.
func (r *Replicator) recordBehind(member, reason string) error {
	if len(reason) > 512 {
		reason = reason[:512]
	}
	cmd, err := catalog.NewCommand(KindBehind, Behind{Member: member, Since: r.clk.Now().UTC(), Reason: reason})
	if err == nil {
		_, err = r.node.Submit(cmd)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("%w: %s: %v; the pair cannot record it behind either (%w): bring the other member or the witness back",
			ErrNotCopied, member, reason, err)
		r.dirty[member] = err
		return err
	}
	delete(r.dirty, member)
	r.log.Warn("member recorded behind: uploads are acknowledged on this member alone until it catches up",
		zap.String("member", member), zap.String("reason", reason))
	return nil
}

// Gate fails while some copy failed and the member could not yet be
// recorded behind: an upload or commit must not be acknowledged then
// (its chunks may be here alone, unknown to the pair).
func (r *Replicator) Gate() error {
	r.mu.Lock()
	var members []string
	for m := range r.dirty {
		members = append(members, m)
	}
	r.mu.Unlock()
	var errs []error
	for _, m := range members {
		errs = append(errs, r.recordBehind(m, "an earlier copy failed"))
	}
	return errors.Join(errs...)
}

// sendFrame is the size a copy's frames are cut at (whole entries; one
// larger entry goes alone).
const sendFrame = 1 << 20

// send copies the whole sealed entries of body, as they lie in a pack, to
// m in one request, and returns once the member committed them.
func (r *Replicator) send(ctx context.Context, m Member, company string, body io.Reader) error {
	q, err := r.node.copies.openEntries(ctx, m.ID, m.Raft, company, r.sweepIndex())
	if err != nil {
		return err
	}
	buf := make([]byte, 0, sendFrame)
	hdr := make([]byte, pack.EntryHeaderSize)
	for {
		if _, err := io.ReadFull(body, hdr); err == io.EOF {
			break
		} else if err != nil {
			q.abort()
			return fmt.Errorf("read entries to copy: %w", err)
		}
		h, err := pack.ParseEntryHeader(hdr)
		if err != nil {
			q.abort()
			return fmt.Errorf("read entries to copy: %w", err)
		}
		n := pack.EntryHeaderSize + int(h.BodyLen)
		if len(buf) > 0 && len(buf)+n > sendFrame {
			if _, err := q.add(buf); err != nil {
				q.abort()
				return err
			}
			buf = buf[:0]
		}
		at := len(buf)
		buf = append(append(buf, hdr...), make([]byte, int(h.BodyLen))...)
		if _, err := io.ReadFull(body, buf[at+pack.EntryHeaderSize:]); err != nil {
			q.abort()
			return fmt.Errorf("read entries to copy: %w", err)
		}
	}
	if len(buf) > 0 {
		if _, err := q.add(buf); err != nil {
			q.abort()
			return err
		}
	}
	if err := q.commit(); err != nil {
		q.abort()
		return err
	}
	return q.end()
}

// Handler serves the HTTP side of the pair address on a data member:
// this member's status. Copies come on their own stream (ServeCopy).
func (r *Replicator) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+PathStatus, r.node.StatusHandler())
	return mux
}

// CatchUpProgress is what a running catch-up reports.
type CatchUpProgress struct {
	Member  string
	Checked int64 // chunks compared
	Copied  int64 // chunks copied
	Bytes   int64 // bytes copied
}

// CatchUp copies to member every chunk of every company it lacks, then
// clears its behind record. New entries are copied to it live from the
// start, so nothing stored meanwhile is missed. progress, if set, is told
// after each batch.
func (r *Replicator) CatchUp(ctx context.Context, member string, progress func(CatchUpProgress)) error {
	peers, _, err := r.peers()
	if err != nil {
		return err
	}
	var m Member
	for _, p := range peers {
		if p.ID == member {
			m = p
		}
	}
	if m.ID == "" {
		return fmt.Errorf("catch up %s: %w: not a data member of this pair", member, ErrInvalid)
	}
	// A member just restarting answers within seconds: wait for it here
	// (asking every catchUpPoll, up to catchUpWait) rather than fail and be
	// started again by the next tick, so the copy starts as soon as it is
	// back.
	for wait := time.Now().Add(catchUpWait); ; {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := r.node.PeerStatus(pctx, m.Raft)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(wait) {
			return fmt.Errorf("catch up %s: it does not answer: %w", member, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(catchUpPoll):
		}
	}
	r.mu.Lock()
	r.live[member] = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.live, member)
		r.mu.Unlock()
	}()
	cos, err := r.node.cfg.Catalog.Companies()
	if err != nil {
		return err
	}
	p := CatchUpProgress{Member: member}
	for _, co := range cos {
		if err := r.catchUpCompany(ctx, m, co.Name, &p, progress); err != nil {
			return fmt.Errorf("catch up %s: %w", member, err)
		}
	}
	r.mu.Lock()
	live := r.live[member]
	r.mu.Unlock()
	if !live {
		return fmt.Errorf("catch up %s: a live copy failed meanwhile; trying again", member)
	}
	r.node.answered(member)
	cmd, err := catalog.NewCommand(KindBehind, Behind{Member: member, Caught: true})
	if err != nil {
		return err
	}
	if _, err := r.node.Submit(cmd); err != nil {
		return fmt.Errorf("catch up %s: record it caught up: %w", member, err)
	}
	r.log.Info("member caught up", zap.String("member", member), zap.Int64("chunks_copied", p.Copied), zap.Int64("bytes", p.Bytes))
	return nil
}

// catchUpWait is how long a catch-up waits for its member to answer,
// asking every catchUpPoll: a member that is down refuses the connection
// at once, so asking often costs little, and the copy starts within
// catchUpPoll of the member's coming back (it was 100 ms, against the
// 0.3-0.4 s a catch-up of 128 MiB takes on a quiet machine).
const (
	catchUpWait = 10 * time.Second
	catchUpPoll = 20 * time.Millisecond
)

// catchUpBatch is how many chunk ids one lack request of a catch-up asks
// about.
const catchUpBatch = 4096

// catchUpStreamBytes is how much one streamed request of a catch-up
// carries before the member commits it (and the next request starts
// while it does).
const catchUpStreamBytes = 48 << 20

// catchUpStreams is how many copy streams one company's catch-up runs at
// once. One stream is one goroutine on each end that reads, frames and
// TLS-encrypts (the leader) or reads and decrypts (the member), the
// stages a copy's CPU goes to: two keep both cores of each member busy
// where one left most of a core idle. Each stream commits its own parts;
// the runs of a batch go to whichever stream is free.
const catchUpStreams = 2

// catchUpCompany copies to m the chunks of one company it lacks: the
// index is listed in batches, the member says which of a batch it lacks,
// and those entries are read in pack order, runs of neighbours in one
// read, and streamed to it over catchUpStreams requests at once, each of
// which the member commits every catchUpStreamBytes while the next part
// arrives. The next batch is listed and asked about while the last one's
// runs are sent.
func (r *Replicator) catchUpCompany(ctx context.Context, m Member, company string, p *CatchUpProgress, progress func(CatchUpProgress)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var copied, bytes atomic.Int64
	// The first failure is the cause; the others are streams it cut.
	var (
		firstMu sync.Mutex
		first   error
	)
	failWith := func(err error) {
		firstMu.Lock()
		if first == nil {
			first = err
		}
		firstMu.Unlock()
		cancel()
	}
	work := make(chan []idLoc, 2*catchUpStreams)
	var wg sync.WaitGroup
	for range catchUpStreams {
		wg.Add(1)
		go func() { // owner: catchUpCompany (closes work, waits for wg)
			defer wg.Done()
			if err := r.catchUpStream(ctx, m, company, work, &copied, &bytes); err != nil {
				failWith(err)
			}
		}()
	}
	report := func() {
		p.Copied, p.Bytes = p.Copied+copied.Swap(0), p.Bytes+bytes.Swap(0)
		if progress != nil {
			progress(*p)
		}
	}
	var batch []idLoc
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		lack, err := r.lacking(ctx, m, company, batch)
		if err != nil {
			return err
		}
		p.Checked += int64(len(batch))
		batch = batch[:0]
		// In pack order: the leader reads each pack front to back.
		slices.SortFunc(lack, func(a, b idLoc) int { return store.ComparePackOrder(a.loc, b.loc) })
		for len(lack) > 0 {
			// A run: entries that lie one after the other in a pack.
			n, end := 1, lack[0].loc.End()
			for n < len(lack) && lack[n].loc.Pack == lack[0].loc.Pack && int64(lack[n].loc.Offset) == end &&
				lack[n].loc.End()-int64(lack[0].loc.Offset) <= catchUpRun {
				end = lack[n].loc.End()
				n++
			}
			select {
			case work <- lack[:n:n]:
			case <-ctx.Done():
				return ctx.Err()
			}
			lack = lack[n:]
		}
		report()
		return nil
	}
	err := r.st.ForEachChunk(company, func(id [32]byte, loc store.Location) error {
		batch = append(batch, idLoc{id, loc})
		if len(batch) == catchUpBatch {
			return flush()
		}
		return ctx.Err()
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		failWith(err) // the streams end without their last commit
	}
	close(work)
	wg.Wait()
	report()
	return first
}

// catchUpStream sends the runs it takes from work to m on one entries
// request and ends it when work is closed; cancelled, it cuts the request
// (the member keeps the parts it committed).
func (r *Replicator) catchUpStream(ctx context.Context, m Member, company string, work <-chan []idLoc, copied, bytes *atomic.Int64) error {
	cs := &catchStream{r: r, ctx: ctx, m: m, company: company}
	defer cs.abort() // an early return still owns the request
	var buf []byte
	for run := range work {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var err error
		if buf, err = r.readRun(company, run, buf); err != nil {
			return err
		}
		if len(buf) > 0 {
			if err := cs.add(buf); err != nil {
				return err
			}
		}
		copied.Add(cs.copied)
		bytes.Add(cs.bytes)
		cs.copied, cs.bytes = 0, 0
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return cs.finish()
}

// catchUpRun bounds one read of neighbouring entries in a catch-up.
const catchUpRun = 4 << 20

// readRun reads the entries of run (neighbours in one pack) into dst: in
// one read when each header is where the index says, else one by one,
// leaving out those collected or damaged meanwhile (verify reports
// damage, and the next backup that has such a chunk heals it on both).
func (r *Replicator) readRun(company string, run []idLoc, dst []byte) ([]byte, error) {
	first := run[0].loc
	n := int(run[len(run)-1].loc.End() - int64(first.Offset))
	dst = slices.Grow(dst[:0], n)[:n]
	if err := r.st.ReadPackAt(first.Pack, dst, int64(first.Offset)); err == nil {
		ok := true
		for _, x := range run {
			at := int(x.loc.Offset - first.Offset)
			h, err := pack.ParseEntryHeader(dst[at:])
			if err != nil || h.ID != x.id || h.BodyLen != x.loc.BodyLen {
				ok = false
				break
			}
		}
		if ok {
			return dst, nil
		}
	}
	dst = dst[:0]
	var entry []byte
	for _, x := range run {
		var err error
		entry, err = r.st.ReadEntry(company, x.id, entry)
		if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrDamaged) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read chunk %x to copy: %w", x.id[:8], err)
		}
		dst = append(dst, entry...)
	}
	return dst, nil
}

type idLoc struct {
	id  [32]byte
	loc store.Location
}

// lacking asks m which of batch it lacks.
func (r *Replicator) lacking(ctx context.Context, m Member, company string, batch []idLoc) ([]idLoc, error) {
	body := make([]byte, 0, len(batch)*32)
	for _, x := range batch {
		body = append(body, x.id[:]...)
	}
	bm, err := r.node.copies.lack(ctx, m.ID, m.Raft, company, r.sweepIndex(), body)
	if err != nil {
		return nil, err
	}
	var out []idLoc
	for i, x := range batch {
		if bm[i/8]&(1<<(i%8)) != 0 {
			out = append(out, x)
		}
	}
	return out, nil
}

// catchStream streams a catch-up's entries of one company to the member
// in one request: it asks for a commit every catchUpStreamBytes and reads
// the answer to one only once the next was asked, so the member commits
// one part while the next arrives.
type catchStream struct {
	r       *Replicator
	ctx     context.Context
	m       Member
	company string

	q             *entriesReq
	n             int64 // bytes since the last commit
	copied, bytes int64 // entries and bytes sent, for the progress
}

func (c *catchStream) add(entries []byte) error {
	if c.q == nil {
		q, err := c.r.node.copies.openEntries(c.ctx, c.m.ID, c.m.Raft, c.company, c.r.sweepIndex())
		if err != nil {
			return err
		}
		c.q = q
	}
	n, err := c.q.add(entries)
	if err != nil {
		return err
	}
	c.copied += int64(n)
	c.bytes += int64(len(entries))
	if c.n += int64(len(entries)); c.n >= catchUpStreamBytes {
		c.n = 0
		if err := c.q.commit(); err != nil {
			return err
		}
		if c.q.pending > 1 {
			return c.q.wait()
		}
	}
	return nil
}

// finish asks for the last commit and waits until the member committed
// every part.
func (c *catchStream) finish() error {
	if c.q == nil {
		return nil
	}
	q := c.q
	c.q = nil
	if c.n > 0 {
		if err := q.commit(); err != nil {
			q.abort()
			return err
		}
	}
	return q.end()
}

// abort cuts the request short: the member keeps only the parts it
// committed.
func (c *catchStream) abort() {
	if c.q != nil {
		c.q.abort()
		c.q = nil
	}
}
