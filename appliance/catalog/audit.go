package catalog

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/mail"
	"time"

	"go.etcd.io/bbolt"
)

// A computer's technical contact and the audit log (issue 12;
// docs/format.md, "Catalog commands").

var bAudit = []byte("audit") // 8-byte big-endian sequence: AuditEntry

// Commands of contacts and the audit log.
const (
	KindSetContact Kind = "set_contact"
	KindAudit      Kind = "audit"
)

// MaxAudit bounds the audit log: beyond it the oldest entries go, one per
// entry added. An entry is at most MaxAuditEntry bytes (about 300 in
// practice), so the log stays under 100 MB and is usually about 30 MB.
const (
	MaxAudit      = 100000 // maxAudit in force (a test lowers it)
	MaxAuditEntry = 4 << 10
	// MaxContact bounds a contact address (RFC 5321's path limit).
	MaxContact = 254
)

// AuditEntry is one change or restore: who, what, when, from where.
type AuditEntry struct {
	Seq  uint64    `json:"seq"` // chosen on apply: one after the newest
	Time time.Time `json:"time"`
	// Principal names who acted ("operator admin", "user carol of acme",
	// "admin socket", "computer pc-... of acme"); Kind is its kind.
	Principal string `json:"principal"`
	Kind      string `json:"kind"`
	From      string `json:"from,omitempty"` // the client address; empty on the admin socket
	// Company and Computer are what the change touched, when it touched
	// one: a company's users see the entries of their company.
	Company  string `json:"company,omitempty"`
	Computer string `json:"computer,omitempty"`
	Action   string `json:"action"`           // the route ("POST /api/v1/restores") or operation
	Detail   string `json:"detail,omitempty"` // what, in words
	Request  string `json:"request_id,omitempty"`
}

type (
	// SetContactCmd sets (or, empty, clears) a computer's primary
	// technical contact, the address the vault's e-mail goes to.
	SetContactCmd struct {
		Computer string `json:"computer"`
		Contact  string `json:"contact"`
	}
	// AuditCmd appends an entry (its Seq is chosen on apply) and drops the
	// oldest beyond MaxAudit.
	AuditCmd struct {
		Entry AuditEntry `json:"entry"`
	}
)

func init() {
	appliers[KindSetContact] = typed(applySetContact)
	appliers[KindAudit] = typed(applyAudit)
}

// ValidContact checks a contact address: one bare e-mail address
// (local@domain), at most MaxContact bytes; empty clears.
func ValidContact(addr string) error {
	if addr == "" {
		return nil
	}
	a, err := mail.ParseAddress(addr)
	if len(addr) > MaxContact || err != nil || a.Address != addr || a.Name != "" {
		return fmt.Errorf("%w contact %q: give one e-mail address like it@example.com (at most %d characters)", ErrInvalid, addr, MaxContact)
	}
	return nil
}

func applySetContact(c *Catalog, tx *bbolt.Tx, p SetContactCmd) (any, error) {
	if err := ValidContact(p.Contact); err != nil {
		return nil, err
	}
	cp, err := getComputer(tx, p.Computer)
	if err != nil {
		return nil, fmt.Errorf("computer %q: %w", p.Computer, err)
	}
	cp.Contact = p.Contact
	return nil, put(tx.Bucket(bComputers), bComputers, []byte(cp.ID), cp)
}

var maxAudit uint64 = MaxAudit

func auditKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func applyAudit(c *Catalog, tx *bbolt.Tx, p AuditCmd) (any, error) {
	e := p.Entry
	if e.Principal == "" || e.Action == "" {
		return nil, fmt.Errorf("%w: an audit entry names who and what", ErrInvalid)
	}
	b, err := bucket(tx, bAudit)
	if err != nil {
		return nil, err
	}
	e.Seq = 1
	cur := b.Cursor()
	if k, _ := cur.Last(); len(k) == 8 {
		e.Seq = binary.BigEndian.Uint64(k) + 1
	}
	j, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encode audit entry: %w", err)
	}
	if len(j) > MaxAuditEntry {
		return nil, fmt.Errorf("%w: audit entry of %d bytes is over the %d-byte limit", ErrInvalid, len(j), MaxAuditEntry)
	}
	if err := b.Put(auditKey(e.Seq), j); err != nil {
		return nil, err
	}
	// Sequences have no gaps but at the front, so first..last counts them.
	for k, _ := cur.First(); len(k) == 8 && e.Seq-binary.BigEndian.Uint64(k)+1 > maxAudit; k, _ = cur.First() {
		if err := cur.Delete(); err != nil {
			return nil, err
		}
	}
	return e.Seq, nil
}

// SetContact sets a computer's primary technical contact ("" clears it).
func (c *Catalog) SetContact(computer, contact string) error {
	_, err := c.apply(KindSetContact, SetContactCmd{Computer: computer, Contact: contact})
	return err
}

// Audit appends an entry to the audit log.
func (c *Catalog) Audit(e AuditEntry) error {
	_, err := c.apply(KindAudit, AuditCmd{Entry: e})
	return err
}

// AuditLog calls fn with the entries older than before (0: from the
// newest), newest first, until fn answers false or the log ends.
func (c *Catalog) AuditLog(before uint64, fn func(AuditEntry) bool) error {
	return c.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bAudit)
		if b == nil {
			return nil
		}
		cur := b.Cursor()
		var k, v []byte
		if before == 0 {
			k, v = cur.Last()
		} else if k, _ = cur.Seek(auditKey(before)); k == nil {
			k, v = cur.Last()
		} else {
			k, v = cur.Prev()
		}
		for ; k != nil; k, v = cur.Prev() {
			var e AuditEntry
			if len(k) != 8 || len(v) > MaxAuditEntry {
				return corrupt(bAudit, k, "key of %d bytes or record of %d bytes (limits 8 and %d)", len(k), len(v), MaxAuditEntry)
			}
			if err := decodeJSON(bAudit, k, v, &e); err != nil {
				return err
			}
			if !fn(e) {
				return nil
			}
		}
		return nil
	})
}
