package pair

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
)

// The legacy log store: DATA/pair/raft.db, a bbolt file with a bucket
// "logs" (u64 BE index -> entry) and a bucket "stable" (raft's term and
// vote; numbers u64 big-endian). Only read, by migrateLegacy.
var (
	bucketLogs   = []byte("logs")
	bucketStable = []byte("stable")
)

// raft's stable keys that hold numbers: the legacy store kept them
// big-endian, raft-wal keeps them little-endian.
var stableNumbers = map[string]bool{"CurrentTerm": true, "LastVoteTerm": true}

// migrateBatch is how many entries go into one append of the WAL.
const migrateBatch = 256

// migrateLegacy moves a legacy raft.db of dir into the WAL. The WAL is
// built whole in raft-wal.tmp (every append synced), the directory synced,
// then renamed to raft-wal, the commit point, and dir synced; only then is
// raft.db removed. A process killed at any instant leaves either raft.db
// alone (and maybe a raft-wal.tmp, which the next start removes and
// builds again) or a complete raft-wal (and maybe raft.db, which the next
// start removes): nothing raft was told is stored is lost.
func migrateLegacy(dir string, hl hclog.Logger) error {
	legacy := filepath.Join(dir, LegacyLogFile)
	final := filepath.Join(dir, LogDir)
	if _, err := os.Stat(legacy); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("migrate raft log: %w", err)
	}
	if _, err := os.Stat(final); err == nil {
		// Migrated before; killed before raft.db went.
		if err := os.Remove(legacy); err != nil {
			return fmt.Errorf("remove migrated raft log %s: %w", legacy, err)
		}
		return syncDir(dir)
	}
	tmp := final + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("migrate raft log: %w", err)
	}
	n, err := copyLegacy(legacy, tmp, hl)
	if err != nil {
		return fmt.Errorf("migrate raft log %s: %w", legacy, err)
	}
	if err := syncDir(tmp); err != nil {
		return fmt.Errorf("migrate raft log: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("migrate raft log: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("migrate raft log: %w", err)
	}
	if err := os.Remove(legacy); err != nil {
		return fmt.Errorf("remove migrated raft log %s: %w", legacy, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("migrate raft log: %w", err)
	}
	hl.Info("raft log moved from raft.db to raft-wal", "entries", n)
	return nil
}

// copyLegacy copies raft.db's entries and stable keys into a new WAL at
// path; it returns the entries copied.
func copyLegacy(legacy, path string, hl hclog.Logger) (int, error) {
	db, err := bbolt.Open(legacy, 0o600, &bbolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	w, err := openWAL(path, hl)
	if err != nil {
		return 0, err
	}
	n := 0
	err = db.View(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(bucketStable); b != nil {
			err := b.ForEach(func(k, v []byte) error {
				if stableNumbers[string(k)] {
					if len(v) != 8 {
						return fmt.Errorf("%w: stable value %q is %d bytes, want 8", ErrBadLog, k, len(v))
					}
					return w.SetUint64(k, binary.BigEndian.Uint64(v))
				}
				return w.Set(bytes.Clone(k), bytes.Clone(v))
			})
			if err != nil {
				return err
			}
		}
		b := tx.Bucket(bucketLogs)
		if b == nil {
			return nil
		}
		batch := make([]*raft.Log, 0, migrateBatch)
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			if err := w.StoreLogs(batch); err != nil {
				return err
			}
			n += len(batch)
			batch = batch[:0]
			return nil
		}
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			l := new(raft.Log)
			if err := decodeLegacyLog(v, l); err != nil {
				return err
			}
			if len(k) != 8 || binary.BigEndian.Uint64(k) != l.Index {
				return fmt.Errorf("%w: key %x holds entry %d", ErrBadLog, k, l.Index)
			}
			if batch = append(batch, l); len(batch) == migrateBatch {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		return flush()
	})
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// syncDir makes the entries of directory path durable.
func syncDir(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

// A legacy entry is: index u64, term u64, type u8, appended-at Unix ns
// i64, data length u32, data, extensions length u32, extensions
// (big-endian).
const legacyLogHeader = 8 + 8 + 1 + 8

func decodeLegacyLog(v []byte, l *raft.Log) error {
	if len(v) < legacyLogHeader+8 {
		return fmt.Errorf("%w: %d bytes, under the %d-byte header", ErrBadLog, len(v), legacyLogHeader+8)
	}
	l.Index = binary.BigEndian.Uint64(v)
	l.Term = binary.BigEndian.Uint64(v[8:])
	l.Type = raft.LogType(v[16])
	if at := int64(binary.BigEndian.Uint64(v[17:])); at != 0 {
		l.AppendedAt = time.Unix(0, at)
	} else {
		l.AppendedAt = time.Time{}
	}
	rest := v[legacyLogHeader:]
	n := binary.BigEndian.Uint32(rest)
	if n > MaxLogData || int(n) > len(rest)-8 {
		return fmt.Errorf("%w: entry %d: data of %d bytes in a %d-byte record", ErrBadLog, l.Index, n, len(v))
	}
	l.Data = append([]byte(nil), rest[4:4+n]...)
	rest = rest[4+n:]
	m := binary.BigEndian.Uint32(rest)
	if m > MaxLogData || int(m) != len(rest)-4 {
		return fmt.Errorf("%w: entry %d: extensions of %d bytes, %d left", ErrBadLog, l.Index, m, len(rest)-4)
	}
	l.Extensions = nil
	if m > 0 {
		l.Extensions = append([]byte(nil), rest[4:]...)
	}
	return nil
}
