package pair

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"go.etcd.io/bbolt"
)

// Raft's log and stable store is a hashicorp/raft-wal write-ahead log in
// DATA/pair/raft-wal: segment files that append a batch of entries with
// one fsync, and a small bbolt file (wal-meta.db) for raft's term and vote
// and the list of segments. Before, it was our own bbolt file
// DATA/pair/raft.db (a synced transaction, two fdatasyncs, per write);
// OpenLogStore migrates that file once (migrateLegacy).
const (
	LogDir        = "raft-wal"
	LegacyLogFile = "raft.db"
)

// Errors of the log store.
var (
	// ErrBadLog is a stored log entry that does not decode; it names the
	// index or the broken rule.
	ErrBadLog = errors.New("malformed raft log entry")
)

// MaxLogData bounds a log entry's data and extensions: a catalog command
// is at most catalog.MaxCommand plus its envelope.
const MaxLogData = 8 << 20

// HasLogStore reports whether dir (DATA/pair) holds raft's log, in either
// form: this member has formed or joined a pair before.
func HasLogStore(dir string) bool {
	for _, f := range []string{LogDir, LegacyLogFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return true
		}
	}
	return false
}

// LogStore is the WAL with the meta store it owns: raft-wal's Close
// leaves its meta store's bbolt file open (v0.4.0), so Close closes it.
type LogStore struct {
	*wal.WAL
	meta *metadb.BoltMetaDB
}

// Close closes the segments and the meta store.
func (s *LogStore) Close() error {
	err := s.WAL.Close()
	if merr := s.meta.Close(); err == nil {
		err = merr
	}
	return err
}

// OpenLogStore opens or creates raft's log and stable store in dir
// (DATA/pair), first moving a legacy raft.db into it.
func OpenLogStore(dir string, hl hclog.Logger) (*LogStore, error) {
	if err := migrateLegacy(dir, hl); err != nil {
		return nil, err
	}
	return openWAL(filepath.Join(dir, LogDir), hl)
}

func openWAL(path string, hl hclog.Logger) (*LogStore, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("open raft log %s: %w", path, err)
	}
	// raft-wal opens its meta file without a timeout: a second process
	// on the same directory would wait for ever. Fail it first.
	if meta := filepath.Join(path, metadb.FileName); fileExists(meta) {
		db, err := bbolt.Open(meta, 0o600, &bbolt.Options{Timeout: time.Second})
		if err != nil {
			return nil, fmt.Errorf("open raft log %s (is another vaultd running on it?): %w", path, err)
		}
		db.Close()
	}
	meta := &metadb.BoltMetaDB{}
	w, err := wal.Open(path, wal.WithMetaStore(meta), wal.WithLogger(hl.Named("wal")))
	if err != nil {
		meta.Close()
		return nil, fmt.Errorf("open raft log %s: %w", path, err)
	}
	return &LogStore{WAL: w, meta: meta}, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// StoreLog stores one entry.
func (s *LogStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs appends entries, one write and one fsync for them all.
func (s *LogStore) StoreLogs(logs []*raft.Log) error {
	for _, l := range logs {
		if len(l.Data) > MaxLogData || len(l.Extensions) > MaxLogData {
			return fmt.Errorf("store raft log: entry %d of %d bytes is over the %d-byte limit", l.Index, len(l.Data)+len(l.Extensions), MaxLogData)
		}
	}
	if err := s.WAL.StoreLogs(logs); err != nil {
		return fmt.Errorf("store raft log: %w", err)
	}
	return nil
}

// GetLog reads entry index into l. raft-wal bounds a record by its frame
// (at most 64 MiB, segment.MaxEntrySize) but its decoder slices by a
// malformed varint's length unchecked: a damaged record is ErrBadLog here,
// not a panic of the goroutine that reads the log. An entry before the
// first index is gone, as raft expects after it compacted the log:
// raft-wal's tail segment still reads the entries a head truncation
// dropped until the segment is sealed, and raft would then send those to
// a member that needs the snapshot.
func (s *LogStore) GetLog(index uint64, l *raft.Log) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: entry %d: %v", ErrBadLog, index, r)
		}
	}()
	if first, err := s.WAL.FirstIndex(); err != nil {
		return err
	} else if index < first {
		return raft.ErrLogNotFound
	}
	return s.WAL.GetLog(index, l)
}
