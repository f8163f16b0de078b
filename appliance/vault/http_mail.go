package vault

import (
	"net/http"

	"vaultnode/appliance/mail"
)

// Admin mail paths (vaultctl mail; docs/api.md, "E-mail").
const (
	AdminMail     = "/admin/mail"
	AdminMailTest = "/admin/mail/test"
)

// mailRoutes registers the admin socket's mail routes.
func (v *Vault) mailRoutes(rt *router) {
	rt.handle("GET "+AdminMail, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.MailInfo(r.Context(), p)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+AdminMail, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req mail.Settings
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.SetMail(r.Context(), p, req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+AdminMailTest, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req TestMailRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.TestMail(r.Context(), p, req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
}

// ownMailRoute registers the portal's route a user sets their own mail
// with.
func (v *Vault) ownMailRoute(rt *router) {
	rt.handle("POST "+PortalAPI+"mail", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req MailPrefs
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.SetOwnMail(r.Context(), p, req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
}
