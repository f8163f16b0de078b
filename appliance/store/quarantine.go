package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

func binaryTime(unix int64) []byte { return binary.LittleEndian.AppendUint64(nil, uint64(unix)) }

// Quarantine marks a company's chunk damaged. The index keeps its record,
// but from now on Has reports the chunk absent (so lack and commit ask an
// agent for it again) and Get answers ErrQuarantined; the first good copy
// stored replaces the record and the chunk counts as healed. It reports
// whether the chunk was newly quarantined; a chunk the index does not hold
// is not.
func (s *Store) Quarantine(company string, id [32]byte, reason string) (bool, error) {
	now := s.opts.Clock.Now().Unix()
	added := false
	err := s.db.Update(func(tx *bbolt.Tx) error {
		cb := tx.Bucket(bucketChunks).Bucket([]byte(company))
		if cb == nil {
			return nil
		}
		v := cb.Get(id[:])
		if v == nil {
			return nil
		}
		loc, _ := parseLocation(v) // a malformed record is quarantined all the same
		qb, err := tx.Bucket(bucketQuarantine).CreateBucketIfNotExists([]byte(company))
		if err != nil {
			return fmt.Errorf("index bucket quarantine/%s: %w", company, err)
		}
		if qb.Get(id[:]) != nil {
			return nil
		}
		added = true
		return qb.Put(id[:], Quarantine{Pack: loc.Pack, Offset: loc.Offset, Since: now, Reason: reason}.marshal())
	})
	if err != nil {
		return false, fmt.Errorf("quarantine chunk %x: %w", id[:8], err)
	}
	return added, nil
}

// AnyQuarantined reports whether a company has a quarantined chunk, without
// reading them all.
func (s *Store) AnyQuarantined(company string) (bool, error) {
	found := false
	err := s.db.View(func(tx *bbolt.Tx) error {
		if qb := tx.Bucket(bucketQuarantine).Bucket([]byte(company)); qb != nil {
			k, _ := qb.Cursor().First()
			found = k != nil
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("quarantine of %s: %w", company, err)
	}
	return found, nil
}

// Quarantined returns a company's quarantined chunks; malformed records
// are skipped (CheckIndex reports them).
func (s *Store) Quarantined(company string) (map[[32]byte]Quarantine, error) {
	out := map[[32]byte]Quarantine{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		qb := tx.Bucket(bucketQuarantine).Bucket([]byte(company))
		if qb == nil {
			return nil
		}
		return qb.ForEach(func(k, v []byte) error {
			id, err := parseChunkKey(k)
			if err != nil {
				return nil
			}
			q, err := parseQuarantine(v)
			if err != nil {
				q = Quarantine{Reason: "malformed quarantine record"}
			}
			out[id] = q
			return nil
		})
	})
	return out, err
}

// Healed is a quarantined chunk that a good copy replaced.
type Healed struct {
	Company string
	ID      [32]byte
	At      time.Time
}

// TakeHealed returns the chunks healed since it was last called and
// forgets them.
func (s *Store) TakeHealed() ([]Healed, error) {
	var out []Healed
	err := s.db.Update(func(tx *bbolt.Tx) error {
		hb := tx.Bucket(bucketHealed)
		var companies [][]byte
		err := hb.ForEach(func(k, v []byte) error {
			b := hb.Bucket(k)
			if v != nil || b == nil {
				return nil
			}
			companies = append(companies, append([]byte(nil), k...))
			return b.ForEach(func(k, v []byte) error {
				id, err := parseChunkKey(k)
				if err != nil {
					return nil
				}
				at, _ := parseHealed(v)
				out = append(out, Healed{Company: string(companies[len(companies)-1]), ID: id, At: time.Unix(at, 0).UTC()})
				return nil
			})
		})
		if err != nil {
			return err
		}
		for _, c := range companies {
			if err := hb.DeleteBucket(c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read healed chunks: %w", err)
	}
	return out, nil
}

// BadRecord is an index record that cannot be decoded.
type BadRecord struct {
	Bucket string // e.g. "chunks/acme"
	Key    string // hex
	Err    string
}

func (b BadRecord) String() string {
	return fmt.Sprintf("index %s key %s: %s", b.Bucket, b.Key, b.Err)
}

// CheckIndex decodes every record of the index and returns those that
// fail, with where they are (at most max of them).
func (s *Store) CheckIndex(max int) ([]BadRecord, error) {
	var out []BadRecord
	bad := func(bucket string, k []byte, err error) {
		if len(out) < max {
			out = append(out, BadRecord{Bucket: bucket, Key: hexKey(k), Err: err.Error()})
		}
	}
	err := s.db.View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyNextPack); v != nil {
			if _, err := parseNextPack(v); err != nil {
				bad("meta", keyNextPack, err)
			}
		}
		tx.Bucket(bucketPacks).ForEach(func(k, v []byte) error {
			_, err := parsePackKey(k)
			if err == nil {
				_, err = parsePackRecord(v)
			}
			if err != nil {
				bad("packs", k, err)
			}
			return nil
		})
		for _, top := range []struct {
			name  []byte
			value func([]byte) error
		}{
			{bucketChunks, func(v []byte) error { _, err := parseLocation(v); return err }},
			{bucketQuarantine, func(v []byte) error { _, err := parseQuarantine(v); return err }},
			{bucketHealed, func(v []byte) error { _, err := parseHealed(v); return err }},
		} {
			tb := tx.Bucket(top.name)
			tb.ForEach(func(co, v []byte) error {
				b := tb.Bucket(co)
				if b == nil {
					bad(string(top.name), co, fmt.Errorf("%w: a value where a company's bucket belongs", ErrBadRecord))
					return nil
				}
				name := string(top.name) + "/" + string(co)
				return b.ForEach(func(k, v []byte) error {
					_, err := parseChunkKey(k)
					if err == nil {
						err = top.value(v)
					}
					if err != nil {
						bad(name, k, err)
					}
					return nil
				})
			})
		}
		return nil
	})
	return out, err
}

// Relocate points a company's chunk at another entry holding it, good
// (verify found one), if its record still says from: a concurrent heal is
// never undone. A quarantine record goes (the caller reports the repair).
// It reports whether the record was changed.
func (s *Store) Relocate(company string, id [32]byte, from, to Location) (bool, error) {
	changed := false
	err := s.db.Update(func(tx *bbolt.Tx) error {
		cb := tx.Bucket(bucketChunks).Bucket([]byte(company))
		if cb == nil {
			return nil
		}
		v := cb.Get(id[:])
		if v == nil || !bytes.Equal(v, from.marshal()) {
			return nil
		}
		changed = true
		if err := cb.Put(id[:], to.marshal()); err != nil {
			return err
		}
		if qb := tx.Bucket(bucketQuarantine).Bucket([]byte(company)); qb != nil {
			return qb.Delete(id[:])
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("relocate chunk %x: %w", id[:8], err)
	}
	return changed, nil
}

// Indexed reports for each id whether the index has a record of it at all,
// quarantined, malformed or good: whether the index is as new as what
// refers to it, not whether the chunk reads.
func (s *Store) Indexed(company string, ids [][32]byte) ([]bool, error) {
	out := make([]bool, len(ids))
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketChunks).Bucket([]byte(company))
		if b == nil {
			return nil
		}
		for i := range ids {
			out[i] = b.Get(ids[i][:]) != nil
		}
		return nil
	})
	return out, err
}
