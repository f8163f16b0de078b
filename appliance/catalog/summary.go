package catalog

import (
	"bytes"
	"time"

	"go.etcd.io/bbolt"

	"vaultnode/internal/wire"
)

// VersionSummary answers what a configuration's status needs of its
// versions (their manifests without listings) without decoding them all: how many there are, the newest, and
// the newest complete one (nil when none). It counts keys and decodes
// only from the newest back to the first complete one, so a configuration
// with months of versions costs about as little as one with a few.
func (c *Catalog) VersionSummary(computer, config string) (n int, newest, complete *wire.Manifest, err error) {
	err = c.db.View(func(tx *bbolt.Tx) error {
		n, newest, complete = c.versionSummary(tx, computer, config)
		return nil
	})
	return n, newest, complete, err
}

func (c *Catalog) versionSummary(tx *bbolt.Tx, computer, config string) (n int, newest, complete *wire.Manifest) {
	prefix := []byte(computer + "/" + config + "/")
	cur := tx.Bucket(bVersions).Cursor()
	var last []byte
	for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
		n++
		last = k
	}
	if last == nil {
		return
	}
	for k, v := cur.Seek(last); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Prev() {
		// Only what status reads: no listing, no manifest id.
		var slim struct {
			Company, Computer, Config string
			Seq                       uint64
			Started, Finished         time.Time
			Totals                    wire.Totals
		}
		if err := decodeJSON(bVersions, k, v, &slim); err != nil {
			c.skip(err)
			continue
		}
		if !bytes.Equal(k, verKey(slim.Computer, slim.Config, slim.Seq)) {
			c.skip(corrupt(bVersions, k, "record is version %s/%s@%d", slim.Computer, slim.Config, slim.Seq))
			continue
		}
		m := wire.Manifest{Magic: wire.ManifestMagic, Company: slim.Company, Computer: slim.Computer, Config: slim.Config,
			Seq: slim.Seq, Started: slim.Started, Finished: slim.Finished, Totals: slim.Totals}
		if newest == nil {
			newest = &m
		}
		if m.Complete() {
			complete = &m
			return
		}
	}
	return n, newest, complete
}
