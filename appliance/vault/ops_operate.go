package vault

import (
	"context"
	"crypto/rand"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// Running the appliance: companies, enrolment tokens, status, verify.

// CreateCompany creates a company with a fresh secret.
func (v *Vault) CreateCompany(ctx context.Context, p *Principal, name string) error {
	if !p.Has(CapOperate) {
		return forbid(p, CapOperate)
	}
	noteTarget(ctx, name, "")
	return catalogErr(v.NewCompany(name))
}

// Companies lists the names of the companies p may see.
func (v *Vault) Companies(ctx context.Context, p *Principal) ([]string, error) {
	if !p.Has(CapOperate) {
		return nil, forbid(p, CapOperate)
	}
	cs, err := v.Catalog.Companies()
	if err != nil {
		return nil, err
	}
	names := []string{}
	for _, c := range cs {
		names = append(names, c.Name)
	}
	return names, nil
}

// DefaultTokenTTL is how long an enrolment token lasts unless asked.
const DefaultTokenTTL = 24 * time.Hour

// TokenResponse carries a new token.
type TokenResponse struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

// CreateToken makes a one-use enrolment token for company, valid for ttl
// (DefaultTokenTTL if not positive).
func (v *Vault) CreateToken(ctx context.Context, p *Principal, company string, ttl time.Duration) (TokenResponse, error) {
	company, err := companyFor(p, CapManageComputers, company, true)
	if err != nil {
		return TokenResponse{}, err
	}
	noteTarget(ctx, company, "")
	if ttl <= 0 {
		ttl = DefaultTokenTTL
	}
	var t wire.Token
	rand.Read(t.Secret[:])
	t.CAPin = wire.Pin(v.CA.CA)
	exp := v.clk.Now().Add(ttl)
	if err := v.Catalog.AddToken(t.Secret[:], catalog.Token{Company: company, Expires: exp, Created: v.clk.Now(), By: p.String()}); err != nil {
		return TokenResponse{}, catalogErr(err)
	}
	return TokenResponse{Token: t.String(), Expires: exp}, nil
}

// StatusOf computes the state of every configuration p may see, of company
// (every company: "").
func (v *Vault) StatusOf(ctx context.Context, p *Principal, company string) ([]ConfigStatus, error) {
	out := []ConfigStatus{}
	err := v.StatusEachOf(ctx, p, company, func(rows []ConfigStatus) error {
		out = append(out, rows...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// StatusEachOf is StatusOf handing the rows to fn a batch at a time, as
// they are computed (fn must not keep the slice). fn is called at least
// once when p may see company.
func (v *Vault) StatusEachOf(ctx context.Context, p *Principal, company string, fn func(rows []ConfigStatus) error) error {
	company, err := companyFor(p, CapView, company, false)
	if err != nil {
		return err
	}
	called := false
	err = v.statusEach(company, func(rows []ConfigStatus) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		out := rows[:0]
		for _, st := range rows {
			if p.Covers(st.Company, st.Computer) {
				out = append(out, st)
			}
		}
		called = true
		return fn(out)
	})
	if err == nil && !called {
		err = fn(nil)
	}
	return err
}

// VerifyStore checks every pack entry and every version (verify.go).
func (v *Vault) VerifyStore(ctx context.Context, p *Principal) (*Report, error) {
	if !p.Has(CapOperate) {
		return nil, forbid(p, CapOperate)
	}
	return v.Verify(ctx)
}
