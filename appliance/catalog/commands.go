package catalog

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"vaultnode/internal/wire"
)

// Kind names a catalog command.
type Kind string

// The catalog's commands (docs/format.md, "Catalog commands").
const (
	KindCreateCompany Kind = "create_company"
	KindAddToken      Kind = "add_token"
	KindEnroll        Kind = "enroll"
	KindRevoke        Kind = "revoke"
	KindSetSettings   Kind = "set_settings"
	KindPutConfig     Kind = "put_config"
	KindDeleteConfig  Kind = "delete_config"
	KindAddVersion    Kind = "add_version"
	KindAddJournal    Kind = "add_journal"
	KindPutReport     Kind = "put_report"
	KindContact       Kind = "contact"
	// KindRecordComputer records a computer without a token: only a
	// catalog rebuilt from packs uses it.
	KindRecordComputer Kind = "record_computer"
)

// MaxCommand bounds an encoded command.
const MaxCommand = MaxRecord + 64<<10

// Command is one change to the catalog: a kind and its JSON payload. It
// holds everything the change needs (ids, certificates' fingerprints,
// times), so applying the same commands in the same order to the same
// catalog gives the same catalog.
type Command struct {
	Kind    Kind            `json:"kind"`
	Payload json.RawMessage `json:"payload"`
}

// Payloads of the commands.
type (
	CreateCompanyCmd struct {
		Company Company `json:"company"`
	}
	AddTokenCmd struct {
		Hash  []byte `json:"hash"` // SHA-256 of the token's secret
		Token Token  `json:"token"`
	}
	EnrollCmd struct {
		Hash     []byte    `json:"hash"`
		Now      time.Time `json:"now"` // the token must not have expired at Now
		Computer Computer  `json:"computer"`
	}
	RevokeCmd struct {
		Computer string    `json:"computer"`
		Time     time.Time `json:"time"`
	}
	SetSettingsCmd struct {
		Computer string        `json:"computer"`
		Prev     wire.Settings `json:"prev"` // applies only if the settings are still Prev
		Settings wire.Settings `json:"settings"`
	}
	PutConfigCmd struct {
		Computer string      `json:"computer"`
		Config   wire.Config `json:"config"`
		Now      time.Time   `json:"now"` // a new configuration's creation time
	}
	DeleteConfigCmd struct {
		Computer string `json:"computer"`
		Name     string `json:"name"`
	}
	AddVersionCmd struct {
		Version Version `json:"version"`
	}
	AddJournalCmd struct {
		Computer string       `json:"computer"`
		Config   string       `json:"config"`
		Journal  wire.Journal `json:"journal"` // N is chosen on apply: the next after Base's last
	}
	PutReportCmd struct {
		Computer string      `json:"computer"`
		Report   wire.Report `json:"report"`
	}
	RecordComputerCmd struct {
		Computer Computer `json:"computer"`
	}
	ContactCmd struct {
		Seen map[string]time.Time `json:"seen"` // computer id -> last authenticated request
	}
)

// NewCommand builds a command of kind with payload p.
func NewCommand(kind Kind, p any) (Command, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return Command{}, fmt.Errorf("encode %s command: %w", kind, err)
	}
	if len(b) > MaxCommand {
		return Command{}, fmt.Errorf("%w: %s command of %d bytes is over the %d-byte limit", ErrInvalid, kind, len(b), MaxCommand)
	}
	return Command{Kind: kind, Payload: b}, nil
}

// Marshal encodes a command for a log.
func (cmd Command) Marshal() ([]byte, error) { return json.Marshal(cmd) }

