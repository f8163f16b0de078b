package vault

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"

	"go.uber.org/zap"
	"golang.org/x/sync/semaphore"

	"vaultnode/appliance/store"
	"vaultnode/internal/pack"
	"vaultnode/internal/wire"
)

// Reading back: versions, journal records, chunks.

// Versions lists the versions of one configuration of the computer ref (all
// its configurations: ""), oldest first.
func (v *Vault) Versions(ctx context.Context, p *Principal, ref, config string) ([]wire.Manifest, error) {
	cp, err := v.computerFor(p, CapView, ref)
	if err != nil {
		return nil, err
	}
	ms, err := v.Catalog.Versions(cp.ID, config)
	if ms == nil {
		ms = []wire.Manifest{}
	}
	return ms, err
}

// JournalRecords lists the journal records of a configuration of the
// computer ref on top of version base (0: its last version).
func (v *Vault) JournalRecords(ctx context.Context, p *Principal, ref, config string, base uint64) ([]wire.Journal, error) {
	cp, err := v.computerFor(p, CapView, ref)
	if err != nil {
		return nil, err
	}
	if base == 0 {
		if base, err = v.Catalog.LastSeq(cp.ID, config); err != nil {
			return nil, err
		}
	}
	js, err := v.Catalog.Journal(cp.ID, config, base)
	if js == nil {
		js = []wire.Journal{}
	}
	return js, err
}

// GetChunks reads chunks of the agent's company and hands emit one frame
// per id, in order, encoded (header and payload in one piece, written
// with one call): the chunk as stored, or a missing or damaged status. A
// damaged frame names the request and not the store's error, which goes to
// the log. An error from emit (the client went away) ends it.
//
// The chunks are read and opened ahead of emit by a goroutine of the call
// (readAheadChunks at most), so the disk's waits and the AEAD overlap the
// network's writes. Each download may always hold one chunk of its own, as
// it did before reading ahead; a chunk beyond that is read ahead only if
// it can take its size from the vault's budget (Limits.ReadAheadBytes, all
// downloads together; at most half of it for one company) at once, and
// gives it back once written. So the budget bounds what all downloads
// hold beyond their one chunk each, and one company's downloads that stall
// (a hostile or stuck client) can take half of it, never stop another
// company's downloads from reading ahead or any download from going on.
func (v *Vault) GetChunks(ctx context.Context, p *Principal, ids [][32]byte, emit func(frame []byte) error) error {
	c, err := self(p, CapRestore)
	if err != nil {
		return err
	}
	requestID := requestOf(ctx).id
	rctx, cancel := context.WithCancel(ctx)
	read := make(chan chunkRead, readAheadChunks)
	done := make(chan struct{})
	own := make(chan struct{}, 1) // the download's one chunk outside the budget
	own <- struct{}{}
	go func() {
		defer close(done)
		defer close(read)
		v.readChunks(rctx, c.Company, c.keys.aead, ids, own, read)
	}()
	defer func() {
		cancel()
		for r := range read { // what was read ahead and not written
			v.doneChunk(r)
		}
		<-done
	}()
	for range ids {
		var r chunkRead
		select {
		case r = <-read:
		case <-ctx.Done():
			return ctx.Err()
		}
		if r.buf == nil { // the reader stopped: ctx ended
			return ctx.Err()
		}
		id, err := r.id, r.err
		var f wire.Frame
		switch {
		case err == nil:
		case errors.Is(err, store.ErrNotFound):
			f = wire.Frame{ID: id, Kind: wire.StatusMissing, Payload: []byte("the vault has no such chunk")}
		case errors.Is(err, store.ErrQuarantined):
			f = wire.Frame{ID: id, Kind: wire.StatusDamaged,
				Payload: []byte("the vault's copy of this chunk is damaged (quarantined by verify); the next backup of a computer that has it repairs it")}
		default:
			v.log.Error("damaged chunk requested", zap.String("request_id", requestID), zap.String("principal", p.String()),
				zap.String("company", c.Company), zap.String("id", hex.EncodeToString(id[:])), zap.Error(err))
			f = wire.Frame{ID: id, Kind: wire.StatusDamaged,
				Payload: fmt.Appendf(nil, "the vault cannot read this chunk (request id %s); the vault's log has the details", requestID)}
		}
		framed := r.framed
		if err != nil {
			framed = wire.AppendFrame(nil, &f)
		}
		err = emit(framed)
		v.doneChunk(r)
		if err != nil {
			return err
		}
	}
	return nil
}

// readAheadChunks is how many chunks a download has read and not yet
// begun to write, at most.
const readAheadChunks = 2

// chunkRead is one chunk read for a download: its frame encoded in buf,
// or the store's error; held is what it holds of the read-ahead budget,
// own (when not nil) the download's token of its one chunk outside it.
type chunkRead struct {
	id     [32]byte
	framed []byte
	err    error
	buf    *[]byte
	held   int64
	own    chan<- struct{}
	// company is whose share of the budget held counts against.
	company string
}

