package catalog

import (
	"bytes"
	"time"

	"go.etcd.io/bbolt"

	"vaultnode/internal/wire"
)

// Reader reads many records in one read transaction: what a status of
// thousands of configurations needs, without a transaction per record.
// It lives only inside the function given to Catalog.Read.
type Reader struct {
	c    *Catalog
	tx   *bbolt.Tx
	seen map[string]time.Time // contacts not yet written
}

// Read calls fn with a Reader over one read transaction. Keep fn short
// (no network writes): a long read transaction holds back a writer that
// must grow the file.
func (c *Catalog) Read(fn func(r *Reader) error) error {
	seen := c.pendingContacts()
	return c.db.View(func(tx *bbolt.Tx) error {
		return fn(&Reader{c: c, tx: tx, seen: seen})
	})
}

// Computer returns one computer, its last contact included.
func (r *Reader) Computer(id string) (Computer, error) {
	cp, err := getComputer(r.tx, id)
	if err != nil {
		return cp, err
	}
	mergeSeen(&cp, r.seen[cp.ID])
	return cp, nil
}

// Configs lists a computer's configurations.
func (r *Reader) Configs(computer string) []wire.Config {
	var out []wire.Config
	cur := r.tx.Bucket(bConfigs).Cursor()
	prefix := []byte(computer + "/")
	for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
		cfg, err := decodeConfig(k, v)
		if err != nil {
			r.c.skip(err)
			continue
		}
		out = append(out, cfg)
	}
	return out
}

// Report returns the latest report on a configuration (zero if none).
func (r *Reader) Report(computer, config string) (wire.Report, error) {
	v := r.tx.Bucket(bReports).Get(cfgKey(computer, config))
	if v == nil {
		return wire.Report{}, nil
	}
	return decodeReport(cfgKey(computer, config), v)
}

// VersionSummary is Catalog.VersionSummary in this transaction.
func (r *Reader) VersionSummary(computer, config string) (n int, newest, complete *wire.Manifest) {
	return r.c.versionSummary(r.tx, computer, config)
}

// LastJournal returns the newest journal entry recorded on top of version
// base (false when there is none), decoding only that one.
func (r *Reader) LastJournal(computer, config string, base uint64) (wire.Journal, bool) {
	return r.c.lastJournal(r.tx, computer, config, base)
}

func (c *Catalog) lastJournal(tx *bbolt.Tx, computer, config string, base uint64) (wire.Journal, bool) {
	prefix := journalKey(computer, config, base, 0)
	prefix = prefix[:len(prefix)-8]
	cur := tx.Bucket(bJournal).Cursor()
	k, v := lastBefore(cur, prefix)
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Prev() {
		_, _, j, err := decodeJournal(k, v)
		if err != nil {
			c.skip(err)
			continue
		}
		return j, true
	}
	return wire.Journal{}, false
}
