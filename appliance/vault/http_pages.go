package vault

import (
	"net"
	"net/http"
	"strconv"
	"time"

	"vaultnode/internal/wire"
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
	rt.handle("GET /computers/{computer}", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		d, err := v.ComputerDetail(r.Context(), p, r.PathValue("computer"))
		if err != nil {
			return err
		}
		return render(w, "computer.html", v.pageData(r, p, d.Name, map[string]any{"C": d}))
	})
	rt.handle("GET "+PortalAPI+"computers/{computer}", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		d, err := v.ComputerDetail(r.Context(), p, r.PathValue("computer"))
		if err != nil {
			return err
		}
		writeJSON(w, d)
		return nil
	})
	rt.handle("GET /computers/{computer}/restore", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		d, err := v.ComputerDetail(r.Context(), p, r.PathValue("computer"))
		if err != nil {
			return err
		}
		if _, err := v.computerFor(p, CapRestore, d.ID); err != nil {
			return err
		}
		targets, err := v.restoreTargets(r.Context(), p, d.Company)
		if err != nil {
			return err
		}
		return render(w, "restore.html", v.pageData(r, p, "Restore from "+d.Name, map[string]any{"C": d,
			"Config": r.URL.Query().Get("config"), "Targets": targets}))
	})
	rt.handle("GET "+PortalAPI+"computers/{computer}/configs/{config}/files", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		q := r.URL.Query()
		req := BrowseRequest{Computer: r.PathValue("computer"), Config: r.PathValue("config"), Dir: q.Get("dir"), Search: q.Get("q")}
		var err error
		if req.Point, err = pointOf(q.Get("version"), q.Get("at")); err != nil {
			return err
		}
		req.Offset, _ = strconv.Atoi(q.Get("offset"))
		req.Limit, _ = strconv.Atoi(q.Get("limit"))
		out, err := v.Browse(r.Context(), p, req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET /tokens", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		if _, err := companyFor(p, CapManageComputers, "", true); err != nil {
			return err
		}
		var companies []string
		if p.Kind == Operator { // every company is an operator's
			cs, err := v.Catalog.Companies()
			if err != nil {
				return err
			}
			for _, c := range cs {
				companies = append(companies, c.Name)
			}
		}
		tokens, err := v.Tokens(r.Context(), p, "")
		if err != nil {
			return err
		}
		return render(w, "tokens.html", v.pageData(r, p, "Enrol a computer", map[string]any{"Companies": companies, "Tokens": tokens}))
	})
	rt.handle("GET "+PortalAPI+"tokens", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.Tokens(r.Context(), p, r.URL.Query().Get("company"))
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("DELETE "+PortalAPI+"tokens/{id}", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		if err := v.RevokeToken(r.Context(), p, r.PathValue("id")); err != nil {
			return err
		}
		writeJSON(w, map[string]string{"revoked": r.PathValue("id")})
		return nil
	})
	rt.handle("POST "+PortalAPI+"tokens", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req struct {
			Company string `json:"company"`
			TTL     string `json:"ttl"` // a Go duration; empty: DefaultTokenTTL
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		var ttl time.Duration
		if req.TTL != "" {
			var err error
			if ttl, err = time.ParseDuration(req.TTL); err != nil || ttl <= 0 || ttl > MaxTokenTTL {
				return fail(http.StatusBadRequest, wire.CodeBadRequest, "ttl %q: give a duration up to %s, like 24h", req.TTL, MaxTokenTTL)
			}
		}
		out, err := v.CreateToken(r.Context(), p, req.Company, ttl)
		if err != nil {
			return err
		}
		writeJSON(w, map[string]any{"token": out.Token, "expires": out.Expires, "install": v.installCommand(r, out.Token)})
		return nil
	})
	rt.handle("GET /users", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		users, err := v.Users(r.Context(), p)
		if err != nil {
			return err
		}
		cps, err := v.Computers(r.Context(), p, "")
		if err != nil {
			return err
		}
		caps := userCaps
		if p.Kind == Operator {
			caps = operatorCaps
		}
		var grantable []Capability
		for _, c := range caps {
			if p.Has(c) {
				grantable = append(grantable, c)
			}
		}
		return render(w, "users.html", v.pageData(r, p, "Users", map[string]any{"Users": users, "Computers": cps, "Caps": grantable}))
	})
	rt.handle("POST "+PortalAPI+"restores", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req RestoreRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.Restore(r.Context(), p, req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
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

// MaxTokenTTL bounds the life of a token made on the enrolment page.
const MaxTokenTTL = 30 * 24 * time.Hour

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

// pointOf reads a version ("", latest, a number) or a moment (RFC 3339).
func pointOf(version, at string) (Point, error) {
	pt := Point{Version: version}
	if at != "" {
		t, err := time.Parse(time.RFC3339, at)
		if err != nil {
			return pt, fail(http.StatusBadRequest, wire.CodeBadRequest, "moment %q: give it as RFC 3339, like 2026-12-01T14:05:00Z", at)
		}
		pt.At = t
	}
	return pt, nil
}

// installCommand is what to paste on a new computer to enrol it with
// token: the agent API at the host the browser reached the portal by, on
// the agent API's port.
func (v *Vault) installCommand(r *http.Request, token string) string {
	host := r.Host
	if h, _, err := net.SplitHostPort(r.Host); err == nil {
		host = h
	}
	port := "7443"
	if _, p, err := net.SplitHostPort(v.agentAddr); err == nil {
		port = p
	}
	return "install -m 0755 vault-agent /usr/local/bin/vault-agent\n" +
		"vault-agent -state /var/lib/vault-agent enroll -vault " + net.JoinHostPort(host, port) + " -token " + token + " -name \"$(hostname)\"\n" +
		"install -m 0644 vault-agent.service /etc/systemd/system/ && systemctl daemon-reload && systemctl enable --now vault-agent"
}
