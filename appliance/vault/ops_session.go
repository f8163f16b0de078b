package vault

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/store"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/wire"
)

// Sessions: an agent opens one per synchronization of a configuration,
// asks which chunks the vault lacks, uploads them, and commits or aborts
// (ops_commit.go). Sessions hold no data; they scope uploads and commits,
// and only their own computer may use them.

// session is an open synchronization of one configuration.
type session struct {
	id       string
	company  string
	computer string
	config   string
	previous uint64
	started  time.Time

	mu         sync.Mutex
	lastUsed   time.Time
	chunksSent int64
	bytesSent  int64
	// protect holds every chunk id the session asked about, uploaded or
	// referenced: live for garbage collection until the session ends
	// (gc.go). 8-12 bytes per id (idset.go).
	protect idSet
	// stopWarm stops reading the previous listing ahead (warm.go); set
	// and called with the vault's smu held.
	stopWarm func()
}

// OpenSession opens a session for one of the agent's configurations; it
// replaces any open session of that configuration (the agent restarted).
func (v *Vault) OpenSession(ctx context.Context, p *Principal, config string) (wire.Session, error) {
	c, err := self(p, CapBackup)
	if err != nil {
		return wire.Session{}, err
	}
	if _, err := v.Catalog.Config(c.ID, config); err != nil {
		return wire.Session{}, fail(http.StatusNotFound, wire.CodeNotFound, "configuration %q does not exist for this computer: create it first", config)
	}
	prev, err := v.Catalog.LastSeq(c.ID, config)
	if err != nil {
		return wire.Session{}, err
	}
	var b [16]byte
	rand.Read(b[:])
	now := v.clk.Now()
	s := &session{id: hex.EncodeToString(b[:]), company: c.Company, computer: c.ID, config: config,
		previous: prev, started: now, lastUsed: now}
	v.smu.Lock()
	for id, old := range v.sessions {
		if old.computer == c.ID && old.config == config {
			delete(v.sessions, id) // the agent restarted: the new session replaces the old
			v.retireLocked(old)
		}
	}
	v.capSessionsLocked(c.ID) // limits.go
	v.sessions[s.id] = s
	v.startWarm(s)
	v.smu.Unlock()
	return wire.Session{ID: s.id, Previous: prev, Expires: now.Add(v.opts.SessionTTL)}, nil
}

// session finds the agent's open session id. Another computer's session is
// unknown to it, in its company or not.
func (v *Vault) session(p *Principal, id string) (*caller, *session, error) {
	c, err := self(p, CapBackup)
	if err != nil {
		return nil, nil, err
	}
	v.smu.Lock()
	s := v.sessions[id]
	v.smu.Unlock()
	if s == nil || s.computer != c.ID {
		return nil, nil, fail(http.StatusNotFound, wire.CodeUnknownSession, "unknown session %q (expired, finished or replaced): open a new session", id)
	}
	s.mu.Lock()
	s.lastUsed = v.clk.Now()
	s.mu.Unlock()
	return c, s, nil
}

// admit takes a slot of pool for the agent's request (fair slots,
// limits.go) before its body is read: after checking the session id it
// names, if any, or else that the agent holds need.
func (v *Vault) admit(ctx context.Context, pool *slotPool, p *Principal, need Capability, id string) (release func(), err error) {
	var c *caller
	if id != "" {
		c, _, err = v.session(p, id)
	} else {
		c, err = self(p, need)
	}
	if err != nil {
		return nil, err
	}
	return pool.acquire(ctx, c.Company, c.ID)
}

func (v *Vault) endSession(s *session) {
	v.smu.Lock()
	if v.sessions[s.id] == s {
		delete(v.sessions, s.id)
		v.retireLocked(s)
	}
	v.smu.Unlock()
}

// expireSessions forgets sessions idle longer than SessionTTL, until ctx is
// done.
func (v *Vault) expireSessions(ctx context.Context) {
	var portalSweep time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-v.clk.After(time.Minute):
		}
		now := v.clk.Now()
		if now.Sub(portalSweep) >= time.Hour { // portal sessions, hourly (ops_users.go)
			portalSweep = now
			if n, err := v.Catalog.ExpireSessions(now); err != nil {
				v.log.Warn("remove expired portal sessions", zap.Error(err))
			} else if n > 0 {
				v.log.Info("expired portal sessions removed", zap.Int("sessions", n))
			}
		}
		v.smu.Lock()
		for id, s := range v.sessions {
			s.mu.Lock()
			idle := now.Sub(s.lastUsed)
			s.mu.Unlock()
			if idle > v.opts.SessionTTL {
				delete(v.sessions, id)
				v.retireLocked(s)
			}
		}
		v.smu.Unlock()
	}
}

