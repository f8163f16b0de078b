package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/bbolt"
)

// indexCommit is one appender waiting for its entries to reach the index.
type indexCommit struct {
	a       *Appender
	err     error
	partial bool          // err came after some of a's entries were indexed
	lead    bool          // woken to commit the queue, not with a result
	wake    chan struct{} // closed with a result or the lead
}

// commitIndex records an appender's entries and its pack's committed length
// in the index, together with those of every appender that asks meanwhile:
// one transaction and one fsync for all of them (group commit).
//
// The first appender to ask commits the queue; the others wait; when it is
// done, the next waiting one, if any, takes the lead for what queued up
// during that transaction. bbolt's Batch did the grouping before, but ran
// each appender's inserts one after the other: each appender's keys were in
// order, yet together they interleaved in the same leaves, and bbolt, which
// splits a leaf only when the transaction commits, shifted the growing tail
// of a leaf at every insert (22 % of the vault's CPU on an initial backup of
// small files, memmove in bbolt's node.put). Here all the entries of a
// transaction go in as one sorted run.
func (s *Store) commitIndex(a *Appender) error {
	c := &indexCommit{a: a, wake: make(chan struct{})}
	s.imu.Lock()
	s.iqueue = append(s.iqueue, c)
	lead := !s.irunning
	s.irunning = true
	s.imu.Unlock()
	if !lead {
		<-c.wake
		if !c.lead {
			return c.result()
		}
	}
	s.imu.Lock()
	batch := s.iqueue
	s.iqueue = nil
	s.imu.Unlock()

	s.commitBatch(batch)
	for _, o := range batch {
		if o != c && !o.lead {
			close(o.wake)
		}
	}

	s.imu.Lock()
	if len(s.iqueue) > 0 {
		next := s.iqueue[0]
		next.lead = true
		close(next.wake)
	} else {
		s.irunning = false
	}
	s.imu.Unlock()
	return c.result()
}

// errPartialIndex is an index commit that failed after some of its
// entries were indexed: the pack must keep its bytes past the committed
// length (see indexPut).
var errPartialIndex = errors.New("index commit failed part way")

func (c *indexCommit) result() error {
	if c.err != nil && c.partial {
		return fmt.Errorf("%w: %w", errPartialIndex, c.err)
	}
	return c.err
}

// commitBatch commits the batch (in transactions of at most maxTxEntries
// entries); if its first transaction fails, each appender alone, so that
// one appender's failure is its own.
func (s *Store) commitBatch(batch []*indexCommit) {
	done, err := s.indexPut(batch)
	if err == nil || len(batch) == 1 || done > 0 {
		for _, c := range batch {
			c.err, c.partial = err, done > 0
		}
		return
	}
	for _, c := range batch {
		done, err := s.indexPut([]*indexCommit{c})
		c.err, c.partial = err, done > 0
	}
}

// maxTxEntries bounds the index entries of one write transaction. bbolt
// holds every leaf a transaction touches as a decoded node until it
// commits (about 64 bytes per record in the leaf, plus a page-sized write
// buffer): with random chunk ids an upload of n entries touches up to n
// leaves, so one transaction of an upload of 30,000 small chunks into an
// index of millions held most of the index's leaves decoded, about 135 MB
// a million chunks (issue 16). 4,096 entries touch at most 4,096 leaves:
// about 30 MB at most, whatever the index's size.
var maxTxEntries = 4096

// testHookIndexTx runs after each of an index commit's transactions but
// the last (tests: an error stops the commit there).
var testHookIndexTx func(done int) error

// indexPut writes the batch's entries in key order, in transactions of at
// most maxTxEntries entries, then each appender's pack record in the last
// one; done is how many transactions committed before an error. Of two
// entries for one chunk the first (in the order the appenders queued and
// then added them) wins, as putChunk keeps the first.
//
// A crash between two of those transactions leaves some of the entries
// indexed and the pack records at their old committed lengths: the entries
// are synced in their packs already, and opening the store indexes the
// complete entries past a pack's committed length (recover), so nothing an
// agent was told is stored can be missing, and nothing is told before the
// last transaction commits.
func (s *Store) indexPut(batch []*indexCommit) (done int, err error) {
	type ref struct {
		c, i int // appender in batch, entry in appender
	}
	n := 0
	for _, c := range batch {
		n += len(c.a.ids)
	}
	refs := make([]ref, 0, n)
	for ci, c := range batch {
		for i := range c.a.ids {
			refs = append(refs, ref{ci, i})
		}
	}
	slices.SortStableFunc(refs, func(x, y ref) int {
		ax, ay := batch[x.c].a, batch[y.c].a
		if d := bytes.Compare([]byte(ax.company), []byte(ay.company)); d != 0 {
			return d
		}
		return bytes.Compare(ax.ids[x.i][:], ay.ids[y.i][:])
	})
	now := s.opts.Clock.Now().Unix()
	for {
		part := refs[:min(maxTxEntries, len(refs))]
		refs = refs[len(part):]
		last := len(refs) == 0
		err := s.db.Update(func(tx *bbolt.Tx) error {
			var (
				cb      *bbolt.Bucket
				company string
			)
			for _, r := range part {
				a := batch[r.c].a
				if cb == nil || a.company != company {
					b, err := tx.Bucket(bucketChunks).CreateBucketIfNotExists([]byte(a.company))
					if err != nil {
						return err
					}
					cb, company = b, a.company
				}
				id := a.ids[r.i]
				if a.move {
					if v := cb.Get(id[:]); v != nil && bytes.Equal(v, a.from[r.i].marshal()) {
						if err := cb.Put(id[:], a.locs[r.i].marshal()); err != nil {
							return err
						}
					}
					continue
				}
				if err := putChunk(tx, cb, a.company, id, a.locs[r.i], now); err != nil {
					return err
				}
			}
			if !last {
				return nil
			}
			return putPackRecords(tx, batch)
		})
		if err != nil {
			return done, err
		}
		done++
		if last {
			return done, nil
		}
		if testHookIndexTx != nil {
			if err := testHookIndexTx(done); err != nil {
				return done, err
			}
		}
	}
}

// putPackRecords writes each appender's pack record: its new committed
// length, and the next pack number for a new pack.
func putPackRecords(tx *bbolt.Tx, batch []*indexCommit) error {
	for _, c := range batch {
		a := c.a
		w := a.w
		if w.fresh {
			// Packs are numbered in the order they were made: keep the
			// largest next number of the batch.
			next := binary.BigEndian.AppendUint32(nil, w.number+1)
			if cur := tx.Bucket(bucketMeta).Get(keyNextPack); cur == nil || bytes.Compare(cur, next) < 0 {
				if err := tx.Bucket(bucketMeta).Put(keyNextPack, next); err != nil {
					return err
				}
			}
		}
		if err := tx.Bucket(bucketPacks).Put(packKey(w.number), packRecord{Company: a.company, Committed: uint64(a.off)}.marshal()); err != nil {
			return err
		}
	}
	return nil
}
