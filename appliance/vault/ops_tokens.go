package vault

import (
	"context"
	"errors"
	"net/http"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// Tokens lists the enrolment tokens of company that still enrol (unused,
// unexpired): when made, by whom, until when, never the token itself.
// p needs manage_computers over the whole company; an operator sees every
// company's with company "".
func (v *Vault) Tokens(ctx context.Context, p *Principal, company string) ([]catalog.TokenInfo, error) {
	company, err := companyFor(p, CapManageComputers, company, true)
	if err != nil {
		return nil, err
	}
	return v.Catalog.Tokens(company, v.clk.Now())
}

// RevokeToken removes an unused enrolment token (its id as Tokens lists
// it), so it enrols no computer. Outside p's company, used or expired: 404.
func (v *Vault) RevokeToken(ctx context.Context, p *Principal, id string) error {
	if _, err := companyFor(p, CapManageComputers, "", p.Kind == User); err != nil {
		return err
	}
	t, err := v.Catalog.Token(id)
	if err == nil && (t.Used || v.clk.Now().After(t.Expires)) {
		err = catalog.ErrNotFound
	}
	if err == nil {
		_, err = companyFor(p, CapManageComputers, t.Company, true)
	}
	if err != nil {
		return fail(http.StatusNotFound, wire.CodeNotFound, "enrolment token %.12s...: not found, used or expired: nothing to revoke", id)
	}
	noteTarget(ctx, t.Company, "")
	noteDetail(ctx, "enrolment token made "+t.Created.UTC().Format("2006-01-02 15:04:05")+" by "+t.By+" revoked")
	if err := v.Catalog.RevokeToken(id); errors.Is(err, catalog.ErrNotFound) || errors.Is(err, catalog.ErrConflict) {
		return fail(http.StatusNotFound, wire.CodeNotFound, "enrolment token %.12s...: used or revoked meanwhile", id)
	} else if err != nil {
		return err
	}
	return nil
}
