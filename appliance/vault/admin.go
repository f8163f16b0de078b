package vault

import (
	"crypto/rand"
	"errors"
	"net/http"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/bandwidth"
	"vaultnode/internal/wire"
)

// Admin API paths (Unix socket DATA/admin.sock, used by vaultctl).
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

// TokenResponse carries a new token.
type TokenResponse struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
}

// ComputerInfo is a computer with its configurations.
type ComputerInfo struct {
	catalog.Computer
	Configs []wire.Config `json:"configs"`
}

// authenticateAdmin is the admin socket's authenticator: whoever can open
// the socket (mode 0600, in the data directory) is the operator.
func authenticateAdmin(*http.Request) (*Principal, error) { return operator, nil }

func (v *Vault) adminHandler() http.Handler { return v.adminRoutes(authenticateAdmin).handler() }

func (v *Vault) adminRoutes(authn authenticator) *router {
	rt := v.newRouter(authn)
	h := func(fn func(w http.ResponseWriter, r *http.Request) error) handlerFunc {
		return func(w http.ResponseWriter, r *http.Request, _ *Principal) error { return fn(w, r) }
	}
	rt.handle("POST "+AdminCompanies, h(func(w http.ResponseWriter, r *http.Request) error {
		var req struct {
			Name string `json:"name"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if err := v.NewCompany(req.Name); err != nil {
			return catalogErr(err)
		}
		writeJSON(w, map[string]string{"name": req.Name})
		return nil
	}))
	rt.handle("GET "+AdminCompanies, h(func(w http.ResponseWriter, r *http.Request) error {
		cs, err := v.Catalog.Companies()
		if err != nil {
			return err
		}
		names := []string{}
		for _, c := range cs {
			names = append(names, c.Name)
		}
		writeJSON(w, names)
		return nil
	}))
	rt.handle("POST "+AdminTokens, h(func(w http.ResponseWriter, r *http.Request) error {
		var req TokenRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if req.TTL <= 0 {
			req.TTL = 24 * time.Hour
		}
		var t wire.Token
		rand.Read(t.Secret[:])
		t.CAPin = wire.Pin(v.CA.CA)
		exp := v.clk.Now().Add(req.TTL)
		if err := v.Catalog.AddToken(t.Secret[:], catalog.Token{Company: req.Company, Expires: exp}); err != nil {
			return catalogErr(err)
		}
		writeJSON(w, TokenResponse{Token: t.String(), Expires: exp})
		return nil
	}))
	rt.handle("GET "+AdminComputers, h(func(w http.ResponseWriter, r *http.Request) error {
		cps, err := v.Catalog.Computers(r.URL.Query().Get("company"))
		if err != nil {
			return err
		}
		out := []ComputerInfo{}
		for _, cp := range cps {
			cfgs, err := v.Catalog.Configs(cp.ID)
			if err != nil {
				return err
			}
			out = append(out, ComputerInfo{Computer: cp, Configs: cfgs})
		}
		writeJSON(w, out)
		return nil
	}))
	rt.handle("GET "+AdminVersions, h(func(w http.ResponseWriter, r *http.Request) error {
		cp, err := v.Catalog.FindComputer(r.URL.Query().Get("computer"))
		if err != nil {
			return catalogErr(err)
		}
		ms, err := v.Catalog.Versions(cp.ID, r.URL.Query().Get("config"))
		if err != nil {
			return err
		}
		if ms == nil {
			ms = []wire.Manifest{}
		}
		writeJSON(w, ms)
		return nil
	}))
	rt.handle("POST "+AdminRevoke, h(func(w http.ResponseWriter, r *http.Request) error {
		var req struct {
			Computer string `json:"computer"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		cp, err := v.Catalog.FindComputer(req.Computer)
		if err != nil {
			return catalogErr(err)
		}
		if err := v.Catalog.Revoke(cp.ID, v.clk.Now()); err != nil {
			return err
		}
		writeJSON(w, cp)
		return nil
	}))
	rt.handle("GET "+AdminStatus, h(func(w http.ResponseWriter, r *http.Request) error {
		st, err := v.Status(r.URL.Query().Get("company"))
		if err != nil {
			return err
		}
		writeJSON(w, st)
		return nil
	}))
	rt.handle("POST "+AdminRunNow, h(func(w http.ResponseWriter, r *http.Request) error {
		var req RunNowRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		cp, err := v.Catalog.FindComputer(req.Computer)
		if err != nil {
			return catalogErr(err)
		}
		if _, err := v.Catalog.Config(cp.ID, req.Config); err != nil {
			return catalogErr(err)
		}
		cp, err = v.Catalog.UpdateComputer(cp.ID, func(c *catalog.Computer) error {
			if c.Settings.RunNow == nil {
				c.Settings.RunNow = map[string]int64{}
			}
			c.Settings.RunNow[req.Config]++
			return nil
		})
		if err != nil {
			return err
		}
		writeJSON(w, cp.Settings)
		return nil
	}))
	rt.handle("POST "+AdminSettings, h(func(w http.ResponseWriter, r *http.Request) error {
		var req SettingsRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if req.Bandwidth != "" {
			if _, err := bandwidth.ParseProfile(req.Bandwidth); err != nil {
				return fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
			}
		}
		cp, err := v.Catalog.FindComputer(req.Computer)
		if err != nil {
			return catalogErr(err)
		}
		cp, err = v.Catalog.UpdateComputer(cp.ID, func(c *catalog.Computer) error {
			c.Settings.Bandwidth = req.Bandwidth
			return nil
		})
		if err != nil {
			return err
		}
		writeJSON(w, cp.Settings)
		return nil
	}))
	rt.handle("POST "+AdminVerify, h(func(w http.ResponseWriter, r *http.Request) error {
		rep, err := v.Verify(r.Context())
		if err != nil {
			return err
		}
		writeJSON(w, rep)
		return nil
	}))
	return rt
}

func catalogErr(err error) error {
	switch {
	case errors.Is(err, catalog.ErrNotFound):
		return fail(http.StatusNotFound, wire.CodeNotFound, "%v", err)
	case errors.Is(err, catalog.ErrExists), errors.Is(err, catalog.ErrInvalid):
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
	}
	return err
}
