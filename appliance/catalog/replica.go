package catalog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/bbolt"
)

// What a replicated log (appliance/pair) needs of the catalog: applying a
// log entry once whatever happens to the process (the applied index is
// written in the command's own transaction), a consistent copy of the whole
// catalog for a log snapshot, and replacing the catalog by such a copy.

// ErrNotLeader is what a Submit of a replicated catalog returns on a member
// that is not the leader; the error names the leader when one is known.
var ErrNotLeader = errors.New("not the leader of the pair")

var (
	bLog       = []byte("log")     // "applied": u64 BE index of the last log entry applied
	keyApplied = []byte("applied") // in bLog
)

// RegisterKind adds a command kind that another package applies inside the
// catalog's transaction (the pair's membership records): fn must be
// deterministic like every applier. Call it from an init function; it
// panics on a kind registered twice.
func RegisterKind(kind Kind, fn func(tx *bbolt.Tx, payload []byte) (any, error)) {
	if appliers[kind] != nil {
		panic(fmt.Sprintf("catalog: command kind %q registered twice", kind))
	}
	appliers[kind] = func(_ *Catalog, tx *bbolt.Tx, payload []byte) (any, error) { return fn(tx, payload) }
}

// AppliedIndex is the index of the last log entry ApplyLog applied (0 when
// none).
func (c *Catalog) AppliedIndex() (uint64, error) {
	var n uint64
	err := c.db.View(func(tx *bbolt.Tx) error {
		n = appliedIndex(tx)
		return nil
	})
	return n, err
}

func appliedIndex(tx *bbolt.Tx) uint64 {
	b := tx.Bucket(bLog)
	if b == nil {
		return 0
	}
	if v := b.Get(keyApplied); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// ApplyLog applies the command of log entry index, once: an entry at or
// below the applied index is skipped (a restart replays the log from its
// last snapshot), and the index is recorded in the command's transaction.
// A command that fails is rolled back whole and the index is recorded
// alone (it fails the same way on every member; a crash between the two
// replays it, and it fails again). skipped reports an entry applied before.
func (c *Catalog) ApplyLog(index uint64, cmd Command) (res any, skipped bool, err error) {
	fn := appliers[cmd.Kind]
	if fn == nil {
		err = fmt.Errorf("%w: unknown command kind %q", ErrInvalid, cmd.Kind)
	} else if len(cmd.Payload) > MaxCommand {
		err = fmt.Errorf("%w: %s command of %d bytes is over the %d-byte limit", ErrInvalid, cmd.Kind, len(cmd.Payload), MaxCommand)
	}
	var failed error
	if err == nil {
		uerr := c.db.Update(func(tx *bbolt.Tx) error {
			if index <= appliedIndex(tx) {
				skipped = true
				return nil
			}
			// Recorded first, in the same transaction: an applier reads
			// its entry's index with EntryIndex.
			if err := setApplied(tx, index); err != nil {
				return err
			}
			res, failed = fn(c, tx, cmd.Payload)
			return failed
		})
		switch {
		case skipped:
			return nil, true, nil
		case uerr == nil:
			return res, false, nil
		case failed == nil:
			return nil, false, fmt.Errorf("apply log entry %d: %w", index, uerr)
		}
		err = failed
	}
	uerr := c.db.Update(func(tx *bbolt.Tx) error {
		if index <= appliedIndex(tx) {
			skipped = true
			return nil
		}
		return setApplied(tx, index)
	})
	if uerr != nil {
		return nil, false, fmt.Errorf("apply log entry %d: %w", index, uerr)
	}
	return nil, skipped, err
}

// EntryIndex is, inside a command's applier run by ApplyLog, the log index
// of the entry being applied (0 outside a log).
func EntryIndex(tx *bbolt.Tx) uint64 { return appliedIndex(tx) }

func setApplied(tx *bbolt.Tx, index uint64) error {
	b, err := tx.CreateBucketIfNotExists(bLog)
	if err != nil {
		return err
	}
	return b.Put(keyApplied, binary.BigEndian.AppendUint64(nil, index))
}

// Snapshot is a consistent copy of the catalog being read: the state after
// the last applied command when it was taken.
type Snapshot struct {
	tx *bbolt.Tx
}

// BeginSnapshot starts a consistent read of the whole catalog; Release it.
// While it is open the catalog's file cannot grow its mapping, so a writer
// that needs to waits: copy it promptly.
func (c *Catalog) BeginSnapshot() (*Snapshot, error) {
	tx, err := c.db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("snapshot catalog: %w", err)
	}
	return &Snapshot{tx: tx}, nil
}