// Abort ends a session without a version.
func (v *Vault) Abort(ctx context.Context, p *Principal, id string) error {
	_, s, err := v.session(p, id)
	if err != nil {
		return err
	}
	v.endSession(s)
	return nil
}

// Lack answers which of ids the vault lacks for the agent's company: a
// bitmap, bit i set when it lacks ids[i].
func (v *Vault) Lack(ctx context.Context, p *Principal, id string, ids [][32]byte) ([]byte, error) {
	_, s, err := v.session(p, id)
	if err != nil {
		return nil, err
	}
	has, err := v.hasProtected(s, ids)
	if err != nil {
		return nil, err
	}
	bitmap := make([]byte, (len(ids)+7)/8)
	for i, h := range has {
		if !h {
			bitmap[i/8] |= 1 << (i % 8)
		}
	}
	return bitmap, nil
}

// uploadBuffers are an upload request's working buffers: the frame as
// read, its plaintext. Reused, they spare the collector chunk-sized
// allocations per chunk.
type uploadBuffers struct{ frame, plain []byte }

var uploadBufs = sync.Pool{New: func() any { return new(uploadBuffers) }}

// sealedBufs hold sealed entries, each given to the appender until it is
// written here and, on a pair's leader, sent to the other member.
var sealedBufs = sync.Pool{New: func() any { return new([]byte) }}

// Upload stores the chunks of body, a stream of frames of at most
// wire.MaxUploadBody bytes (size is its declared length, -1 if unknown),
// and returns how many it appended. Every chunk is checked against its id;
// the request is stored whole or not at all.
func (v *Vault) Upload(ctx context.Context, p *Principal, id string, size int64, body io.Reader) (int, error) {
	c, s, err := v.session(p, id)
	if err != nil {
		return 0, err
	}
	release, err := v.uploads.acquire(ctx, c.Company, c.ID) // fair slots (limits.go)
	if err != nil {
		return 0, err
	}
	defer release()
	if err := v.checkQuota(s.company); err != nil { // quota.go
		return 0, err
	}
	// The body is processed as it arrives, one chunk at a time: each is
	// verified, sealed and appended past the pack's committed length, and
	// the whole request is committed at the end or cut off at the first
	// bad chunk. A request holds about three chunks of memory, whatever
	// its size.
	if size > wire.MaxUploadBody {
		return 0, fail(http.StatusRequestEntityTooLarge, wire.CodeTooLarge, "request body of %d bytes is over the %d limit", size, wire.MaxUploadBody)
	}
	lb := &limitedBody{r: body, left: wire.MaxUploadBody}
	bufs := uploadBufs.Get().(*uploadBuffers)
	fr := wire.NewFrameReaderBuffer(lb, bufs.frame)
	scratch := bufs.plain
	defer func() {
		bufs.frame, bufs.plain = fr.Buffer(), scratch[:0]
		uploadBufs.Put(bufs)
	}()
	h := keys.NewHasher(c.keys.set.ChunkID)
	app, err := v.Store.Append(s.company)
	if err != nil {
		return 0, err
	}
	committed := false
	var pend pendingEntries
	defer func() {
		pend.release()
		if !committed {
			app.Abort()
		}
	}()
	var sent int64
	for {
		f, err := fr.Next()
		if err == io.EOF {
			break
		}
		if lb.over {
			return 0, fail(http.StatusRequestEntityTooLarge, wire.CodeTooLarge, "request body is over the %d limit", wire.MaxUploadBody)
		}
		if err != nil {
			return 0, fail(http.StatusBadRequest, wire.CodeBadRequest, "upload: %v; nothing of this request was stored", err)
		}
		if f.Kind != wire.FrameData && f.Kind != wire.FrameListing {
			return 0, fail(http.StatusBadRequest, wire.CodeBadRequest, "upload: chunk %x has unknown kind %d", f.ID[:8], f.Kind)
		}
		plain := f.Payload // checked as is unless compressed (or lying about its length)
		if f.Flags != 0 || uint32(len(f.Payload)) != f.PlainLen {
			scratch, err = wire.Decompress(wire.Room(scratch, int(f.PlainLen)), f.Flags, f.Payload, f.PlainLen)
			if err != nil {
				return 0, fail(http.StatusBadRequest, wire.CodeBadRequest, "upload: chunk %x: %v", f.ID[:8], err)
			}
			plain = scratch
		}
		if h.Sum(plain) != f.ID {
			return 0, fail(http.StatusUnprocessableEntity, wire.CodeMismatch, "upload: chunk %x: content does not match its id; nothing of this request was stored", f.ID[:8])
		}
		sent += int64(len(f.Payload))
		eh := pack.EntryHeader{Kind: pack.Kind(f.Kind), Flags: f.Flags, ID: f.ID, PlainLen: f.PlainLen}
		// Each entry is sealed into a buffer the appender may keep: a
		// pair's leader sends it to the other member from there, without
		// a copy, and gives it back once sent (at once on a single vault).
		if len(f.Payload) < pendingSmall {
			sb := smallSealed.Get().(*[]byte)
			*sb = pack.AppendEntry((*sb)[:0], c.keys.aead, &eh, f.Payload)
			pend.add(eh, sb)
			if pend.full() {
				if err := v.appendPending(s, app, &pend); err != nil {
					return 0, err
				}
			}
			continue
		}
		// A larger chunk is looked up alone, as it comes (in order after
		// the small ones before it): its lookup costs little beside its
		// bytes, and its buffer does not wait.
		if err := v.appendPending(s, app, &pend); err != nil {
			return 0, err
		}
		if has, err := v.hasProtected(s, [][32]byte{f.ID}); err != nil {
			return 0, err
		} else if has[0] {
			continue // already stored (a retry, or another session): append nothing
		}
		sb := sealedBufs.Get().(*[]byte)
		*sb = pack.AppendEntry(wire.Room(*sb, pack.EntryHeaderSize+pack.Overhead+len(f.Payload)), c.keys.aead, &eh, f.Payload)
		if err := app.AddOwned(eh, *sb, func() { sealedBufs.Put(sb) }); err != nil {
			return 0, err
		}
	}
	if err := v.appendPending(s, app, &pend); err != nil {
		return 0, err
	}
	n := app.Len()
	committed = true
	if err := app.Commit(); err != nil {
		return 0, err
	}
	if err := v.pairGate(); err != nil { // pair.go: chunks skipped as stored may be on this member alone
		return 0, err
	}
	s.mu.Lock()
	s.chunksSent += int64(n)
	s.bytesSent += sent
	s.mu.Unlock()
	return n, nil
}

