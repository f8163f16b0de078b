// Package catalog holds what a vault knows besides chunks: companies,
// enrolment tokens, computers, backup configurations and committed versions.
// It is the source of truth for what is visible (docs/format.md, "Catalog").
//
// Every change is a Command applied by Apply in one bbolt transaction; the
// methods that change the catalog only build commands. A command carries
// every random id, certificate and time it needs, so applying it is
// deterministic and a replicated log can carry it unchanged.
package catalog

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"go.etcd.io/bbolt"
	"go.uber.org/zap"

	"vaultnode/internal/clock"
	"vaultnode/internal/wire"
)

// Errors of the catalog.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrToken    = errors.New("enrolment token is unknown, already used or expired")
	ErrRevoked  = errors.New("computer is revoked")
	ErrInvalid  = errors.New("invalid")
	// ErrCorrupt marks a record or command that cannot be decoded; the error
	// names the bucket and key (or the command) and the broken rule.
	ErrCorrupt = errors.New("corrupt catalog record")
	// ErrConflict is returned by a conditional command whose precondition no
	// longer holds; UpdateComputer retries on it.
	ErrConflict = errors.New("changed meanwhile")
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
	Created time.Time `json:"created,omitzero"` // when it was made (tokens made before this field: zero)
	By      string    `json:"by,omitempty"`     // who made it (a principal's name)
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
	// LastSeen is the last authenticated request of the computer (kept in
	// memory and written in batches: see Seen).
	LastSeen time.Time `json:"last_seen,omitzero"`
	// Contact is the primary technical contact's e-mail address: the
	// vault's e-mail about this computer goes there (set_contact).
	Contact string `json:"contact,omitempty"`
}

// Version is a committed version as the catalog records it: its manifest
// and the chunk ID of the manifest entry in the company's packs.
type Version struct {
	wire.Manifest
	// ManifestID is the ID of the manifest's entry in the packs (zero for a
	// version recorded before IDs were kept).
	ManifestID ID `json:"manifest_id,omitzero"`
}

// ID is a chunk ID, hex in JSON.
type ID [32]byte

// MarshalText encodes the ID in hex.
func (id ID) MarshalText() ([]byte, error) { return []byte(hex.EncodeToString(id[:])), nil }

// UnmarshalText decodes 64 hex digits.
func (id *ID) UnmarshalText(b []byte) error {
	if len(b) != 64 {
		return fmt.Errorf("chunk id is %d hex digits, want 64", len(b))
	}
	_, err := hex.Decode(id[:], b)
	return err
}

// IsZero reports whether the ID is unset.
func (id ID) IsZero() bool { return id == ID{} }

// Options configure a catalog.
type Options struct {
	Log   *zap.Logger
	Clock clock.Clock
	// ContactFlush is how often last contacts are written (default
	// DefaultContactFlush).
	ContactFlush time.Duration
	// Submit, if set, receives every command the catalog's methods build
	// instead of their applying it here: a replicated log hands it to
	// ApplyResult on every member and returns the result. nil applies at
	// once. Open already builds commands (revocations to re-apply from
	// DATA/revoked), so Submit must work before Open returns.
	Submit func(cmd Command) (any, error)
}

