package vault

import (
	"context"

	"vaultnode/appliance/catalog"
)

// restoreTargets lists the computers of company that p may restore onto:
// those it holds restore over, not revoked.
func (v *Vault) restoreTargets(ctx context.Context, p *Principal, company string) ([]catalog.Computer, error) {
	if !p.Has(CapRestore) {
		return nil, forbid(p, CapRestore)
	}
	cps, err := v.Catalog.Computers(company)
	if err != nil {
		return nil, err
	}
	out := []catalog.Computer{}
	for _, cp := range cps {
		if cp.Revoked == nil && cp.Company == company && p.Covers(cp.Company, cp.ID) {
			out = append(out, cp)
		}
	}
	return out, nil
}
