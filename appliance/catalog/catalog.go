// Package catalog holds what a vault knows besides chunks: companies,
// enrolment tokens, computers, backup configurations and committed versions.
// It is the source of truth for what is visible (docs/format.md, "Catalog").
package catalog

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"time"

	"go.etcd.io/bbolt"

	"vaultnode/internal/wire"
)

// Errors of the catalog.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrToken    = errors.New("enrolment token is unknown, already used or expired")
	ErrRevoked  = errors.New("computer is revoked")
	ErrInvalid  = errors.New("invalid")
)

var (
	bCompanies = []byte("companies")
	bTokens    = []byte("tokens")
	bComputers = []byte("computers")
	bConfigs   = []byte("configs")  // computer id / config name
	bVersions  = []byte("versions") // computer id / config name / seq
	bJournal   = []byte("journal")  // computer id / config name / base seq / n
	bReports   = []byte("reports")  // computer id / config name: last agent report
)

// Company is a customer of the vault.
type Company struct {
	Name    string    `json:"name"`
	Sealed  []byte    `json:"sealed"` // company secret sealed with the master key
	Created time.Time `json:"created"`
}

// Token is a one-time enrolment token (only its hash is kept).
type Token struct {
	Company string    `json:"company"`
	Expires time.Time `json:"expires"`
	Used    bool      `json:"used"`
	UsedBy  string    `json:"used_by,omitempty"`
}

// Computer is an enrolled protected computer.
type Computer struct {
	ID          string     `json:"id"`
	Company     string     `json:"company"`
	Name        string     `json:"name"`
	Fingerprint string     `json:"fingerprint"` // SHA-256 of its certificate, hex
	Enrolled    time.Time  `json:"enrolled"`
	Revoked     *time.Time `json:"revoked,omitempty"`
	// Settings are the computer's bandwidth profile and back-up-now requests.
	Settings wire.Settings `json:"settings"`
	// LastSeen is the last time the computer reported to the vault.
	LastSeen time.Time `json:"last_seen,omitzero"`
}