// DecodeCommand decodes an encoded command, bounded by MaxCommand.
func DecodeCommand(b []byte) (Command, error) {
	var cmd Command
	if len(b) > MaxCommand {
		return cmd, fmt.Errorf("%w: command of %d bytes is over the %d-byte limit", ErrCorrupt, len(b), MaxCommand)
	}
	if err := json.Unmarshal(b, &cmd); err != nil {
		return cmd, fmt.Errorf("%w: command: %v", ErrCorrupt, err)
	}
	if appliers[cmd.Kind] == nil {
		return cmd, fmt.Errorf("%w: unknown command kind %q", ErrCorrupt, cmd.Kind)
	}
	return cmd, nil
}

func (c *Catalog) apply(kind Kind, p any) (any, error) {
	cmd, err := NewCommand(kind, p)
	if err != nil {
		return nil, err
	}
	if c.opts.Submit != nil {
		return c.opts.Submit(cmd)
	}
	return c.ApplyResult(cmd)
}

// Apply applies one command in one transaction: the only writer of the
// catalog.
func (c *Catalog) Apply(cmd Command) error {
	_, err := c.ApplyResult(cmd)
	return err
}

// ApplyResult is Apply returning what the command made: the stored
// wire.Config of put_config, the wire.Journal (with its N) of add_journal,
// nil for the others.
func (c *Catalog) ApplyResult(cmd Command) (any, error) {
	fn := appliers[cmd.Kind]
	if fn == nil {
		return nil, fmt.Errorf("%w: unknown command kind %q", ErrInvalid, cmd.Kind)
	}
	if len(cmd.Payload) > MaxCommand {
		return nil, fmt.Errorf("%w: %s command of %d bytes is over the %d-byte limit", ErrInvalid, cmd.Kind, len(cmd.Payload), MaxCommand)
	}
	var res any
	err := c.db.Update(func(tx *bbolt.Tx) error {
		var err error
		res, err = fn(c, tx, cmd.Payload)
		return err
	})
	return res, err
}

type applier func(c *Catalog, tx *bbolt.Tx, payload []byte) (any, error)

// appliers maps each kind to its applier. Package-level variables are
// initialized before any init function runs, so other files may add to it
// from their init.
var appliers = map[Kind]applier{
	KindCreateCompany:  typed(applyCreateCompany),
	KindAddToken:       typed(applyAddToken),
	KindEnroll:         typed(applyEnroll),
	KindRevoke:         typed(applyRevoke),
	KindSetSettings:    typed(applySetSettings),
	KindPutConfig:      typed(applyPutConfig),
	KindDeleteConfig:   typed(applyDeleteConfig),
	KindAddVersion:     typed(applyAddVersion),
	KindAddJournal:     typed(applyAddJournal),
	KindPutReport:      typed(applyPutReport),
	KindContact:        typed(applyContact),
	KindRecordComputer: typed(applyRecordComputer),
}

// typed decodes a payload strictly (unknown fields refused) and calls fn.
func typed[P any](fn func(c *Catalog, tx *bbolt.Tx, p P) (any, error)) applier {
	return func(c *Catalog, tx *bbolt.Tx, payload []byte) (any, error) {
		var p P
		dec := json.NewDecoder(bytes.NewReader(payload))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			return nil, fmt.Errorf("%w: decode %T: %v", ErrInvalid, p, err)
		}
		return fn(c, tx, p)
	}
}

func applyCreateCompany(c *Catalog, tx *bbolt.Tx, p CreateCompanyCmd) (any, error) {
	co := p.Company
	if err := ValidCompanyName(co.Name); err != nil {
		return nil, err
	}
	b := tx.Bucket(bCompanies)
	if b.Get([]byte(co.Name)) != nil {
		return nil, fmt.Errorf("company %q: %w", co.Name, ErrExists)
	}
	// The sealed secret also goes to DATA/keys before the company exists:
	// without it no pack of the company could be read after losing the
	// catalog.
	if err := c.writeSealed(co.Name, co.Sealed); err != nil {
		return nil, err
	}
	return nil, put(b, bCompanies, []byte(co.Name), co)
}