// Catalog is the catalog database.
type Catalog struct {
	db   *bbolt.DB
	dir  string
	opts Options
	log  *zap.Logger
	clk  clock.Clock
	seen contacts

	stop    chan struct{}
	done    chan struct{}
	flushed chan struct{} // tests: told after each periodic flush

	closeOnce sync.Once
	closeErr  error
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

var computerRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidComputerID reports whether id can be a computer id (NewComputerID
// makes "pc-" and 16 hex digits; ids never hold a slash, which keys rely on).
func ValidComputerID(id string) error {
	if !computerRE.MatchString(id) {
		return fmt.Errorf("%w computer id %q", ErrInvalid, id)
	}
	return nil
}

// File is the catalog's file name in the vault's data directory.
const File = "catalog.db"

// Open opens or creates the catalog in dir and starts writing last contacts
// every opts.ContactFlush until Close.
func Open(dir string, opts Options) (*Catalog, error) {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.ContactFlush <= 0 {
		opts.ContactFlush = DefaultContactFlush
	}
	path := filepath.Join(dir, File)
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if errors.Is(err, bbolt.ErrTimeout) {
		return nil, fmt.Errorf("open catalog %s: %w (is vaultd running on this directory?)", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open catalog %s: %w: restore catalog.db from a backup, or stop the vault and run "+
			"`vaultctl rebuild-catalog -fresh` (it moves this file aside and rebuilds the catalog from the packs)", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bCompanies, bTokens, bComputers, bConfigs, bVersions, bJournal, bReports, bRetention, bJobs, bJobSched} {
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
	c := &Catalog{db: db, dir: dir, opts: opts, log: opts.Log, clk: opts.Clock,
		seen: contacts{pending: map[string]time.Time{}}, stop: make(chan struct{}), done: make(chan struct{})}
	if err := c.ReapplyRevocations(); err != nil {
		db.Close()
		return nil, err
	}
	// The files kept beside the catalog (sealed secrets, revocation lines)
	// get what the catalog holds and they lack: a crash between a
	// catalog's replacement (a pair's snapshot install) and their rewrite
	// left them short, and a snapshot the catalog held already is not
	// installed again.
	if err := c.restoreFiles(); err != nil {
		db.Close()
		return nil, err
	}
	go c.flushLoop(c.clk.NewTimer(opts.ContactFlush), c.stop, c.done)
	return c, nil
}

// Close writes pending contacts, stops the flusher and closes the database.
// A second Close does nothing.
func (c *Catalog) Close() error {
	c.closeOnce.Do(func() {
		close(c.stop)
		<-c.done
		c.closeErr = errors.Join(c.FlushContacts(), c.db.Close())
	})
	return c.closeErr
}

func tokenKey(secret []byte) []byte { h := sha256.Sum256(secret); return h[:] }

// NewComputerID returns a fresh random computer id.
func NewComputerID() string {
	var b [8]byte
	rand.Read(b[:])
	return "pc-" + hex.EncodeToString(b[:])
}

func cfgKey(computer, name string) []byte { return []byte(computer + "/" + name) }

func verKey(computer, config string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(computer+"/"+config+"/"), seq)
}

func journalKey(computer, config string, base, n uint64) []byte {
	k := binary.BigEndian.AppendUint64([]byte(computer+"/"+config+"/"), base)
	return binary.BigEndian.AppendUint64(k, n)
}

// ---- Changes: each builds one command and applies it ----

// CreateCompany adds a company.
func (c *Catalog) CreateCompany(co Company) error {
	_, err := c.apply(KindCreateCompany, CreateCompanyCmd{Company: co})
	return err
}

// AddToken records a token's secret hash for a company.
func (c *Catalog) AddToken(secret []byte, t Token) error {
	_, err := c.apply(KindAddToken, AddTokenCmd{Hash: tokenKey(secret), Token: t})
	return err
}

// TokenCompany returns the company of a token that is usable at now (not
// used, not expired), or ErrToken. Enrolment reads it first to make the
// computer's id and certificate, then applies EnrollComputer.
func (c *Catalog) TokenCompany(secret []byte, now time.Time) (string, error) {
	var t Token
	err := c.db.View(func(tx *bbolt.Tx) error {
		var err error
		t, err = getToken(tx, tokenKey(secret))
		return err
	})
	if err != nil || t.Used || now.After(t.Expires) {
		return "", ErrToken
	}
	return t.Company, nil
}

// EnrollComputer consumes a token and records cp, made beforehand, in one
// command; it fails with ErrToken if the token was used or expired meanwhile.
func (c *Catalog) EnrollComputer(secret []byte, now time.Time, cp Computer) error {
	_, err := c.apply(KindEnroll, EnrollCmd{Hash: tokenKey(secret), Now: now, Computer: cp})
	return err
}

// Enroll consumes a token and records the computer that comp makes for the
// token's company. comp runs before the command (it may sign a
// certificate); if the token is gone by the time the command applies, the
// computer is not recorded and Enroll returns ErrToken.
func (c *Catalog) Enroll(secret []byte, now time.Time, comp func(company string) (Computer, error)) (Computer, error) {
	company, err := c.TokenCompany(secret, now)
	if err != nil {
		return Computer{}, err
	}
	cp, err := comp(company)
	if err != nil {
		return Computer{}, err
	}
	if err := c.EnrollComputer(secret, now, cp); err != nil {
		return Computer{}, err
	}
	return cp, nil
}

// Revoke marks a computer revoked. The revocation is also appended to
// DATA/revoked, so a catalog rebuilt from packs never un-revokes it.
func (c *Catalog) Revoke(id string, now time.Time) error {
	_, err := c.apply(KindRevoke, RevokeCmd{Computer: id, Time: now})
	return err
}

// RecordComputer records a computer found in the packs (a rebuild of the
// catalog): no token, and the name, fingerprint and settings are whatever
// the rebuild knows.
func (c *Catalog) RecordComputer(cp Computer) error {
	_, err := c.apply(KindRecordComputer, RecordComputerCmd{Computer: cp})
	return err
}

// UpdateComputer changes a computer's settings: fn gets a copy of the
// record and may change only its Settings. The change is applied as a
// conditional command (it applies only if the settings are still those fn
// saw), retried when another change came first.
func (c *Catalog) UpdateComputer(id string, fn func(cp *Computer) error) (Computer, error) {
	for attempt := 0; ; attempt++ {
		cp, err := c.Computer(id)
		if err != nil {
			return cp, err
		}
		prev := cp.Settings
		next := cp
		next.Settings = cloneSettings(prev)
		if err := fn(&next); err != nil {
			return cp, err
		}
		if next.ID != cp.ID || next.Company != cp.Company || next.Name != cp.Name || next.Fingerprint != cp.Fingerprint ||
			!next.Enrolled.Equal(cp.Enrolled) || next.Revoked != cp.Revoked {
			return cp, fmt.Errorf("%w: update computer %q: only its settings can change", ErrInvalid, id)
		}
		_, err = c.apply(KindSetSettings, SetSettingsCmd{Computer: id, Prev: prev, Settings: next.Settings})
		if errors.Is(err, ErrConflict) && attempt < 100 {
			continue
		}
		if err != nil {
			return cp, err
		}
		return c.Computer(id)
	}
}

func cloneSettings(s wire.Settings) wire.Settings {
	out := wire.Settings{Bandwidth: s.Bandwidth}
	if s.RunNow != nil {
		out.RunNow = make(map[string]int64, len(s.RunNow))
		for k, v := range s.RunNow {
			out.RunNow[k] = v
		}
	}
	return out
}

// PutConfig creates or replaces a configuration, bumping its revision.
// now stamps a new configuration's creation time.
func (c *Catalog) PutConfig(computer string, cfg wire.Config, now time.Time) (wire.Config, error) {
	res, err := c.apply(KindPutConfig, PutConfigCmd{Computer: computer, Config: cfg, Now: now})
	if err != nil {
		return cfg, err
	}
	return res.(wire.Config), nil
}

// DeleteConfig removes a configuration; its versions stay.
func (c *Catalog) DeleteConfig(computer, name string) error {
	_, err := c.apply(KindDeleteConfig, DeleteConfigCmd{Computer: computer, Name: name})
	return err
}

// AddVersion commits a version whose manifest entry in the packs has ID
// manifestID; its Seq must be new.
func (c *Catalog) AddVersion(m wire.Manifest, manifestID [32]byte) error {
	_, err := c.apply(KindAddVersion, AddVersionCmd{Version: Version{Manifest: m, ManifestID: manifestID}})
	return err
}

// AddJournal records a continuous-mode journal entry; j.N is set to the
// next number after j.Base's last entry.
func (c *Catalog) AddJournal(computer, config string, j wire.Journal) (wire.Journal, error) {
	res, err := c.apply(KindAddJournal, AddJournalCmd{Computer: computer, Config: config, Journal: j})
	if err != nil {
		return j, err
	}
	return res.(wire.Journal), nil
}

// PutReport stores an agent's latest report on a configuration; its time
// also counts as the computer's contact. A report that says what the
// stored one says (an agent's heartbeat) is only contact: it is kept in
// memory with the others (see Seen) and the stored report keeps the time
// its state began.
func (c *Catalog) PutReport(computer string, r wire.Report) error {
	if r.Config != "" {
		old, err := c.Report(computer, r.Config)
		if err == nil && old.Config == r.Config && old.State == r.State && old.Reason == r.Reason && old.Capture == r.Capture {
			if _, err := c.Computer(computer); err != nil {
				return err
			}
			c.Seen(computer, r.Time)
			return nil
		}
	}
	_, err := c.apply(KindPutReport, PutReportCmd{Computer: computer, Report: r})
	return err
}

// ---- Reads ----

// Company returns a company.
func (c *Catalog) Company(name string) (Company, error) {
	var co Company
	err := c.db.View(func(tx *bbolt.Tx) error {
		var err error
		co, err = getCompany(tx, name)
		return err
	})
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
			co, err := decodeCompany(k, v)
			if err != nil {
				return c.skip(err)
			}
			out = append(out, co)
			return nil
		})
	})
	return out, err
}

