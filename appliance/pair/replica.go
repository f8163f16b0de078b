package pair

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
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

// Paths on the HTTP side of the pair address.
const (
	PathEntries = "/pair/entries" // POST ?company=C: whole sealed entries to store
	PathLack    = "/pair/lack"    // POST ?company=C: ids (32 bytes each) -> bitmap of those lacking
	PathStatus  = "/pair/status"  // GET: the member's Status
)

// HeaderSweep, on an entries or lack request, is the log index of the
// last garbage collection sweep the leader applied: the member applies
// its log up to there before it answers, so a sweep it has not applied yet
// never deletes a chunk the leader stored again after its own sweep, nor
// does a lack answer count a chunk that sweep is about to delete.
const HeaderSweep = "X-Vaultnode-Sweep"

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
	// streamed and recopied count copies to a member made while the
	// entries were written, and those made again after the stream failed.
	streamed, recopied atomic.Int64

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
	return &Replicator{node: n, st: st, log: log, clk: clk, after: degradeAfter,
		dirty: map[string]error{}, live: map[string]bool{}}
}

// SetStore gives the replicator its store (the store is opened with the
// replicator's Replicate as its hook, so it comes second).
func (r *Replicator) SetStore(st *store.Store) {
	r.st = st
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

func (r *Replicator) setSweepHeader(req *http.Request) {
	if i := r.sweepIndex(); i > 0 {
		req.Header.Set(HeaderSweep, strconv.FormatUint(i, 10))
	}
}

func (r *Replicator) sweepIndex() uint64 {
	if f := r.sweep.Load(); f != nil {
		return (*f)()
	}
	return 0
}

// awaitSweep applies the log up to the leader's last sweep (HeaderSweep)
// before a copy or a lack answer; false when it could not (answered).
func (r *Replicator) awaitSweep(w http.ResponseWriter, req *http.Request) bool {
	h := req.Header.Get(HeaderSweep)
	if h == "" {
		return true
	}
	i, err := strconv.ParseUint(h, 10, 64)
	if err != nil {
		http.Error(w, "bad "+HeaderSweep, http.StatusBadRequest)
		return false
	}
	ctx, cancel := context.WithTimeout(req.Context(), 5*time.Second)
	defer cancel()
	if err := r.node.WaitApplied(ctx, i); err != nil {
		http.Error(w, "this member has not yet applied the leader's last sweep: "+err.Error(), http.StatusServiceUnavailable)
		return false
	}
	return true
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
		pr, pw := io.Pipe()
		ctx, cancel := context.WithCancel(context.Background())
		c := &peerCopy{m: m, pw: pw, cancel: cancel, done: make(chan error, 1),
			q: make(chan []byte, copyQueueMiB), room: make(chan struct{}, copyQueueMiB), wrote: make(chan struct{})}
		go func() { // owner: the stream (Commit or Abort waits for it)
			err := r.send(ctx, m, company, pr, -1)
			if err == nil {
				err = io.ErrClosedPipe // the member answered: nothing more is read
			}
			pr.CloseWithError(err)
			c.done <- err
		}()
		go c.write() // owner: the stream (End closes its queue, Commit and Abort wait for it)
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
	m      Member
	pw     *io.PipeWriter
	cancel context.CancelFunc
	done   chan error
	failed atomic.Bool // a write failed: the copy is made again at Commit

	// A streamed copy is written to the request by its own goroutine
	// from a queue of up to copyQueueMiB MiB, so the upload goes on
	// while the copy is framed, encrypted and sent: an entry costs the
	// upload about the longer of its local write and its copy, not both.
	q     chan []byte   // entries to write; closed by End
	room  chan struct{} // one token per MiB queued
	wrote chan struct{} // closed when the writer ended
}

// copyQueueMiB bounds the entries queued for one streamed copy.
const copyQueueMiB = 8

// copyBufs holds entry buffers of streamed copies.
var copyBufs sync.Pool

func entryMiB(n int) int { return min(max((n+1<<20-1)>>20, 1), copyQueueMiB) }

// write hands the queued entries to the request, then ends its body.
func (c *peerCopy) write() {
	defer close(c.wrote)
	for b := range c.q {
		if !c.failed.Load() {
			if _, err := c.pw.Write(b); err != nil {
				c.failed.Store(true)
			}
		}
		for range entryMiB(len(b)) {
			<-c.room
		}
		copyBufs.Put(&b)
	}
	c.pw.Close() // after Abort's CloseWithError, the member still sees the abort
}

// Add queues the entry for each member's request; data is the caller's
// again when it returns.
func (s *stream) Add(data []byte) {
	for _, c := range s.copies {
		if c.failed.Load() {
			continue
		}
		for range entryMiB(len(data)) {
			c.room <- struct{}{}
		}
		var b []byte
		if p, ok := copyBufs.Get().(*[]byte); ok {
			b = *p
		}
		c.q <- append(b[:0], data...)
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
		if err == io.ErrClosedPipe && !c.failed.Load() {
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
		c.cancel()
		c.pw.CloseWithError(errAborted)
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
		err := r.send(ctx, m, company, io.NewSectionReader(entries, 0, entries.Size()), entries.Size())
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

func (r *Replicator) send(ctx context.Context, m Member, company string, body io.Reader, size int64) error {
	u := "https://" + m.Raft + PathEntries + "?company=" + url.QueryEscape(company)
	req, err := http.NewRequestWithContext(ctx, "POST", u, body)
	if err != nil {
		return err
	}
	req.ContentLength = size // -1: a stream
	r.setSweepHeader(req)
	resp, err := r.node.client.Do(req)
	if err != nil {
		return fmt.Errorf("copy entries to %s: %w: %w", m.ID, errUnreachable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("copy entries to %s: %s: %s", m.ID, resp.Status, bytes.TrimSpace(b))
	}
	return nil
}

// Handler serves the replication side of the pair address on a data
// member: storing entries the leader copies, answering which it lacks,
// and this member's status.
func (r *Replicator) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathEntries, r.serveEntries)
	mux.HandleFunc("POST "+PathLack, r.serveLack)
	mux.Handle("GET "+PathStatus, r.node.StatusHandler())
	return mux
}

func (r *Replicator) serveEntries(w http.ResponseWriter, req *http.Request) {
	company := req.URL.Query().Get("company")
	if err := catalog.ValidCompanyName(company); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.node.IsLeader() {
		http.Error(w, "this member leads: it takes no copies", http.StatusConflict)
		return
	}
	if !r.awaitSweep(w, req) {
		return
	}
	n, err := r.storeEntries(company, http.MaxBytesReader(w, req.Body, MaxEntriesBody))
	if err != nil {
		r.log.Warn("store copied entries", zap.String("company", company), zap.Error(err))
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
		return
	}
	r.log.Debug("stored copied entries", zap.String("company", company), zap.Int("entries", n))
}

// storeEntries reads whole sealed entries and stores those this member
// lacks, all or none, durably before it returns.
func (r *Replicator) storeEntries(company string, body io.Reader) (int, error) {
	app, err := r.st.Append(company)
	if err != nil {
		return 0, err
	}
	app.Copied()
	done := false
	defer func() {
		if !done {
			app.Abort()
		}
	}()
	hdr := make([]byte, pack.EntryHeaderSize)
	var buf []byte
	for {
		if _, err := io.ReadFull(body, hdr); err == io.EOF {
			break
		} else if err != nil {
			return 0, fmt.Errorf("read copied entry header: %w", err)
		}
		h, err := pack.ParseEntryHeader(hdr)
		if err != nil {
			return 0, fmt.Errorf("copied entry: %w", err)
		}
		n := pack.EntryHeaderSize + int(h.BodyLen) // bounded by ParseEntryHeader
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		copy(buf, hdr)
		if _, err := io.ReadFull(body, buf[pack.EntryHeaderSize:]); err != nil {
			return 0, fmt.Errorf("read copied entry %x: %w", h.ID[:8], err)
		}
		if has, err := r.st.Has(company, [][32]byte{h.ID}); err != nil {
			return 0, err
		} else if has[0] {
			continue
		}
		if err := app.Add(h, buf); err != nil {
			return 0, err
		}
	}
	n := app.Len()
	done = true
	return n, app.Commit()
}

func (r *Replicator) serveLack(w http.ResponseWriter, req *http.Request) {
	company := req.URL.Query().Get("company")
	if err := catalog.ValidCompanyName(company); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !r.awaitSweep(w, req) {
		return
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, req.Body, MaxLackIDs*32))
	if err != nil || len(b)%32 != 0 {
		http.Error(w, fmt.Sprintf("lack: a body of whole 32-byte ids, at most %d", MaxLackIDs), http.StatusBadRequest)
		return
	}
	ids := make([][32]byte, len(b)/32)
	for i := range ids {
		copy(ids[i][:], b[i*32:])
	}
	has, err := r.st.Has(company, ids)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	bm := make([]byte, (len(ids)+7)/8)
	for i, h := range has {
		if !h {
			bm[i/8] |= 1 << (i % 8)
		}
	}
	w.Write(bm)
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

// catchUpBatch is how many chunk ids one lack request of a catch-up asks
// about.
const catchUpBatch = 4096

// catchUpStreamBytes is how much one streamed request of a catch-up
// carries before the member commits it (and the next request starts
// while it does).
const catchUpStreamBytes = 48 << 20

// catchUpCompany copies to m the chunks of one company it lacks: the
// index is listed in batches, the member says which of a batch it lacks,
// and those entries are read in pack order and streamed to it as they are
// read, in requests of catchUpStreamBytes, each committed by the member
// while the next one is sent.
func (r *Replicator) catchUpCompany(ctx context.Context, m Member, company string, p *CatchUpProgress, progress func(CatchUpProgress)) error {
	cs := &catchStream{r: r, ctx: ctx, m: m, company: company}
	defer cs.abort() // an early return still owns the requests in flight
	var batch []idLoc
	var entry []byte
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		lack, err := r.lacking(ctx, m, company, batch)
		if err != nil {
			return err
		}
		p.Checked += int64(len(batch))
		// In pack order: the leader reads each pack front to back.
		slices.SortFunc(lack, func(a, b idLoc) int {
			if c := cmp.Compare(a.loc.Pack, b.loc.Pack); c != 0 {
				return c
			}
			return cmp.Compare(a.loc.Offset, b.loc.Offset)
		})
		for _, x := range lack {
			entry, err = r.st.ReadEntry(company, x.id, entry)
			if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrDamaged) {
				// Collected meanwhile, or damaged here (verify reports
				// it, and the next backup that has it heals it on both).
				continue
			}
			if err != nil {
				return fmt.Errorf("read chunk %x to copy: %w", x.id[:8], err)
			}
			if err := cs.add(entry); err != nil {
				return err
			}
			p.Copied++
			p.Bytes += int64(len(entry))
		}
		batch = batch[:0]
		if progress != nil {
			progress(*p)
		}
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
	if err == nil {
		err = cs.finish()
	}
	return err
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
	u := "https://" + m.Raft + PathLack + "?company=" + url.QueryEscape(company)
	req, err := http.NewRequestWithContext(ctx, "POST", u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	r.setSweepHeader(req)
	resp, err := r.node.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask %s what it lacks: %w", m.ID, err)
	}
	bm, err := io.ReadAll(io.LimitReader(resp.Body, int64(len(batch)/8+2)))
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || len(bm) != (len(batch)+7)/8 {
		return nil, fmt.Errorf("ask %s what it lacks: %s (%d bytes, %v)", m.ID, resp.Status, len(bm), err)
	}
	var out []idLoc
	for i, x := range batch {
		if bm[i/8]&(1<<(i%8)) != 0 {
			out = append(out, x)
		}
	}
	return out, nil
}

// catchStream streams a catch-up's entries of one company to the member:
// one request at a time is written, and the one before it may still be
// committing on the member.
type catchStream struct {
	r       *Replicator
	ctx     context.Context
	m       Member
	company string

	cur, prev *peerCopy // the request being written, the one committing
	n         int64     // bytes written to cur
}

func (c *catchStream) add(entry []byte) error {
	if c.cur == nil {
		pr, pw := io.Pipe()
		ctx, cancel := context.WithCancel(c.ctx)
		pc := &peerCopy{m: c.m, pw: pw, cancel: cancel, done: make(chan error, 1)}
		go func() { // owner: the catchStream (end or abort waits for it)
			err := c.r.send(ctx, c.m, c.company, pr, -1)
			if err == nil {
				err = io.ErrClosedPipe // the member answered: nothing more is read
			}
			pr.CloseWithError(err)
			pc.done <- err
		}()
		c.cur, c.n = pc, 0
	}
	if _, err := c.cur.pw.Write(entry); err != nil {
		// The request ended early: its own answer says why.
		pc := c.cur
		c.cur = nil
		if werr := c.wait(pc); werr != nil {
			return werr
		}
		return fmt.Errorf("copy entries to %s: the member answered before the copy ended", c.m.ID)
	}
	c.n += int64(len(entry))
	if c.n >= catchUpStreamBytes {
		return c.end()
	}
	return nil
}

// end closes the current request's body and waits for the one before it
// (the member commits the current one while the next is written).
func (c *catchStream) end() error {
	if c.cur == nil {
		return nil
	}
	c.cur.pw.Close()
	err := c.wait(c.prev)
	c.prev, c.cur = c.cur, nil
	return err
}

func (c *catchStream) wait(pc *peerCopy) error {
	if pc == nil {
		return nil
	}
	err := <-pc.done
	pc.cancel()
	if err == io.ErrClosedPipe {
		return nil
	}
	return err
}

// finish ends the last request and waits until the member committed
// every one.
func (c *catchStream) finish() error {
	err := c.end()
	if err2 := c.wait(c.prev); err == nil {
		err = err2
	}
	c.prev = nil
	return err
}

// abort cuts the requests still running short: the member stores none of
// their entries.
func (c *catchStream) abort() {
	for _, pc := range []*peerCopy{c.cur, c.prev} {
		if pc != nil {
			pc.cancel()
			pc.pw.CloseWithError(errAborted)
			<-pc.done
		}
	}
	c.cur, c.prev = nil, nil
}
