package catalog

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/bbolt"
)

// KindRevokeToken removes an enrolment token that has not been used, so it
// enrols no computer (docs/format.md, "Catalog commands").
const KindRevokeToken Kind = "revoke_token"

// RevokeTokenCmd is the payload of revoke_token.
type RevokeTokenCmd struct {
	Hash []byte `json:"hash"` // SHA-256 of the token's secret
}

func init() { appliers[KindRevokeToken] = typed(applyRevokeToken) }

// TokenInfo is an enrolment token as a list shows it: never its secret,
// only the SHA-256 of it (ID, hex), which no one can enrol with.
type TokenInfo struct {
	ID string `json:"id"`
	Token
}

// Tokens lists the tokens of company (every company: "") that still enrol
// at now (unused, unexpired), soonest to expire first.
func (c *Catalog) Tokens(company string, now time.Time) ([]TokenInfo, error) {
	out := []TokenInfo{}
	err := c.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bTokens).ForEach(func(k, v []byte) error {
			t, err := decodeToken(k, v)
			if err != nil {
				return err
			}
			if t.Used || now.After(t.Expires) || company != "" && t.Company != company {
				return nil
			}
			out = append(out, TokenInfo{ID: hex.EncodeToString(k), Token: t})
			return nil
		})
	})
	slices.SortFunc(out, func(a, b TokenInfo) int {
		if c := a.Expires.Compare(b.Expires); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, err
}

// Token returns the token whose ID (hex SHA-256 of its secret) is id.
func (c *Catalog) Token(id string) (TokenInfo, error) {
	hash, err := hex.DecodeString(id)
	if err != nil || len(hash) != 32 {
		return TokenInfo{}, fmt.Errorf("token %q: %w", id, ErrNotFound)
	}
	var t Token
	err = c.db.View(func(tx *bbolt.Tx) error {
		t, err = getToken(tx, hash)
		return err
	})
	if err != nil {
		return TokenInfo{}, fmt.Errorf("token %q: %w", id, err)
	}
	return TokenInfo{ID: id, Token: t}, nil
}

// RevokeToken removes the unused token id: it enrols no computer any more.
// A used token is history (which computer it enrolled) and stays:
// ErrConflict.
func (c *Catalog) RevokeToken(id string) error {
	hash, err := hex.DecodeString(id)
	if err != nil || len(hash) != 32 {
		return fmt.Errorf("token %q: %w", id, ErrNotFound)
	}
	_, err = c.apply(KindRevokeToken, RevokeTokenCmd{Hash: hash})
	return err
}

func applyRevokeToken(c *Catalog, tx *bbolt.Tx, p RevokeTokenCmd) (any, error) {
	if len(p.Hash) != 32 {
		return nil, fmt.Errorf("%w: token hash of %d bytes, want 32", ErrInvalid, len(p.Hash))
	}
	t, err := getToken(tx, p.Hash)
	if err != nil {
		return nil, fmt.Errorf("token: %w", err)
	}
	if t.Used {
		return nil, fmt.Errorf("token used by computer %s: %w (revoke the computer instead)", t.UsedBy, ErrConflict)
	}
	return nil, tx.Bucket(bTokens).Delete(p.Hash)
}