// WriteTo writes the catalog database file as it was at BeginSnapshot.
func (s *Snapshot) WriteTo(w io.Writer) (int64, error) { return s.tx.WriteTo(w) }

// Size is the size of the copy WriteTo writes.
func (s *Snapshot) Size() int64 { return s.tx.Size() }

// Release ends the read.
func (s *Snapshot) Release() { s.tx.Rollback() }

// MaxSnapshot bounds a catalog snapshot Restore accepts.
const MaxSnapshot = 16 << 30

// Restore replaces the whole catalog by a copy WriteTo made (a log
// snapshot sent by the leader), in one transaction, and rewrites the files
// beside it that the copy implies (sealed company secrets, revocations).
func (c *Catalog) Restore(r io.Reader) error {
	tmp, err := os.CreateTemp(c.dir, "catalog-restore-*.db")
	if err != nil {
		return fmt.Errorf("restore catalog: %w", err)
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, io.LimitReader(r, MaxSnapshot+1))
	if err == nil && n > MaxSnapshot {
		err = fmt.Errorf("%w: catalog snapshot over %d bytes", ErrCorrupt, int64(MaxSnapshot))
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("restore catalog: %w", err)
	}
	src, err := bbolt.Open(tmp.Name(), 0o600, &bbolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		return fmt.Errorf("restore catalog: %w: %v", ErrCorrupt, err)
	}
	defer src.Close()
	err = src.View(func(stx *bbolt.Tx) error {
		return c.db.Update(func(tx *bbolt.Tx) error {
			var names [][]byte
			tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
				names = append(names, append([]byte(nil), name...))
				return nil
			})
			for _, name := range names {
				if err := tx.DeleteBucket(name); err != nil {
					return err
				}
			}
			return stx.ForEach(func(name []byte, sb *bbolt.Bucket) error {
				b, err := tx.CreateBucket(name)
				if err != nil {
					return err
				}
				return copyBucket(b, sb)
			})
		})
	})
	if err != nil {
		return fmt.Errorf("restore catalog: %w", err)
	}
	// Buckets a newer build adds may be missing from an older copy.
	if err := c.db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bCompanies, bTokens, bComputers, bConfigs, bVersions, bJournal, bReports, bRetention, bJobs, bJobSched} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("restore catalog: %w", err)
	}
	return c.restoreFiles()
}

func copyBucket(dst, src *bbolt.Bucket) error {
	dst.FillPercent = 0.9
	return src.ForEach(func(k, v []byte) error {
		if v == nil {
			nb, err := dst.CreateBucket(k)
			if err != nil {
				return err
			}
			return copyBucket(nb, src.Bucket(k))
		}
		return dst.Put(k, v)
	})
}

// restoreFiles writes the sealed secret of every company that lacks one
// and a revocation line for every revoked computer DATA/revoked lacks.
func (c *Catalog) restoreFiles() error {
	if err := c.keepSealed(); err != nil {
		return err
	}
	rs, err := ReadRevocations(c.dir, func(int, error) {})
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, r := range rs {
		have[r.Computer] = true
	}
	cps, err := c.Computers("")
	if err != nil {
		return err
	}
	for _, cp := range cps {
		if cp.Revoked != nil && !have[cp.ID] {
			if err := c.appendRevocation(cp, *cp.Revoked); err != nil {
				return err
			}
		}
	}
	return nil
}

// Dir is the catalog's directory (the vault's data directory).
func (c *Catalog) Dir() string { return filepath.Clean(c.dir) }

// View reads the catalog in one read transaction: for the records of kinds
// another package registered (RegisterKind), which only it decodes.
func (c *Catalog) View(fn func(tx *bbolt.Tx) error) error { return c.db.View(fn) }
