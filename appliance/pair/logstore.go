package pair

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
)

// LogStore is raft's log and stable store in one bbolt file
// (DATA/pair/raft.db). It stands in for raft-boltdb: the vault already
// keeps its index and catalog in bbolt, and raft-boltdb/v2 pins an older
// raft and pulls in the unmaintained boltdb/bolt for a migration we never
// need. Every write is one synced bbolt transaction, so a log entry raft
// was told is stored survives a power cut.
type LogStore struct {
	db *bbolt.DB
}

var (
	bucketLogs   = []byte("logs")   // u64 BE index -> encoded raft.Log
	bucketStable = []byte("stable") // raft's term and vote
)

// Errors of the log store.
var (
	// ErrBadLog is a stored log entry that does not decode; it names the
	// index and the broken rule.
	ErrBadLog = errors.New("malformed raft log entry")
	// ErrKeyNotFound is raft's "not found" for the stable store (raft
	// compares the message).
	ErrKeyNotFound = errors.New("not found")
)

// MaxLogData bounds a log entry's data and extensions: a catalog command
// is at most catalog.MaxCommand plus its envelope.
const MaxLogData = 8 << 20

// OpenLogStore opens or creates the log store at path.
func OpenLogStore(path string) (*LogStore, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open raft log %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketLogs, bucketStable} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open raft log %s: %w", path, err)
	}
	return &LogStore{db: db}, nil
}

// Close closes the file.
func (s *LogStore) Close() error { return s.db.Close() }

func u64(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

// FirstIndex is the first stored index, 0 if none.
func (s *LogStore) FirstIndex() (uint64, error) {
	var n uint64
	err := s.db.View(func(tx *bbolt.Tx) error {
		if k, _ := tx.Bucket(bucketLogs).Cursor().First(); len(k) == 8 {
			n = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	return n, err
}

// LastIndex is the last stored index, 0 if none.
func (s *LogStore) LastIndex() (uint64, error) {
	var n uint64
	err := s.db.View(func(tx *bbolt.Tx) error {
		if k, _ := tx.Bucket(bucketLogs).Cursor().Last(); len(k) == 8 {
			n = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	return n, err
}

// GetLog reads entry index into log; raft.ErrLogNotFound if absent.
func (s *LogStore) GetLog(index uint64, log *raft.Log) error {
	return s.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketLogs).Get(u64(index))
		if v == nil {
			return raft.ErrLogNotFound
		}
		return decodeLog(v, log)
	})
}

// StoreLog stores one entry.
func (s *LogStore) StoreLog(log *raft.Log) error { return s.StoreLogs([]*raft.Log{log}) }

// StoreLogs stores entries in one synced transaction.
func (s *LogStore) StoreLogs(logs []*raft.Log) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketLogs)
		for _, l := range logs {
			v, err := encodeLog(l)
			if err != nil {
				return err
			}
			if err := b.Put(u64(l.Index), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store raft log: %w", err)
	}
	return nil
}

// DeleteRange deletes entries min to max, both included.
func (s *LogStore) DeleteRange(min, max uint64) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketLogs).Cursor()
		for k, _ := c.Seek(u64(min)); k != nil && binary.BigEndian.Uint64(k) <= max; k, _ = c.Next() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete raft log %d-%d: %w", min, max, err)
	}
	return nil
}

// Set stores a stable value.
func (s *LogStore) Set(key, val []byte) error {
	return s.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketStable).Put(key, val) })
}

// Get reads a stable value; ErrKeyNotFound if absent.
func (s *LogStore) Get(key []byte) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketStable).Get(key)
		if v == nil {
			return ErrKeyNotFound
		}
		out = append([]byte(nil), v...)
		return nil
	})
	return out, err
}

// SetUint64 stores a stable number.
func (s *LogStore) SetUint64(key []byte, val uint64) error { return s.Set(key, u64(val)) }

// GetUint64 reads a stable number; 0 and ErrKeyNotFound if absent.
func (s *LogStore) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: stable value %q is %d bytes, want 8", ErrBadLog, key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// An entry is: index u64, term u64, type u8, appended-at Unix ns i64,
// data length u32, data, extensions length u32, extensions (big-endian).
const logHeader = 8 + 8 + 1 + 8

func encodeLog(l *raft.Log) ([]byte, error) {
	if len(l.Data) > MaxLogData || len(l.Extensions) > MaxLogData {
		return nil, fmt.Errorf("raft log entry %d of %d bytes is over the %d-byte limit", l.Index, len(l.Data)+len(l.Extensions), MaxLogData)
	}
	b := make([]byte, 0, logHeader+8+len(l.Data)+len(l.Extensions))
	b = binary.BigEndian.AppendUint64(b, l.Index)
	b = binary.BigEndian.AppendUint64(b, l.Term)
	b = append(b, byte(l.Type))
	var at int64
	if !l.AppendedAt.IsZero() {
		at = l.AppendedAt.UnixNano()
	}
	b = binary.BigEndian.AppendUint64(b, uint64(at))
	b = binary.BigEndian.AppendUint32(b, uint32(len(l.Data)))
	b = append(b, l.Data...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(l.Extensions)))
	return append(b, l.Extensions...), nil
}

func decodeLog(v []byte, l *raft.Log) error {
	if len(v) < logHeader+8 {
		return fmt.Errorf("%w: %d bytes, under the %d-byte header", ErrBadLog, len(v), logHeader+8)
	}
	l.Index = binary.BigEndian.Uint64(v)
	l.Term = binary.BigEndian.Uint64(v[8:])
	l.Type = raft.LogType(v[16])
	if at := int64(binary.BigEndian.Uint64(v[17:])); at != 0 {
		l.AppendedAt = time.Unix(0, at)
	} else {
		l.AppendedAt = time.Time{}
	}
	rest := v[logHeader:]
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
