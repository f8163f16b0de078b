package vault

import (
	"net/http"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// The operations layer (ops_*.go). Every rule of the vault lives here, not
// in a transport: who may act on which company and computer, validation of
// configurations, bandwidth profiles and schedules, sessions, commits and
// their limits. An operation takes a context and the principal that the
// authorization middleware found, checks the principal's capability and
// scope over the object it touches, and returns values or errors, never
// HTTP. The agent API, the admin socket and, later, the portal call the
// same operations.
//
// Scope errors say "not found" rather than "forbidden" where the object is
// named by the caller, so a principal learns nothing of computers outside
// its scope.

// forbid refuses a principal that lacks a capability.
func forbid(p *Principal, need Capability) error {
	return fail(http.StatusForbidden, wire.CodeForbidden, "%s lacks the %q capability", p, need)
}

// self is the computer an agent acts for, if p holds need; only an agent
// has one.
func self(p *Principal, need Capability) (*caller, error) {
	if !p.Has(need) {
		return nil, forbid(p, need)
	}
	if p.agent == nil {
		return nil, fail(http.StatusForbidden, wire.CodeForbidden, "%s is not a computer: only an agent does this, for its own computer", p)
	}
	return p.agent, nil
}

// computerFor finds the computer ref (an id or a unique name) that p acts
// on with capability need.
func (v *Vault) computerFor(p *Principal, need Capability, ref string) (catalog.Computer, error) {
	if !p.Has(need) {
		return catalog.Computer{}, forbid(p, need)
	}
	if p.agent != nil && (ref == p.agent.ID || ref == "") {
		return p.agent.Computer, nil
	}
	cp, err := v.Catalog.FindComputer(ref)
	if err != nil {
		return cp, catalogErr(err)
	}
	if !p.Covers(cp.Company, cp.ID) {
		return catalog.Computer{}, fail(http.StatusNotFound, wire.CodeNotFound, "computer %q: %v", ref, catalog.ErrNotFound)
	}
	return cp, nil
}

// companyFor is the company p acts on with capability need: company, or,
// when empty, every company for an operator and its own for anyone else.
// whole asks for the whole company (a token, say), which a principal limited
// to some computers does not hold; a listing filters by p.Covers instead.
func companyFor(p *Principal, need Capability, company string, whole bool) (string, error) {
	if !p.Has(need) {
		return "", forbid(p, need)
	}
	if p.Kind == Operator {
		return company, nil
	}
	if company == "" {
		company = p.Company
	}
	if company != p.Company || (whole && p.Computers != nil) {
		return "", fail(http.StatusNotFound, wire.CodeNotFound, "company %q: %v", company, catalog.ErrNotFound)
	}
	return company, nil
}
