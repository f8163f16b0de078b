package vault

import (
	"net/http"
	"time"
)

// The admin socket (DATA/admin.sock, used by vaultctl): routes and handlers
// that decode, call an operation as the operator, and encode.

// Admin API paths.
const (
	AdminCompanies = "/admin/companies"
	AdminTokens    = "/admin/tokens"
	AdminComputers = "/admin/computers"
	AdminVersions  = "/admin/versions"
	AdminRevoke    = "/admin/revoke"
	AdminVerify    = "/admin/verify"
	AdminStatus    = "/admin/status"
	AdminRunNow    = "/admin/run-now"
	AdminSettings  = "/admin/settings"
)

// RunNowRequest asks a computer to synchronize a configuration once now.
type RunNowRequest struct {
	Computer string `json:"computer"`
	Config   string `json:"config"`
}

// SettingsRequest sets a computer's bandwidth profile.
type SettingsRequest struct {
	Computer  string `json:"computer"`
	Bandwidth string `json:"bandwidth"`
}

// TokenRequest asks for an enrolment token.
type TokenRequest struct {
	Company string        `json:"company"`
	TTL     time.Duration `json:"ttl"`
}

// authenticateAdmin is the admin socket's authenticator: whoever can open
// the socket (mode 0600, in the data directory) is the operator.
func authenticateAdmin(*http.Request) (*Principal, error) { return operator, nil }

func (v *Vault) adminHandler() http.Handler { return v.adminRoutes(authenticateAdmin).handler() }

// adminRoutes registers the admin socket's routes; each route's capability
// is in routeCaps (authz.go).
func (v *Vault) adminRoutes(authn authenticator) *router {
	rt := v.newRouter(authn)
	rt.handle("POST "+AdminCompanies, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req struct {
			Name string `json:"name"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if err := v.CreateCompany(r.Context(), p, req.Name); err != nil {
			return err
		}
		writeJSON(w, map[string]string{"name": req.Name})
		return nil
	})
	rt.handle("GET "+AdminCompanies, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		names, err := v.Companies(r.Context(), p)
		if err != nil {
			return err
		}
		writeJSON(w, names)
		return nil
	})
	rt.handle("POST "+AdminTokens, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req TokenRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.CreateToken(r.Context(), p, req.Company, req.TTL)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET "+AdminComputers, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.Computers(r.Context(), p, r.URL.Query().Get("company"))
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET "+AdminVersions, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		q := r.URL.Query()
		ms, err := v.Versions(r.Context(), p, q.Get("computer"), q.Get("config"))
		if err != nil {
			return err
		}
		writeJSON(w, ms)
		return nil
	})
	rt.handle("POST "+AdminRevoke, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req struct {
			Computer string `json:"computer"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		cp, err := v.Revoke(r.Context(), p, req.Computer)
		if err != nil {
			return err
		}
		writeJSON(w, cp)
		return nil
	})
	rt.handle("GET "+AdminStatus, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		st, err := v.StatusOf(r.Context(), p, r.URL.Query().Get("company"))
		if err != nil {
			return err
		}
		writeJSON(w, st)
		return nil
	})
	rt.handle("POST "+AdminRunNow, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req RunNowRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.RunNow(r.Context(), p, req.Computer, req.Config)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+AdminSettings, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req SettingsRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.SetBandwidth(r.Context(), p, req.Computer, req.Bandwidth)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+AdminVerify, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		rep, err := v.VerifyStore(r.Context(), p)
		if err != nil {
			return err
		}
		writeJSON(w, rep)
		return nil
	})
	return rt
}