// limitedBody reads at most left bytes and remembers whether the body
// went over.
type limitedBody struct {
	r    io.Reader
	left int64
	over bool
}

func (l *limitedBody) Read(p []byte) (int, error) {
	if l.left <= 0 {
		var one [1]byte
		if n, _ := l.r.Read(one[:]); n > 0 {
			l.over = true
			return 0, errors.New("request body over the limit")
		}
		return 0, io.EOF
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// An upload's verified, sealed entries of chunks under pendingSmall wait
// in a pendingEntries until pendingMax of them or pendingBytes of sealed
// bytes have come, and are then looked up together (hasProtected) and
// appended unless stored: one index transaction for each such batch, not
// one for each chunk (the vault's CPU profile of an initial backup of
// 100,000 small files had 18 % of its samples in Store.Has called chunk by
// chunk; docs/performance.md, item 36). Memory: at most about pendingBytes
// of sealed entries, in buffers of their own (smallSealed) that are not
// kept once grown past twice pendingSmall.
const (
	pendingMax   = 256
	pendingBytes = 1 << 20
	pendingSmall = 64 << 10
)

var smallSealed = sync.Pool{New: func() any { return new([]byte) }}

func putSmallSealed(sb *[]byte) {
	if cap(*sb) <= 2*pendingSmall {
		smallSealed.Put(sb)
	}
}

type pendingEntries struct {
	hdrs  []pack.EntryHeader
	bufs  []*[]byte
	ids   [][32]byte
	bytes int
}

func (p *pendingEntries) add(h pack.EntryHeader, sb *[]byte) {
	p.hdrs = append(p.hdrs, h)
	p.bufs = append(p.bufs, sb)
	p.ids = append(p.ids, h.ID)
	p.bytes += len(*sb)
}

func (p *pendingEntries) full() bool { return len(p.ids) >= pendingMax || p.bytes >= pendingBytes }

// release gives back the buffers of entries not appended, and empties p.
func (p *pendingEntries) release() {
	for i, sb := range p.bufs {
		if sb != nil {
			putSmallSealed(sb)
			p.bufs[i] = nil
		}
	}
	p.hdrs, p.bufs, p.ids, p.bytes = p.hdrs[:0], p.bufs[:0], p.ids[:0], 0
}

// appendPending protects p's ids for the session, looks them up at once,
// and appends, in their order, the entries the store does not hold yet (a
// retry's, or another session's, are stored already: nothing is appended
// for them). It empties p.
func (v *Vault) appendPending(s *session, app *store.Appender, p *pendingEntries) error {
	defer p.release()
	if len(p.ids) == 0 {
		return nil
	}
	has, err := v.hasProtected(s, p.ids)
	if err != nil {
		return err
	}
	for i, sb := range p.bufs {
		if has[i] {
			continue
		}
		p.bufs[i] = nil // the appender releases it
		if err := app.AddOwned(p.hdrs[i], *sb, func() { putSmallSealed(sb) }); err != nil {
			return err
		}
	}
	return nil
}
