package vault

import (
	"net/http"
)

// portalPages registers the portal's pages and JSON routes beyond sign-in
// and All Computers: a computer's drill-down, browsing and restoring a
// version, the audit log, enrolment tokens, technical contacts, users.
// Each route's capability is in routeCaps; the operations check scope.
func (v *Vault) portalPages(rt *router) {
	rt.handle("GET /audit", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		page, err := v.auditPage(r, p)
		if err != nil {
			return err
		}
		q := r.URL.Query()
		return render(w, "audit.html", v.pageData(r, p, "Audit log", map[string]any{"Page": page,
			"Company": q.Get("company"), "Q": q.Get("q")}))
	})
	rt.handle("GET "+PortalAPI+"audit", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		return v.serveAudit(w, r, p)
	})
	rt.handle("POST "+PortalAPI+"computers/{computer}/contact", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req ContactRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		cp, err := v.SetContact(r.Context(), p, r.PathValue("computer"), req.Contact)
		if err != nil {
			return err
		}
		writeJSON(w, map[string]string{"computer": cp.ID, "contact": cp.Contact})
		return nil
	})
}

// pageData is what every signed-in page gets: its title, the principal
// (for the navigation), the session's CSRF token, and the page's own.
func (v *Vault) pageData(r *http.Request, p *Principal, title string, m map[string]any) map[string]any {
	if m == nil {
		m = map[string]any{}
	}
	m["Title"], m["P"], m["CSRF"] = title, p, csrfToken(sessionOf(r).id)
	m["Operator"] = p.Kind == Operator
	return m
}
