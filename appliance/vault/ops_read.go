package vault

import (
	"context"
	"crypto/cipher"
	"encoding/hex"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"vaultnode/appliance/store"
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
// network's writes. Every chunk read waits for its plaintext in the
// vault's read-ahead budget (Limits.ReadAheadBytes, all downloads
// together) before it goes to emit, and gives it back once written: the
// downloads hold at most one chunk each beyond that budget.
func (v *Vault) GetChunks(ctx context.Context, p *Principal, ids [][32]byte, emit func(frame []byte) error) error {
	c, err := self(p, CapRestore)
	if err != nil {
		return err
	}
	requestID := requestOf(ctx).id
	rctx, cancel := context.WithCancel(ctx)
	read := make(chan chunkRead, readAheadChunks)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(read)
		v.readChunks(rctx, c.Company, c.keys.aead, ids, read)
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

// readAheadChunks is how many chunks a download reads ahead of what it
// writes, at most.
const readAheadChunks = 4

// chunkRead is one chunk read for a download: its frame encoded in buf,
// or the store's error; held is what it holds of the read-ahead budget.
type chunkRead struct {
	id     [32]byte
	framed []byte
	err    error
	buf    *[]byte
	held   int64
}

// readChunks reads the chunks ids of company in order and sends them on
// out, each once its plaintext fits the read-ahead budget, until ctx ends.
func (v *Vault) readChunks(ctx context.Context, company string, aead cipher.AEAD, ids [][32]byte, out chan<- chunkRead) {
	for _, id := range ids {
		bp, _ := v.chunkBufs.Get().(*[]byte)
		if bp == nil {
			bp = new([]byte)
		}
		if cap(*bp) < wire.FrameHeaderSize {
			*bp = make([]byte, 0, 64<<10)
		}
		// The plaintext goes right after room for the frame's header.
		buf, loc, err := v.Store.Get(company, aead, id, (*bp)[:wire.FrameHeaderSize])
		r := chunkRead{id: id, err: err, buf: bp}
		if err == nil {
			*bp = buf
			f := wire.Frame{ID: id, Kind: wire.StatusOK, Flags: loc.Flags, PlainLen: loc.PlainLen, Payload: buf[wire.FrameHeaderSize:]}
			h := wire.FrameHeader(&f)
			copy(buf, h[:])
			r.framed = buf
			r.held = min(int64(len(buf)), v.limits.ReadAheadBytes)
			if v.readAhead.Acquire(ctx, r.held) != nil {
				r.held = 0
				v.doneChunk(r)
				return
			}
		}
		select {
		case out <- r:
		case <-ctx.Done():
			v.doneChunk(r)
			return
		}
	}
}

// doneChunk gives back what r holds: its budget and its buffer.
func (v *Vault) doneChunk(r chunkRead) {
	if r.held > 0 {
		v.readAhead.Release(r.held)
	}
	if r.buf != nil && cap(*r.buf) <= wire.FrameHeaderSize+wire.MaxPlain {
		*r.buf = (*r.buf)[:0]
		v.chunkBufs.Put(r.buf)
	}
}