func applyAddToken(c *Catalog, tx *bbolt.Tx, p AddTokenCmd) (any, error) {
	if len(p.Hash) != 32 {
		return nil, fmt.Errorf("%w: token hash of %d bytes, want 32", ErrInvalid, len(p.Hash))
	}
	if tx.Bucket(bCompanies).Get([]byte(p.Token.Company)) == nil {
		return nil, fmt.Errorf("company %q: %w", p.Token.Company, ErrNotFound)
	}
	return nil, put(tx.Bucket(bTokens), bTokens, p.Hash, p.Token)
}

func applyEnroll(c *Catalog, tx *bbolt.Tx, p EnrollCmd) (any, error) {
	if len(p.Hash) != 32 {
		return nil, ErrToken
	}
	t, err := getToken(tx, p.Hash)
	if err != nil || t.Used || p.Now.After(t.Expires) {
		return nil, ErrToken
	}
	cp := p.Computer
	if err := ValidComputerID(cp.ID); err != nil {
		return nil, err
	}
	if cp.Company != t.Company {
		return nil, fmt.Errorf("%w: computer of company %q enrolled with a token of %q", ErrInvalid, cp.Company, t.Company)
	}
	if tx.Bucket(bComputers).Get([]byte(cp.ID)) != nil {
		return nil, fmt.Errorf("computer %q: %w", cp.ID, ErrExists)
	}
	t.Used, t.UsedBy = true, cp.ID
	if err := put(tx.Bucket(bTokens), bTokens, p.Hash, t); err != nil {
		return nil, err
	}
	return nil, put(tx.Bucket(bComputers), bComputers, []byte(cp.ID), cp)
}

func applyRevoke(c *Catalog, tx *bbolt.Tx, p RevokeCmd) (any, error) {
	cp, err := getComputer(tx, p.Computer)
	if err != nil {
		return nil, fmt.Errorf("computer %q: %w", p.Computer, err)
	}
	if cp.Revoked != nil {
		return nil, nil // revoked once is revoked for good
	}
	// Recorded outside the catalog first: a catalog rebuilt from packs
	// never un-revokes a computer.
	if err := c.appendRevocation(cp, p.Time); err != nil {
		return nil, err
	}
	t := p.Time
	cp.Revoked = &t
	return nil, put(tx.Bucket(bComputers), bComputers, []byte(cp.ID), cp)
}

func applySetSettings(c *Catalog, tx *bbolt.Tx, p SetSettingsCmd) (any, error) {
	cp, err := getComputer(tx, p.Computer)
	if err != nil {
		return nil, fmt.Errorf("computer %q: %w", p.Computer, err)
	}
	if !sameSettings(cp.Settings, p.Prev) {
		return nil, fmt.Errorf("settings of computer %q: %w", p.Computer, ErrConflict)
	}
	cp.Settings = p.Settings
	return nil, put(tx.Bucket(bComputers), bComputers, []byte(cp.ID), cp)
}

