package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/bbolt"
	"go.uber.org/zap"

	"vaultnode/internal/pack"
)

// Garbage collection's part in the store (the vault decides what is live,
// appliance/vault/gc.go): listing a company's chunks, deleting index
// records, rewriting packs whose dead share is high and removing packs
// nothing names. The ordering rules are in docs/format.md, "Deletion
// ordering".
//
// A pack is removed in three durable steps: its packs record goes and a
// doomed/<n> record appears in one transaction, then the file is removed
// through Packs, then the doomed record goes. Open never indexes a doomed
// pack (it holds nothing live) and never removes it either: the next
// collection finishes the removal (FinishRemovals).

var bucketDoomed = []byte("doomed") // pack number -> empty: removal decided, file maybe still there

// testHookDoomed, set by tests, runs between a pack's doomed record and
// its file's removal; an error stops there, as a crash would.
var testHookDoomed func(n uint32) error

// ErrPackBusy is a pack open for appending: it is left for a later
// collection.
var ErrPackBusy = errors.New("pack is open for appending")

// ChunkIDs returns the ids of every index record of a company (quarantined
// or not), sorted: 32 bytes per chunk.
func (s *Store) ChunkIDs(ctx context.Context, company string) ([][32]byte, error) {
	var out [][32]byte
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketChunks).Bucket([]byte(company))
		if b == nil {
			return nil
		}
		out = make([][32]byte, 0, b.Stats().KeyN)
		return b.ForEach(func(k, _ []byte) error {
			if len(k) == 32 {
				out = append(out, [32]byte(k))
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list chunks of %s: %w", company, err)
	}
	return out, ctx.Err() // bbolt iterates keys in order: sorted already
}

// DeleteChunks removes the index records of ids (a company's) in one
// transaction, with their quarantine and heal records, and returns how
// many records it removed and the pack bytes they held. The entries stay
// in their packs until the packs are rewritten or removed.
func (s *Store) DeleteChunks(company string, ids [][32]byte) (n int, bytes int64, err error) {
	err = s.db.Update(func(tx *bbolt.Tx) error {
		n, bytes = 0, 0
		cb := tx.Bucket(bucketChunks).Bucket([]byte(company))
		if cb == nil {
			return nil
		}
		qb := tx.Bucket(bucketQuarantine).Bucket([]byte(company))
		hb := tx.Bucket(bucketHealed).Bucket([]byte(company))
		for _, id := range ids {
			v := cb.Get(id[:])
			if v == nil {
				continue
			}
			if loc, err := parseLocation(v); err == nil {
				bytes += pack.EntryHeaderSize + int64(loc.BodyLen)
			}
			if err := cb.Delete(id[:]); err != nil {
				return err
			}
			n++
			for _, b := range []*bbolt.Bucket{qb, hb} {
				if b != nil {
					if err := b.Delete(id[:]); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("delete chunk records of %s: %w", company, err)
	}
	return n, bytes, nil
}

// PackUse is how much of a pack the index still names.
type PackUse struct {
	Number      uint32
	Company     string
	Committed   int64 // the pack's committed length
	Live        int64 // bytes of entries the index names (headers included)
	Entries     int   // entries the index names
	Quarantined int   // of them, quarantined
}

// Dead is the share of the pack's entry bytes that nothing names.
func (u PackUse) Dead() float64 {
	body := u.Committed - pack.FileHeaderSize
	if body <= 0 {
		return 0
	}
	return float64(body-u.Live) / float64(body)
}

// PackUsage reports for every pack the index knows how much of it is
// live, from the index alone (one pass over the chunk records; 40 bytes of
// memory per pack).
func (s *Store) PackUsage(ctx context.Context) ([]PackUse, error) {
	use := map[uint32]*PackUse{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		err := tx.Bucket(bucketPacks).ForEach(func(k, v []byte) error {
			n, err := parsePackKey(k)
			if err != nil {
				return nil
			}
			r, err := parsePackRecord(v)
			if err != nil {
				return nil
			}
			use[n] = &PackUse{Number: n, Company: r.Company, Committed: int64(r.Committed)}
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketChunks).ForEach(func(co, _ []byte) error {
			cb := tx.Bucket(bucketChunks).Bucket(co)
			if cb == nil {
				return nil
			}
			qb := tx.Bucket(bucketQuarantine).Bucket(co)
			return cb.ForEach(func(k, v []byte) error {
				if err := ctx.Err(); err != nil {
					return err
				}
				loc, err := parseLocation(v)
				if err != nil {
					return nil
				}
				u := use[loc.Pack]
				if u == nil {
					return nil
				}
				u.Live += pack.EntryHeaderSize + int64(loc.BodyLen)
				u.Entries++
				if qb != nil && qb.Get(k) != nil {
					u.Quarantined++
				}
				return nil
			})
		})
	})
	if err != nil {
		return nil, fmt.Errorf("measure pack usage: %w", err)
	}
	out := make([]PackUse, 0, len(use))
	for _, u := range use {
		out = append(out, *u)
	}
	slices.SortFunc(out, func(a, b PackUse) int { return int(int64(a.Number) - int64(b.Number)) })
	return out, nil
}

// claimPack takes pack n away from appending: a free writer of it is
// closed; a writer in use makes it ErrPackBusy.
func (s *Store) claimPack(n uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.writing[n] {
		return nil
	}
	for co, ws := range s.free {
		for i, w := range ws {
			if w.number == n {
				s.free[co] = slices.Delete(ws, i, i+1)
				w.f.Close()
				delete(s.writing, n)
				return nil
			}
		}
	}
	return fmt.Errorf("pack %08x: %w", n, ErrPackBusy)
}

// RepackResult says what rewriting one pack did.
type RepackResult struct {
	Moved      int   // live entries copied to a new pack
	MovedBytes int64 // their bytes
	Freed      int64 // bytes of the old pack given back
}

// Repack copies the live entries of pack n (those the index names at
// their place in it, quarantined ones excepted, which stay where verify
// found them) to the company's open pack, syncs it and points the index
// at the copies, and only then removes pack n: a crash at any instant
// leaves every live entry named by the index and readable. A pack holding
// a quarantined record is left alone. A pack with nothing live is just
// removed.
func (s *Store) Repack(ctx context.Context, n uint32) (RepackResult, error) {
	var res RepackResult
	s.busy.RLock()
	defer s.busy.RUnlock()
	if err := s.claimPack(n); err != nil {
		return res, err
	}
	var rec packRecord
	err := s.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketPacks).Get(packKey(n))
		if v == nil {
			return fmt.Errorf("pack %08x: %w", n, ErrPackNotFound)
		}
		var err error
		rec, err = parsePackRecord(v)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("repack: %w", err)
	}
	type moved struct {
		id       [32]byte
		from, to Location
	}
	var entries []moved
	var app *Appender
	var quarantined bool
	_, _, err = s.ScanPack(ctx, PackInfo{Number: n, Company: rec.Company, Committed: int64(rec.Committed), Path: s.PackPath(n)},
		func(off int64, h *pack.EntryHeader, body []byte) error {
			if quarantined {
				return nil
			}
			from := Location{Pack: n, Offset: uint32(off), BodyLen: h.BodyLen, PlainLen: h.PlainLen, Kind: h.Kind, Flags: h.Flags}
			live := false
			err := s.db.View(func(tx *bbolt.Tx) error {
				cb := tx.Bucket(bucketChunks).Bucket([]byte(rec.Company))
				if cb == nil {
					return nil
				}
				v := cb.Get(h.ID[:])
				live = v != nil && bytes.Equal(v, from.marshal())
				if qb := tx.Bucket(bucketQuarantine).Bucket([]byte(rec.Company)); live && qb != nil && qb.Get(h.ID[:]) != nil {
					quarantined = true
				}
				return nil
			})
			if err != nil || !live || quarantined {
				return err
			}
			if app == nil {
				app = &Appender{s: s, company: rec.Company, move: true}
			}
			hb := h.Marshal()
			data := append(hb[:], body...)
			if err := app.add(*h, data, nil); err != nil {
				return err
			}
			entries = append(entries, moved{id: h.ID, from: from, to: app.locs[len(app.locs)-1]})
			res.MovedBytes += int64(len(data))
			return nil
		}, nil)
	if err == nil && quarantined {
		err = fmt.Errorf("pack %08x holds a quarantined chunk: left for verify to heal", n)
	}
	if err != nil {
		if app != nil {
			app.abort()
		}
		return res, fmt.Errorf("repack: %w", err)
	}
	if app != nil {
		app.from = make([]Location, len(entries))
		for i, e := range entries {
			app.from[i] = e.from
		}
		if err := app.commit(); err != nil {
			return res, fmt.Errorf("repack pack %08x: %w", n, err)
		}
	}
	res.Moved = len(entries)
	// Nothing may name pack n any more before it goes: an entry whose
	// record changed meanwhile (verify relocating a chunk there) keeps the
	// pack for a later collection.
	check := make([][32]byte, len(entries))
	for i, e := range entries {
		check[i] = e.id
	}
	freed, err := s.removePack(ctx, n, rec.Company, check)
	res.Freed = freed
	return res, err
}

// removePack drops pack n's record (after checking that none of ids
// points into it), marks it doomed, removes the file and forgets it.
func (s *Store) removePack(ctx context.Context, n uint32, company string, ids [][32]byte) (int64, error) {
	var committed int64
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if cb := tx.Bucket(bucketChunks).Bucket([]byte(company)); cb != nil {
			for _, id := range ids {
				if loc, err := parseLocation(cb.Get(id[:])); err == nil && loc.Pack == n {
					return fmt.Errorf("chunk %x still lives in pack %08x: left for a later collection", id[:8], n)
				}
			}
		}
		pb := tx.Bucket(bucketPacks)
		if r, err := parsePackRecord(pb.Get(packKey(n))); err == nil {
			committed = int64(r.Committed)
		}
		if err := pb.Delete(packKey(n)); err != nil {
			return err
		}
		db, err := tx.CreateBucketIfNotExists(bucketDoomed)
		if err != nil {
			return err
		}
		return db.Put(packKey(n), nil)
	})
	if err != nil {
		return 0, fmt.Errorf("remove pack %08x: %w", n, err)
	}
	s.addUsage(company, -committed)
	s.evict(n)
	if testHookDoomed != nil {
		if err := testHookDoomed(n); err != nil {
			return 0, err
		}
	}
	if err := s.finishRemoval(ctx, n); err != nil {
		return 0, err
	}
	return committed, nil
}

// finishRemoval removes a doomed pack's file and then its doomed record.
func (s *Store) finishRemoval(ctx context.Context, n uint32) error {
	if err := s.packs.Remove(ctx, n); err != nil && !errors.Is(err, ErrPackNotFound) {
		return fmt.Errorf("remove pack %08x: %w", n, err)
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(bucketDoomed); b != nil {
			return b.Delete(packKey(n))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("forget removed pack %08x: %w", n, err)
	}
	return nil
}

// FinishRemovals completes pack removals a crash interrupted: a doomed
// pack's file is removed. It returns how many it finished.
func (s *Store) FinishRemovals(ctx context.Context) (int, error) {
	ns, err := s.doomed()
	if err != nil {
		return 0, err
	}
	for _, n := range ns {
		if err := s.finishRemoval(ctx, n); err != nil {
			return 0, err
		}
		s.log.Info("finished removing a pack a crash interrupted", zap.String("pack", s.PackPath(n)))
	}
	return len(ns), nil
}

func (s *Store) doomed() ([]uint32, error) {
	var ns []uint32
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketDoomed)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, _ []byte) error {
			if len(k) == 4 {
				ns = append(ns, binary.BigEndian.Uint32(k))
			}
			return nil
		})
	})
	return ns, err
}

// evict drops pack n from the reader cache (an open reader still reads
// it until released).
func (s *Store) evict(n uint32) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if pf := s.readers[n]; pf != nil {
		delete(s.readers, n)
		pf.evicted = true
		if pf.refs == 0 {
			pf.Close()
		}
	}
}

// Usage is the bytes of a company's packs (committed lengths, after
// deduplication and compression): a fact of the index, counted at Open
// and kept as packs grow and go.
func (s *Store) Usage(company string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.usage[company]
}

// CountUsage recounts every company's usage from the index's pack records
// and returns it; verify compares it with what Usage says.
func (s *Store) CountUsage() (map[string]int64, error) {
	u := map[string]int64{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketPacks).ForEach(func(k, v []byte) error {
			if r, err := parsePackRecord(v); err == nil {
				u[r.Company] += int64(r.Committed)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("count usage: %w", err)
	}
	return u, nil
}

func (s *Store) recount() error {
	u, err := s.CountUsage()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.usage = u
	s.mu.Unlock()
	return nil
}

func (s *Store) addUsage(company string, d int64) {
	s.mu.Lock()
	if s.usage == nil {
		s.usage = map[string]int64{}
	}
	s.usage[company] += d
	s.mu.Unlock()
}
