package catalog

import (
	"bytes"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// Password resets by e-mail link (issue 12; docs/format.md, "Catalog
// commands"). The catalog keeps only the SHA-256 of a link's random token,
// with its user and expiry: a copy of the catalog resets no one's password.
// A user has at most one live token; using one sets the password, clears
// the lockout and signs the user out everywhere in the same transaction, so
// a token works once even when two requests race.

var bResets = []byte("password_resets") // hex SHA-256 of the token: Reset

// Commands of password resets.
const (
	KindPutReset Kind = "put_reset"
	KindUseReset Kind = "use_reset"
)

// Reset is a live password-reset token.
type Reset struct {
	User    string    `json:"user"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

type (
	// PutResetCmd records a token of Reset.User, replacing any other of
	// the user's; tokens expired at Reset.Created go too.
	PutResetCmd struct {
		Hash  []byte `json:"hash"`
		Reset Reset  `json:"reset"`
	}
	// UseResetCmd spends the token: refused (ErrNotFound) unless it is
	// live at Now; else it goes, the user's password becomes Password (an
	// argon2id hash), its must_change, failures and lockout clear and
	// every session of the user ends. It answers the user's name.
	UseResetCmd struct {
		Hash     []byte    `json:"hash"`
		Now      time.Time `json:"now"`
		Password string    `json:"password"`
	}
)

func init() {
	appliers[KindPutReset] = typed(applyPutReset)
	appliers[KindUseReset] = typed(applyUseReset)
}

func applyPutReset(c *Catalog, tx *bbolt.Tx, p PutResetCmd) (any, error) {
	k, err := sessionKey(p.Hash)
	if err != nil {
		return nil, err
	}
	if _, err := getUser(tx, p.Reset.User); err != nil {
		return nil, err
	}
	if !p.Reset.Expires.After(p.Reset.Created) {
		return nil, fmt.Errorf("%w: reset token of %q expires before it is made", ErrInvalid, p.Reset.User)
	}
	b, err := bucket(tx, bResets)
	if err != nil {
		return nil, err
	}
	if err := dropResets(b, func(r Reset) bool { return r.User == p.Reset.User || !r.Expires.After(p.Reset.Created) }); err != nil {
		return nil, err
	}
	return nil, put(b, bResets, k, p.Reset)
}

// dropResets removes the tokens match chooses, and any it cannot decode.
func dropResets(b *bbolt.Bucket, match func(Reset) bool) error {
	var del [][]byte
	err := b.ForEach(func(k, v []byte) error {
		var r Reset
		if err := decodeJSON(bResets, k, v, &r); err != nil || match(r) {
			del = append(del, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range del {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func applyUseReset(c *Catalog, tx *bbolt.Tx, p UseResetCmd) (any, error) {
	k, err := sessionKey(p.Hash)
	if err != nil {
		return nil, err
	}
	b, err := bucket(tx, bResets)
	if err != nil {
		return nil, err
	}
	gone := fmt.Errorf("reset token: %w", ErrNotFound)
	v := b.Get(k)
	if v == nil {
		return nil, gone
	}
	var r Reset
	if err := decodeJSON(bResets, k, v, &r); err != nil {
		return nil, err
	}
	if err := b.Delete(k); err != nil {
		return nil, err
	}
	if !p.Now.Before(r.Expires) {
		return nil, gone
	}
	u, err := getUser(tx, r.User)
	if err != nil {
		return nil, err
	}
	u.Password, u.MustChange, u.Failures, u.LockedUntil = p.Password, false, 0, time.Time{}
	if err := validUser(tx, u); err != nil {
		return nil, err
	}
	ub, err := bucket(tx, bUsers)
	if err != nil {
		return nil, err
	}
	if err := put(ub, bUsers, []byte(u.Name), u); err != nil {
		return nil, err
	}
	if _, err := applyDeleteSessionsOf(c, tx, DeleteSessionsOfCmd{User: u.Name}); err != nil {
		return nil, err
	}
	return u.Name, nil
}

// PutReset records a reset token's hash for r.User, replacing the user's
// previous one.
func (c *Catalog) PutReset(hash [32]byte, r Reset) error {
	_, err := c.apply(KindPutReset, PutResetCmd{Hash: hash[:], Reset: r})
	return err
}

// UseReset spends the token whose hash is hash at now, setting its user's
// password hash; ErrNotFound when it is unknown, used or expired. It
// answers the user's name.
func (c *Catalog) UseReset(hash [32]byte, now time.Time, password string) (string, error) {
	out, err := c.apply(KindUseReset, UseResetCmd{Hash: hash[:], Now: now, Password: password})
	if err != nil {
		return "", err
	}
	name, _ := out.(string)
	return name, nil
}

// Reset reads the live-or-expired token whose hash is hash.
func (c *Catalog) Reset(hash [32]byte) (Reset, error) {
	var r Reset
	k, _ := sessionKey(hash[:])
	err := c.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bResets)
		var v []byte
		if b != nil {
			v = b.Get(k)
		}
		if v == nil {
			return fmt.Errorf("reset token: %w", ErrNotFound)
		}
		return decodeJSON(bResets, k, v, &r)
	})
	return r, err
}