func sameSettings(a, b wire.Settings) bool {
	if a.Bandwidth != b.Bandwidth || len(a.RunNow) != len(b.RunNow) {
		return false
	}
	for k, v := range a.RunNow {
		if w, ok := b.RunNow[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func applyPutConfig(c *Catalog, tx *bbolt.Tx, p PutConfigCmd) (any, error) {
	cfg := p.Config
	if err := ValidConfigName(cfg.Name); err != nil {
		return nil, err
	}
	if err := ValidComputerID(p.Computer); err != nil {
		return nil, err
	}
	old, err := getConfig(tx, p.Computer, cfg.Name)
	switch {
	case err == nil:
		cfg.Revision = old.Revision + 1
		cfg.Created = old.Created
	case errors.Is(err, ErrNotFound):
		cfg.Revision = 1
		cfg.Created = p.Now
	default:
		return nil, err
	}
	return cfg, put(tx.Bucket(bConfigs), bConfigs, cfgKey(p.Computer, cfg.Name), cfg)
}

func applyDeleteConfig(c *Catalog, tx *bbolt.Tx, p DeleteConfigCmd) (any, error) {
	if tx.Bucket(bConfigs).Get(cfgKey(p.Computer, p.Name)) == nil {
		return nil, fmt.Errorf("configuration %q: %w", p.Name, ErrNotFound)
	}
	return nil, tx.Bucket(bConfigs).Delete(cfgKey(p.Computer, p.Name))
}

func applyAddVersion(c *Catalog, tx *bbolt.Tx, p AddVersionCmd) (any, error) {
	m := p.Version
	if err := ValidComputerID(m.Computer); err != nil {
		return nil, err
	}
	if err := ValidConfigName(m.Config); err != nil {
		return nil, err
	}
	if m.Seq == 0 {
		return nil, fmt.Errorf("%w: version %s@0: sequences start at 1", ErrInvalid, m.Config)
	}
	b := tx.Bucket(bVersions)
	k := verKey(m.Computer, m.Config, m.Seq)
	if b.Get(k) != nil {
		return nil, fmt.Errorf("version %s@%d: %w", m.Config, m.Seq, ErrExists)
	}
	return nil, put(b, bVersions, k, m)
}

func applyAddJournal(c *Catalog, tx *bbolt.Tx, p AddJournalCmd) (any, error) {
	if err := ValidComputerID(p.Computer); err != nil {
		return nil, err
	}
	if err := ValidConfigName(p.Config); err != nil {
		return nil, err
	}
	j := p.Journal
	b := tx.Bucket(bJournal)
	prefix := binary.BigEndian.AppendUint64([]byte(p.Computer+"/"+p.Config+"/"), j.Base)
	j.N = 1
	cur := b.Cursor()
	for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
		if len(k) == len(prefix)+8 {
			j.N = binary.BigEndian.Uint64(k[len(prefix):]) + 1
		}
	}
	return j, put(b, bJournal, journalKey(p.Computer, p.Config, j.Base, j.N), j)
}

func applyPutReport(c *Catalog, tx *bbolt.Tx, p PutReportCmd) (any, error) {
	cp, err := getComputer(tx, p.Computer)
	if err != nil {
		return nil, fmt.Errorf("computer %q: %w", p.Computer, err)
	}
	if p.Report.Config != "" {
		if err := ValidConfigName(p.Report.Config); err != nil {
			return nil, err
		}
		if err := put(tx.Bucket(bReports), bReports, cfgKey(p.Computer, p.Report.Config), p.Report); err != nil {
			return nil, err
		}
	}
	if !p.Report.Time.After(cp.LastSeen) {
		return nil, nil
	}
	cp.LastSeen = p.Report.Time
	return nil, put(tx.Bucket(bComputers), bComputers, []byte(cp.ID), cp)
}

func applyContact(c *Catalog, tx *bbolt.Tx, p ContactCmd) (any, error) {
	for id, t := range p.Seen {
		cp, err := getComputer(tx, id)
		if err != nil {
			continue // removed meanwhile, or a damaged record that Computer reports
		}
		if !t.After(cp.LastSeen) {
			continue
		}
		cp.LastSeen = t
		if err := put(tx.Bucket(bComputers), bComputers, []byte(id), cp); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

func applyRecordComputer(c *Catalog, tx *bbolt.Tx, p RecordComputerCmd) (any, error) {
	cp := p.Computer
	if err := ValidComputerID(cp.ID); err != nil {
		return nil, err
	}
	if tx.Bucket(bCompanies).Get([]byte(cp.Company)) == nil {
		return nil, fmt.Errorf("company %q: %w", cp.Company, ErrNotFound)
	}
	if tx.Bucket(bComputers).Get([]byte(cp.ID)) != nil {
		return nil, fmt.Errorf("computer %q: %w", cp.ID, ErrExists)
	}
	return nil, put(tx.Bucket(bComputers), bComputers, []byte(cp.ID), cp)
}
