package vault

import (
	"context"
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
// per id, in order: the chunk as stored, or a missing or damaged status. A
// damaged frame names the request and not the store's error, which goes to
// the log. An error from emit (the client went away) ends it.
func (v *Vault) GetChunks(ctx context.Context, p *Principal, ids [][32]byte, emit func(*wire.Frame) error) error {
	c, err := self(p, CapRestore)
	if err != nil {
		return err
	}
	requestID := requestOf(ctx).id
	var buf []byte
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		var loc store.Location
		buf, loc, err = v.Store.Get(c.Company, c.keys.aead, id, buf[:0])
		f := wire.Frame{ID: id, Kind: wire.StatusOK, Flags: loc.Flags, PlainLen: loc.PlainLen, Payload: buf}
		switch {
		case errors.Is(err, store.ErrNotFound):
			f = wire.Frame{ID: id, Kind: wire.StatusMissing, Payload: []byte("the vault has no such chunk")}
		case errors.Is(err, store.ErrQuarantined):
			f = wire.Frame{ID: id, Kind: wire.StatusDamaged,
				Payload: []byte("the vault's copy of this chunk is damaged (quarantined by verify); the next backup of a computer that has it repairs it")}
		case err != nil:
			v.log.Error("damaged chunk requested", zap.String("request_id", requestID), zap.String("principal", p.String()),
				zap.String("company", c.Company), zap.String("id", hex.EncodeToString(id[:])), zap.Error(err))
			f = wire.Frame{ID: id, Kind: wire.StatusDamaged,
				Payload: fmt.Appendf(nil, "the vault cannot read this chunk (request id %s); the vault's log has the details", requestID)}
		}
		if err := emit(&f); err != nil {
			return err
		}
	}
	return nil
}