// skip logs a record that cannot be decoded; listings go on without it.
func (c *Catalog) skip(err error) error {
	c.log.Error("skip a catalog record", zap.Error(err))
	return nil
}

// Computer returns a computer by id.
func (c *Catalog) Computer(id string) (Computer, error) {
	var cp Computer
	seen := c.pendingContact(id)
	err := c.db.View(func(tx *bbolt.Tx) error {
		var err error
		cp, err = getComputer(tx, id)
		return err
	})
	if err != nil {
		return cp, fmt.Errorf("computer %q: %w", id, err)
	}
	mergeSeen(&cp, seen)
	return cp, nil
}

// Computers lists computers, of one company or all when company is empty.
func (c *Catalog) Computers(company string) ([]Computer, error) {
	var out []Computer
	seen := c.pendingContacts()
	err := c.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bComputers).ForEach(func(k, v []byte) error {
			cp, err := decodeComputer(k, v)
			if err != nil {
				return c.skip(err)
			}
			if company == "" || cp.Company == company {
				mergeSeen(&cp, seen[cp.ID])
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

// Config returns one configuration.
func (c *Catalog) Config(computer, name string) (wire.Config, error) {
	var cfg wire.Config
	err := c.db.View(func(tx *bbolt.Tx) error {
		var err error
		cfg, err = getConfig(tx, computer, name)
		return err
	})
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
			cfg, err := decodeConfig(k, v)
			if err != nil {
				c.skip(err)
				continue
			}
			out = append(out, cfg)
		}
		return nil
	})
	return out, err
}