// takeReadAhead takes n bytes of the read-ahead budget for a download of
// company if they are there at once: at most half the budget goes to one
// company, so the others' downloads keep reading ahead whatever its
// downloads do.
func (v *Vault) takeReadAhead(company string, n int64) bool {
	v.raMu.Lock()
	co := v.raCompany[company]
	if co == nil {
		if v.raCompany == nil {
			v.raCompany = map[string]*semaphore.Weighted{}
		}
		co = semaphore.NewWeighted(v.limits.ReadAheadBytes / 2)
		v.raCompany[company] = co
	}
	v.raMu.Unlock()
	if !co.TryAcquire(n) {
		return false
	}
	if !v.readAhead.TryAcquire(n) {
		co.Release(n)
		return false
	}
	return true
}

// giveReadAhead gives back what takeReadAhead took.
func (v *Vault) giveReadAhead(company string, n int64) {
	v.readAhead.Release(n)
	v.raMu.Lock()
	co := v.raCompany[company]
	v.raMu.Unlock()
	co.Release(n)
}

// readChunks reads the chunks ids of company in order and sends them on
// out until ctx ends. Each chunk first takes the download's own token (a
// chunk it may hold outside the budget) if it is free, else what it takes
// from the budget if that is there at once, else waits for the token:
// what a chunk takes is known from the index before it is read.
//
// The ids are looked up first, so that the store's stream reads the
// entries ahead in spans, directly from the disk when the page cache lacks
// them (store.ReadStream).
func (v *Vault) readChunks(ctx context.Context, company string, aead *pack.Sealer, ids [][32]byte, own chan struct{}, out chan<- chunkRead) {
	locs := make([]store.Location, len(ids))
	found := make([]bool, len(ids))
	for i, id := range ids {
		loc, err := v.Store.Lookup(company, id)
		locs[i], found[i] = loc, err == nil
	}
	rs := v.Store.ReadStream(company, aead, locs, found)
	defer rs.Close()
	for i, id := range ids {
		need := wire.FrameHeaderSize + 64<<10 // not found: Get says why
		loc := locs[i]
		if found[i] {
			need = wire.FrameHeaderSize + int(loc.BodyLen) // the plaintext is shorter
		}
		var r chunkRead
		select {
		case <-own:
			r.own = own
		default:
			// The budget counts the buffer the chunk takes, its size class.
			if held := int64(chunkBufSize(need)); v.takeReadAhead(company, held) {
				r.held, r.company = held, company
				break
			}
			select {
			case <-own:
				r.own = own
			case <-ctx.Done():
				return
			}
		}
		bp := v.chunkBuf(need)
		// The plaintext goes right after room for the frame's header.
		var buf []byte
		var err error
		if found[i] {
			// Read where the lookup found it (looked up again only if
			// garbage collection removed that pack meanwhile).
			buf, loc, err = rs.Get(i, id, loc, (*bp)[:wire.FrameHeaderSize])
		} else {
			buf, loc, err = v.Store.Get(company, aead, id, (*bp)[:wire.FrameHeaderSize])
		}
		r.id, r.err, r.buf = id, err, bp
		if err == nil {
			*bp = buf
			f := wire.Frame{ID: id, Kind: wire.StatusOK, Flags: loc.Flags, PlainLen: loc.PlainLen, Payload: buf[wire.FrameHeaderSize:]}
			h := wire.FrameHeader(&f)
			copy(buf, h[:])
			r.framed = buf
		}
		select {
		case out <- r:
		case <-ctx.Done():
			v.doneChunk(r)
			return
		}
	}
}

// Download buffers are pooled by size class, a power of two from 64 KiB
// to 16 MiB, so a small chunk never holds a large buffer.
const (
	minChunkBufShift = 16
	chunkBufClasses  = 9
)

// chunkBufClass returns the pool index of an n-byte buffer, or -1 when n
// is larger than the largest class (then the buffer is not pooled).
func chunkBufClass(n int) int {
	c := max(bits.Len(uint(n-1))-minChunkBufShift, 0)
	if c >= chunkBufClasses {
		return -1
	}
	return c
}

// chunkBufSize is the size of the buffer chunkBuf returns for n bytes.
func chunkBufSize(n int) int {
	c := chunkBufClass(n)
	if c < 0 {
		return n
	}
	return 1 << (c + minChunkBufShift)
}

// chunkBuf returns a buffer of at least n bytes.
func (v *Vault) chunkBuf(n int) *[]byte {
	c := chunkBufClass(n)
	if c < 0 {
		b := make([]byte, 0, n)
		return &b
	}
	if bp, ok := v.chunkBufs[c].Get().(*[]byte); ok {
		return bp
	}
	b := make([]byte, 0, 1<<(c+minChunkBufShift))
	return &b
}

// doneChunk gives back what r holds: its budget or its download's token,
// and its buffer.
func (v *Vault) doneChunk(r chunkRead) {
	if r.held > 0 {
		v.giveReadAhead(r.company, r.held)
	}
	if r.own != nil {
		r.own <- struct{}{}
	}
	// A buffer that grew past its class (Get appended more than the
	// index said) is left to the collector.
	n := cap(*r.buf)
	if c := chunkBufClass(n); c >= 0 && n == 1<<(c+minChunkBufShift) {
		*r.buf = (*r.buf)[:0]
		v.chunkBufs[c].Put(r.buf)
	}
}