// Catalog is the catalog database.
type Catalog struct {
	db *bbolt.DB
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,15}$`)

// ValidCompanyName reports whether name can name a company.
func ValidCompanyName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w company name %q: use 1 to 16 of a-z 0-9 . _ - starting with a letter or digit", ErrInvalid, name)
	}
	return nil
}

var configRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidConfigName reports whether name can name a configuration.
func ValidConfigName(name string) error {
	if !configRE.MatchString(name) {
		return fmt.Errorf("%w configuration name %q: use 1 to 64 of A-Z a-z 0-9 . _ - starting with a letter or digit", ErrInvalid, name)
	}
	return nil
}

// Open opens or creates the catalog in dir.
func Open(dir string) (*Catalog, error) {
	db, err := bbolt.Open(filepath.Join(dir, "catalog.db"), 0o600, &bbolt.Options{Timeout: 0})
	if err != nil {
		return nil, fmt.Errorf("open catalog: %w", err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bCompanies, bTokens, bComputers, bConfigs, bVersions, bJournal, bReports} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open catalog: %w", err)
	}
	return &Catalog{db: db}, nil
}

// Close closes the database.
func (c *Catalog) Close() error { return c.db.Close() }

func put(b *bbolt.Bucket, k []byte, v any) error {
	j, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, j)
}

func get(b *bbolt.Bucket, k []byte, v any) error {
	j := b.Get(k)
	if j == nil {
		return ErrNotFound
	}
	return json.Unmarshal(j, v)
}

// CreateCompany adds a company.
func (c *Catalog) CreateCompany(co Company) error {
	if err := ValidCompanyName(co.Name); err != nil {
		return err
	}
	return c.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bCompanies)
		if b.Get([]byte(co.Name)) != nil {
			return fmt.Errorf("company %q: %w", co.Name, ErrExists)
		}
		return put(b, []byte(co.Name), co)
	})
}

// Company returns a company.
func (c *Catalog) Company(name string) (Company, error) {
	var co Company
	err := c.db.View(func(tx *bbolt.Tx) error { return get(tx.Bucket(bCompanies), []byte(name), &co) })
	if err != nil {
		return co, fmt.Errorf("company %q: %w", name, err)
	}
	return co, nil
}

// Companies lists every company.
func (c *Catalog) Companies() ([]Company, error) {
	var out []Company
	err := c.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bCompanies).ForEach(func(k, v []byte) error {
			var co Company
			if err := json.Unmarshal(v, &co); err != nil {
				return err
			}
			out = append(out, co)
			return nil
		})
	})
	return out, err
}

func tokenKey(secret []byte) []byte { h := sha256.Sum256(secret); return h[:] }

// AddToken records a token's secret hash for a company.
func (c *Catalog) AddToken(secret []byte, t Token) error {
	return c.db.Update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bCompanies).Get([]byte(t.Company)) == nil {
			return fmt.Errorf("company %q: %w", t.Company, ErrNotFound)
		}
		return put(tx.Bucket(bTokens), tokenKey(secret), t)
	})
}

// Enroll consumes a token and records the computer in one transaction.
func (c *Catalog) Enroll(secret []byte, now time.Time, comp func(company string) (Computer, error)) (Computer, error) {
	var out Computer
	err := c.db.Update(func(tx *bbolt.Tx) error {
		var t Token
		if err := get(tx.Bucket(bTokens), tokenKey(secret), &t); err != nil {
			return ErrToken
		}
		if t.Used || now.After(t.Expires) {
			return ErrToken
		}
		cp, err := comp(t.Company)
		if err != nil {
			return err
		}
		t.Used, t.UsedBy = true, cp.ID
		if err := put(tx.Bucket(bTokens), tokenKey(secret), t); err != nil {
			return err
		}
		out = cp
		return put(tx.Bucket(bComputers), []byte(cp.ID), cp)
	})
	return out, err
}

// NewComputerID returns a fresh random computer id.
func NewComputerID() string {
	var b [8]byte
	rand.Read(b[:])
	return "pc-" + hex.EncodeToString(b[:])
}

// Computer returns a computer by id.
func (c *Catalog) Computer(id string) (Computer, error) {
	var cp Computer
	err := c.db.View(func(tx *bbolt.Tx) error { return get(tx.Bucket(bComputers), []byte(id), &cp) })
	if err != nil {
		return cp, fmt.Errorf("computer %q: %w", id, err)
	}
	return cp, nil
}

// Computers lists computers, of one company or all when company is empty.
func (c *Catalog) Computers(company string) ([]Computer, error) {
	var out []Computer
	err := c.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bComputers).ForEach(func(k, v []byte) error {
			var cp Computer
			if err := json.Unmarshal(v, &cp); err != nil {
				return err
			}
			if company == "" || cp.Company == company {
				out = append(out, cp)
			}
			return nil
		})
	})
	return out, err
}

// FindComputer resolves an id or a unique name.
func (c *Catalog) FindComputer(idOrName string) (Computer, error) {
	if cp, err := c.Computer(idOrName); err == nil {
		return cp, nil
	}
	all, err := c.Computers("")
	if err != nil {
		return Computer{}, err
	}
	var found []Computer
	for _, cp := range all {
		if cp.Name == idOrName {
			found = append(found, cp)
		}
	}
	switch len(found) {
	case 0:
		return Computer{}, fmt.Errorf("computer %q: %w", idOrName, ErrNotFound)
	case 1:
		return found[0], nil
	}
	return Computer{}, fmt.Errorf("%w: %d computers are named %q: use the id", ErrInvalid, len(found), idOrName)
}

// Revoke marks a computer revoked.
func (c *Catalog) Revoke(id string, now time.Time) error {
	return c.db.Update(func(tx *bbolt.Tx) error {
		var cp Computer
		if err := get(tx.Bucket(bComputers), []byte(id), &cp); err != nil {
			return fmt.Errorf("computer %q: %w", id, err)
		}
		cp.Revoked = &now
		return put(tx.Bucket(bComputers), []byte(id), cp)
	})
}

func cfgKey(computer, name string) []byte { return []byte(computer + "/" + name) }

// UpdateComputer changes a computer record in one transaction.
func (c *Catalog) UpdateComputer(id string, fn func(cp *Computer) error) (Computer, error) {
	var cp Computer
	err := c.db.Update(func(tx *bbolt.Tx) error {
		if err := get(tx.Bucket(bComputers), []byte(id), &cp); err != nil {
			return fmt.Errorf("computer %q: %w", id, err)
		}
		if err := fn(&cp); err != nil {
			return err
		}
		return put(tx.Bucket(bComputers), []byte(id), cp)
	})
	return cp, err
}

// PutConfig creates or replaces a configuration, bumping its revision.
// now stamps a new configuration's creation time.
func (c *Catalog) PutConfig(computer string, cfg wire.Config, now time.Time) (wire.Config, error) {
	if err := ValidConfigName(cfg.Name); err != nil {
		return cfg, err
	}
	err := c.db.Update(func(tx *bbolt.Tx) error {
		var old wire.Config
		if err := get(tx.Bucket(bConfigs), cfgKey(computer, cfg.Name), &old); err == nil {
			cfg.Revision = old.Revision + 1
			cfg.Created = old.Created
		} else {
			cfg.Revision = 1
			cfg.Created = now
		}
		return put(tx.Bucket(bConfigs), cfgKey(computer, cfg.Name), cfg)
	})
	return cfg, err
}

// DeleteConfig removes a configuration; its versions stay.
func (c *Catalog) DeleteConfig(computer, name string) error {
	return c.db.Update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bConfigs).Get(cfgKey(computer, name)) == nil {
			return fmt.Errorf("configuration %q: %w", name, ErrNotFound)
		}
		return tx.Bucket(bConfigs).Delete(cfgKey(computer, name))
	})
}

// Config returns one configuration.
func (c *Catalog) Config(computer, name string) (wire.Config, error) {
	var cfg wire.Config
	err := c.db.View(func(tx *bbolt.Tx) error { return get(tx.Bucket(bConfigs), cfgKey(computer, name), &cfg) })
	if err != nil {
		return cfg, fmt.Errorf("configuration %q: %w", name, err)
	}
	return cfg, nil
}

// Configs lists a computer's configurations.
func (c *Catalog) Configs(computer string) ([]wire.Config, error) {
	var out []wire.Config
	err := c.db.View(func(tx *bbolt.Tx) error {
		cur := tx.Bucket(bConfigs).Cursor()
		prefix := []byte(computer + "/")
		for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
			var cfg wire.Config
			if err := json.Unmarshal(v, &cfg); err != nil {
				return err
			}
			out = append(out, cfg)
		}
		return nil
	})
	return out, err
}

func verKey(computer, config string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(computer+"/"+config+"/"), seq)
}

// AddVersion commits a version; its Seq must be the next one.
func (c *Catalog) AddVersion(m wire.Manifest) error {
	return c.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bVersions)
		if b.Get(verKey(m.Computer, m.Config, m.Seq)) != nil {
			return fmt.Errorf("version %s@%d: %w", m.Config, m.Seq, ErrExists)
		}
		return put(b, verKey(m.Computer, m.Config, m.Seq), m)
	})
}

// Versions lists the versions of a computer's configuration (all of its
// configurations when config is empty), oldest first.
func (c *Catalog) Versions(computer, config string) ([]wire.Manifest, error) {
	var out []wire.Manifest
	err := c.db.View(func(tx *bbolt.Tx) error {
		prefix := []byte(computer + "/")
		if config != "" {
			prefix = []byte(computer + "/" + config + "/")
		}
		cur := tx.Bucket(bVersions).Cursor()
		for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
			var m wire.Manifest
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			out = append(out, m)
		}
		return nil
	})
	return out, err
}

// AllVersions calls fn for every version of every computer.
func (c *Catalog) AllVersions(fn func(m wire.Manifest) error) error {
	return c.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bVersions).ForEach(func(k, v []byte) error {
			var m wire.Manifest
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			return fn(m)
		})
	})
}

// LastSeq returns the newest committed sequence of a configuration, 0 if none.
func (c *Catalog) LastSeq(computer, config string) (uint64, error) {
	var seq uint64
	err := c.db.View(func(tx *bbolt.Tx) error {
		prefix := []byte(computer + "/" + config + "/")
		cur := tx.Bucket(bVersions).Cursor()
		k, _ := cur.Seek(append(bytes.Clone(prefix), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff))
		if k == nil {
			k, _ = cur.Last()
		} else {
			k, _ = cur.Prev()
		}
		if k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8 {
			seq = binary.BigEndian.Uint64(k[len(prefix):])
		}
		return nil
	})
	return seq, err
}

func journalKey(computer, config string, base, n uint64) []byte {
	k := binary.BigEndian.AppendUint64([]byte(computer+"/"+config+"/"), base)
	return binary.BigEndian.AppendUint64(k, n)
}

// AddJournal records a continuous-mode journal entry; j.N must be the next
// number after j.Base's last entry (it is set here).
func (c *Catalog) AddJournal(computer, config string, j wire.Journal) (wire.Journal, error) {
	err := c.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bJournal)
		prefix := binary.BigEndian.AppendUint64([]byte(computer+"/"+config+"/"), j.Base)
		cur := b.Cursor()
		j.N = 1
		for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
			j.N = binary.BigEndian.Uint64(k[len(prefix):]) + 1
		}
		return put(b, journalKey(computer, config, j.Base, j.N), j)
	})
	return j, err
}

// Journal lists the journal entries of a configuration recorded on top of
// version base, in order.
func (c *Catalog) Journal(computer, config string, base uint64) ([]wire.Journal, error) {
	var out []wire.Journal
	err := c.db.View(func(tx *bbolt.Tx) error {
		prefix := binary.BigEndian.AppendUint64([]byte(computer+"/"+config+"/"), base)
		cur := tx.Bucket(bJournal).Cursor()
		for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
			var j wire.Journal
			if err := json.Unmarshal(v, &j); err != nil {
				return err
			}
			out = append(out, j)
		}
		return nil
	})
	return out, err
}

// AllJournal calls fn for every journal entry of every configuration.
func (c *Catalog) AllJournal(fn func(computer, config string, j wire.Journal) error) error {
	return c.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bJournal).ForEach(func(k, v []byte) error {
			var j wire.Journal
			if err := json.Unmarshal(v, &j); err != nil {
				return err
			}
			parts := bytes.SplitN(k[:len(k)-16], []byte("/"), 3)
			if len(parts) < 2 {
				return fmt.Errorf("journal key %q malformed", k)
			}
			return fn(string(parts[0]), string(parts[1]), j)
		})
	})
}

// PutReport stores an agent's latest report on a configuration and the
// computer's last contact.
func (c *Catalog) PutReport(computer string, r wire.Report) error {
	return c.db.Update(func(tx *bbolt.Tx) error {
		if r.Config != "" {
			if err := put(tx.Bucket(bReports), cfgKey(computer, r.Config), r); err != nil {
				return err
			}
		}
		var cp Computer
		if err := get(tx.Bucket(bComputers), []byte(computer), &cp); err != nil {
			return fmt.Errorf("computer %q: %w", computer, err)
		}
		if r.Time.After(cp.LastSeen) {
			cp.LastSeen = r.Time
		}
		return put(tx.Bucket(bComputers), []byte(computer), cp)
	})
}

// Report returns the latest report on a configuration (zero if none).
func (c *Catalog) Report(computer, config string) (wire.Report, error) {
	var r wire.Report
	err := c.db.View(func(tx *bbolt.Tx) error { return get(tx.Bucket(bReports), cfgKey(computer, config), &r) })
	if errors.Is(err, ErrNotFound) {
		err = nil
	}
	return r, err
}