// Versions lists the versions of a computer's configuration (all of its
// configurations when config is empty), oldest first.
func (c *Catalog) Versions(computer, config string) ([]wire.Manifest, error) {
	vs, err := c.VersionRecords(computer, config)
	out := make([]wire.Manifest, len(vs))
	for i := range vs {
		out[i] = vs[i].Manifest
	}
	return out, err
}

// VersionRecords is Versions with each version's manifest ID.
func (c *Catalog) VersionRecords(computer, config string) ([]Version, error) {
	var out []Version
	err := c.db.View(func(tx *bbolt.Tx) error {
		prefix := []byte(computer + "/")
		if config != "" {
			prefix = []byte(computer + "/" + config + "/")
		}
		cur := tx.Bucket(bVersions).Cursor()
		for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
			ver, err := decodeVersion(k, v)
			if err != nil {
				c.skip(err)
				continue
			}
			out = append(out, ver)
		}
		return nil
	})
	return out, err
}

// AllVersions calls fn for every version of every computer.
func (c *Catalog) AllVersions(fn func(m wire.Manifest) error) error {
	return c.AllVersionRecords(func(v Version) error { return fn(v.Manifest) })
}

// AllVersionRecords calls fn for every version record of every computer.
func (c *Catalog) AllVersionRecords(fn func(v Version) error) error {
	return c.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bVersions).ForEach(func(k, v []byte) error {
			ver, err := decodeVersion(k, v)
			if err != nil {
				return c.skip(err)
			}
			return fn(ver)
		})
	})
}

