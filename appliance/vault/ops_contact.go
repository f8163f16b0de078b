package vault

import (
	"context"

	"vaultnode/appliance/catalog"
)

// ContactRequest sets a computer's primary technical contact: the e-mail
// address the vault's messages about the computer go to ("" clears it).
type ContactRequest struct {
	Computer string `json:"computer,omitempty"` // the admin socket's; the portal names it in the path
	Contact  string `json:"contact"`
}

// SetContact sets the primary technical contact of the computer ref.
func (v *Vault) SetContact(ctx context.Context, p *Principal, ref, contact string) (catalog.Computer, error) {
	cp, err := v.computerFor(p, CapManageComputers, ref)
	if err != nil {
		return cp, err
	}
	noteTarget(ctx, cp.Company, cp.ID)
	noteDetail(ctx, "contact "+contact)
	if err := v.Catalog.SetContact(cp.ID, contact); err != nil {
		return cp, catalogErr(err)
	}
	cp.Contact = contact
	return cp, nil
}
