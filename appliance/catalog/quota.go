package catalog

import (
	"fmt"

	"go.etcd.io/bbolt"
)

// Quotas per company (the vault enforces them: appliance/vault/quota.go).

var bQuotas = []byte("quotas") // company: Quota

// KindSetQuota sets or removes a company's quota.
const KindSetQuota Kind = "set_quota"

// Quota limits the bytes of a company's packs (after deduplication and
// compression). Hard 0: no limit; Warn 0: no warning.
type Quota struct {
	Company string `json:"company"`
	Hard    int64  `json:"hard"`
	Warn    int64  `json:"warn,omitempty"`
}

// SetQuotaCmd sets a company's quota; Hard and Warn both 0 remove it.
type SetQuotaCmd struct {
	Quota Quota `json:"quota"`
}

func init() { appliers[KindSetQuota] = typed(applySetQuota) }

func checkQuota(q Quota) error {
	switch {
	case q.Hard < 0 || q.Warn < 0:
		return fmt.Errorf("%w: quota of %s: negative bytes", ErrInvalid, q.Company)
	case q.Hard > 0 && q.Warn > q.Hard:
		return fmt.Errorf("%w: quota of %s: the warning threshold %d is over the hard limit %d", ErrInvalid, q.Company, q.Warn, q.Hard)
	}
	return nil
}

func applySetQuota(c *Catalog, tx *bbolt.Tx, p SetQuotaCmd) (any, error) {
	q := p.Quota
	if err := ValidCompanyName(q.Company); err != nil {
		return nil, err
	}
	if err := checkQuota(q); err != nil {
		return nil, err
	}
	if tx.Bucket(bCompanies).Get([]byte(q.Company)) == nil {
		return nil, fmt.Errorf("company %q: %w", q.Company, ErrNotFound)
	}
	b, err := tx.CreateBucketIfNotExists(bQuotas)
	if err != nil {
		return nil, err
	}
	if q.Hard == 0 && q.Warn == 0 {
		return nil, b.Delete([]byte(q.Company))
	}
	return nil, put(b, bQuotas, []byte(q.Company), q)
}

// SetQuota sets (or with zeros removes) a company's quota.
func (c *Catalog) SetQuota(q Quota) error {
	_, err := c.apply(KindSetQuota, SetQuotaCmd{Quota: q})
	return err
}

// Quotas lists the quotas set; a malformed record is skipped and logged.
func (c *Catalog) Quotas() (map[string]Quota, error) {
	out := map[string]Quota{}
	err := c.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bQuotas)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var q Quota
			err := decodeJSON(bQuotas, k, v, &q)
			if err == nil && q.Company != string(k) {
				err = corrupt(bQuotas, k, "record is of company %q", q.Company)
			}
			if err == nil {
				if e := checkQuota(q); e != nil {
					err = corrupt(bQuotas, k, "%v", e)
				}
			}
			if err != nil {
				return c.skip(err)
			}
			out[q.Company] = q
			return nil
		})
	})
	return out, err
}