// NewestVersions returns the newest version of every configuration of
// every computer (deleted configurations included). It decodes only those
// records, so it stays cheap with long histories.
func (c *Catalog) NewestVersions() ([]Version, error) {
	var out []Version
	err := c.db.View(func(tx *bbolt.Tx) error {
		var prevK, prevV []byte
		emit := func() {
			if prevK == nil {
				return
			}
			ver, err := decodeVersion(prevK, prevV)
			if err != nil {
				c.skip(err)
				return
			}
			out = append(out, ver)
		}
		cur := tx.Bucket(bVersions).Cursor()
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			if prevK != nil && (len(k) < 8 || len(prevK) < 8 || !bytes.Equal(k[:len(k)-8], prevK[:len(prevK)-8])) {
				emit()
			}
			prevK, prevV = k, v
		}
		emit()
		return nil
	})
	return out, err
}

// Newest returns a configuration's newest version, decoding that record
// only; ok is false when it has none.
func (c *Catalog) Newest(computer, config string) (m wire.Manifest, ok bool, err error) {
	err = c.db.View(func(tx *bbolt.Tx) error {
		prefix := []byte(computer + "/" + config + "/")
		k, v := lastBefore(tx.Bucket(bVersions).Cursor(), prefix)
		if k == nil || !bytes.HasPrefix(k, prefix) || len(k) != len(prefix)+8 {
			return nil
		}
		ver, err := decodeVersion(k, v)
		if err != nil {
			return fmt.Errorf("newest version of %s/%s: %w", computer, config, err)
		}
		m, ok = ver.Manifest, true
		return nil
	})
	return m, ok, err
}

// LastSeq returns the newest committed sequence of a configuration, 0 if none.
func (c *Catalog) LastSeq(computer, config string) (uint64, error) {
	var seq uint64
	err := c.db.View(func(tx *bbolt.Tx) error {
		seq = lastSeq(tx, computer, config)
		return nil
	})
	return seq, err
}

// lastBefore places cur on the last key of prefix followed by a sequence
// number (8 bytes), or just before where such keys would be: the caller
// checks the prefix.
func lastBefore(cur *bbolt.Cursor, prefix []byte) (k, v []byte) {
	k, _ = cur.Seek(append(bytes.Clone(prefix), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff))
	if k == nil {
		return cur.Last()
	}
	return cur.Prev()
}

func lastSeq(tx *bbolt.Tx, computer, config string) uint64 {
	prefix := []byte(computer + "/" + config + "/")
	k, _ := lastBefore(tx.Bucket(bVersions).Cursor(), prefix)
	if k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8 {
		return binary.BigEndian.Uint64(k[len(prefix):])
	}
	return 0
}

// Journal lists the journal entries of a configuration recorded on top of
// version base, in order.
func (c *Catalog) Journal(computer, config string, base uint64) ([]wire.Journal, error) {
	var out []wire.Journal
	err := c.db.View(func(tx *bbolt.Tx) error {
		prefix := binary.BigEndian.AppendUint64([]byte(computer+"/"+config+"/"), base)
		cur := tx.Bucket(bJournal).Cursor()
		for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
			_, _, j, err := decodeJournal(k, v)
			if err != nil {
				c.skip(err)
				continue
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
			computer, config, j, err := decodeJournal(k, v)
			if err != nil {
				return c.skip(err)
			}
			return fn(computer, config, j)
		})
	})
}

// Report returns the latest report on a configuration (zero if none).
func (c *Catalog) Report(computer, config string) (wire.Report, error) {
	var r wire.Report
	err := c.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bReports).Get(cfgKey(computer, config))
		if v == nil {
			return nil
		}
		var err error
		r, err = decodeReport(cfgKey(computer, config), v)
		return err
	})
	return r, err
}
