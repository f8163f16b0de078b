package store

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	"go.etcd.io/bbolt"
)

// warmSpan is the most one read of Warm takes in: neighbouring entries of
// a pack closer than warmGap are read together up to this length.
const (
	warmSpan = 1 << 20
	warmGap  = 4 << 10
)

// Warm reads the entries of ids (of company) once, so that the page cache
// holds them when a caller reads them soon after, and keeps nothing: the
// ids are looked up in key order, the entries read in pack and offset
// order, neighbours together, at most limit bytes of entries in all. An id
// the index lacks, or a pack gone meanwhile, is skipped; nothing read here
// is checked (the later read checks it). It stops early, without error,
// when ctx is done. A commit reads its listing's chunks one after another
// scattered over the packs; a session reads the previous version's ahead
// with this while its agent walks (docs/performance.md, item 33).
func (s *Store) Warm(ctx context.Context, company string, ids [][32]byte, limit int64) error {
	sorted := slices.Clone(ids)
	slices.SortFunc(sorted, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
	sorted = slices.Compact(sorted)
	locs := make([]Location, 0, len(sorted))
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketChunks).Bucket([]byte(company))
		if b == nil {
			return nil
		}
		for _, id := range sorted {
			if v := b.Get(id[:]); v != nil {
				if loc, err := parseLocation(v); err == nil {
					locs = append(locs, loc)
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("look up entries to read ahead: %w", err)
	}
	slices.SortFunc(locs, ComparePackOrder)
	var buf []byte
	var total int64
	for i := 0; i < len(locs); {
		if ctx.Err() != nil {
			return nil
		}
		// One span: this entry and the next ones of its pack that start
		// within warmGap of its end, up to warmSpan.
		first := locs[i]
		start := int64(first.Offset)
		end := first.End()
		if total+end-start > limit {
			return nil
		}
		j := i + 1
		for ; j < len(locs); j++ {
			l := locs[j]
			lend := l.End()
			if l.Pack != first.Pack || int64(l.Offset) > end+warmGap || lend-start > warmSpan || total+lend-start > limit {
				break
			}
			end = max(end, lend)
		}
		i = j
		total += end - start
		if int64(cap(buf)) < end-start {
			buf = make([]byte, end-start)
		}
		// An error is left to the later read, which reports it (a pack
		// removed by a collection meanwhile is looked up again there).
		_ = s.ReadPackAt(first.Pack, buf[:end-start], start)
	}
	return nil
}
