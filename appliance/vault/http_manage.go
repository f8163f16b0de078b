package vault

import (
	"net/http"
	"strconv"
)

// manageRoutes registers the admin socket's routes of technical contacts
// and the audit log (vaultctl contact, vaultctl audit).
func (v *Vault) manageRoutes(rt *router) {
	rt.handle("POST "+AdminContact, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req ContactRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		cp, err := v.SetContact(r.Context(), p, req.Computer, req.Contact)
		if err != nil {
			return err
		}
		writeJSON(w, cp)
		return nil
	})
	rt.handle("GET "+AdminAudit, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		return v.serveAudit(w, r, p)
	})
}

func (v *Vault) serveAudit(w http.ResponseWriter, r *http.Request, p *Principal) error {
	page, err := v.auditPage(r, p)
	if err != nil {
		return err
	}
	writeJSON(w, page)
	return nil
}

// auditPage reads the audit query of r: company, before, limit, q.
func (v *Vault) auditPage(r *http.Request, p *Principal) (AuditPage, error) {
	q := r.URL.Query()
	before, _ := strconv.ParseUint(q.Get("before"), 10, 64)
	limit, _ := strconv.Atoi(q.Get("limit"))
	return v.AuditLog(r.Context(), p, q.Get("company"), before, limit, q.Get("q"))
}
