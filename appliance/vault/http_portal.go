package vault

import (
	"context"
	"crypto/subtle"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"mime"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"
)

// The portal (issue 12): server-rendered pages and their JSON API on their
// own HTTPS listener. Like the other listeners it registers routes behind
// the one authorization middleware and calls the same operations; what is
// its own is the authenticator (a session cookie and, on every change, the
// session's CSRF token) and answers in HTML for the pages.
//
// CSRF: two layers. net/http's CrossOriginProtection refuses a non-GET
// request a browser marks as cross-site (Sec-Fetch-Site, else Origin vs
// Host), and every non-GET request of a signed-in session must also carry
// the session's token (X-CSRF-Token header or csrf_token form field), which
// a page of another origin cannot read. The cookie is SameSite=Strict too.

// MaxPageRows bounds the rows All Computers shows at once (the page as
// served, and after each filter or sort in the browser): a browser lays out
// 500 rows quickly, not 30,000.
const MaxPageRows = 500

// stateRank orders All Computers' rows: those needing attention first.
var stateRank = map[string]int{StateError: 0, StateOffline: 1, StateBehind: 2, StateInitial: 3, StateTesting: 4, StateProtected: 5}

// PortalAPI prefixes the portal's JSON API (docs/api.md).
const PortalAPI = "/api/v1/"

// SessionCookie names the portal's session cookie.
const SessionCookie = "vaultnode_session"

//go:embed portal/templates/*.html portal/static/*
var portalFS embed.FS

var portalTemplates = template.Must(template.New("").Funcs(template.FuncMap{
	"has":    func(p *Principal, c string) bool { return p.Has(Capability(c)) },
	"lagMiB": lagMiB,
}).ParseFS(portalFS, "portal/templates/*.html"))

// portalContext is what the authenticator found: the session id and its
// user's principal.
type portalSession struct {
	id string
	p  *Principal
}

type portalKey struct{}

// authenticatePortal finds the session of the cookie and, on any method
// but GET and HEAD, checks the session's CSRF token.
func (v *Vault) authenticatePortal(r *http.Request) (*Principal, error) {
	c, err := r.Cookie(SessionCookie)
	id := ""
	if err == nil {
		id = c.Value
	}
	u, _, err := v.sessionUser(id)
	if err != nil {
		return nil, err
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// The token before any body is read: a form is parsed only when
		// it is URL-encoded and at most maxFormBody (multipart never:
		// the pages send none), so a post without the token costs the
		// vault no more than that.
		tok := r.Header.Get("X-CSRF-Token")
		if tok == "" {
			tok = formToken(r)
		}
		if subtle.ConstantTimeCompare([]byte(tok), []byte(csrfToken(id))) != 1 {
			return nil, fail(http.StatusForbidden, CodeCSRF, "the request lacks this session's CSRF token: reload the page and try again")
		}
	}
	if u.MustChange && !mustChangeRoutes[r.Pattern] {
		return nil, fail(http.StatusForbidden, CodeMustChange, "user %s signed in with a one-time password: choose your own first (the Account page, or POST %spassword)", u.Name, PortalAPI)
	}
	p := principalOf(u)
	if ps, ok := r.Context().Value(portalKey{}).(*portalSession); ok {
		ps.id, ps.p = id, p
	}
	return p, nil
}

// maxFormBody bounds a page's form post.
const maxFormBody = 64 << 10

// formToken reads the csrf_token field of a URL-encoded form post of at
// most maxFormBody bytes; anything else has none.
func formToken(r *http.Request) string {
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct != "application/x-www-form-urlencoded" {
		return ""
	}
	r.Body = http.MaxBytesReader(nil, r.Body, maxFormBody)
	if err := r.ParseForm(); err != nil {
		return ""
	}
	return r.PostForm.Get("csrf_token")
}

// mustChangeRoutes are what a user signed in with a one-time password may
// do: change it, read who they are, sign out.
var mustChangeRoutes = map[string]bool{
	"GET /account": true, "POST /account": true, "POST /logout": true,
	"POST " + PortalAPI + "password": true, "GET " + PortalAPI + "me": true, "POST " + PortalAPI + "logout": true,
}

func sessionOf(r *http.Request) *portalSession {
	ps, _ := r.Context().Value(portalKey{}).(*portalSession)
	return ps
}

// clientAddr is the client's IP address (no port): the unit of the sign-in
// rate limit.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func setSessionCookie(w http.ResponseWriter, id string, expires time.Time) {
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: id, Path: "/", Expires: expires,
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
}

func clearSessionCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
}

// portalHandler serves the portal: request ids, cross-origin protection,
// security headers, then the routes.
func (v *Vault) portalHandler() http.Handler {
	rt := v.portalRoutes(v.authenticatePortal)
	cop := http.NewCrossOriginProtection()
	inner := cop.Handler(rt.mux)
	return withRequestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		h.Set("Strict-Transport-Security", "max-age=31536000")
		r = r.WithContext(context.WithValue(r.Context(), portalKey{}, &portalSession{}))
		inner.ServeHTTP(w, r)
	}))
}

// portalErr answers a page's refusal: a signed-out browser goes to the
// sign-in page; anything else is a small error page. The JSON API answers
// as every other listener does.
func (v *Vault) portalErr(w http.ResponseWriter, r *http.Request, err error) {
	if strings.HasPrefix(r.URL.Path, PortalAPI) {
		v.writeErr(w, r, err)
		return
	}
	var ae *apiError
	if errors.As(err, &ae) && ae.code == CodeSignedOut && r.Method == http.MethodGet {
		http.Redirect(w, r, "/login", http.StatusSeeOther)
		return
	}
	if ae != nil && ae.code == CodeMustChange && r.Method == http.MethodGet {
		http.Redirect(w, r, "/account", http.StatusSeeOther)
		return
	}
	status, msg := http.StatusInternalServerError, "internal error (request id "+info(r).id+"); the vault's log has the details"
	if ae != nil {
		status, msg = ae.status, ae.msg
	} else {
		v.writeErr(discard{w.Header()}, r, err) // logs it
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	portalTemplates.ExecuteTemplate(w, "error.html", map[string]any{"Status": status, "Message": msg, "Title": http.StatusText(status)})
}

// discard is a ResponseWriter that keeps nothing, for logging through
// writeErr.
type discard struct{ h http.Header }

func (d discard) Header() http.Header         { return d.h }
func (d discard) Write(b []byte) (int, error) { return len(b), nil }
func (d discard) WriteHeader(int)             {}

func render(w http.ResponseWriter, name string, data map[string]any) error {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	return portalTemplates.ExecuteTemplate(w, name, data)
}

// portalRoutes registers the portal's pages and JSON API; each route's
// capability is in routeCaps (authz.go).
func (v *Vault) portalRoutes(authn authenticator) *router {
	rt := v.newRouter(authn)
	rt.onErr = v.portalErr
	static, _ := fs.Sub(portalFS, "portal/static")
	files := http.FileServerFS(static)
	rt.handle("GET /{$}", func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		http.Redirect(w, r, "/computers", http.StatusSeeOther)
		return nil
	})
	rt.handle("GET /static/{file}", func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/" + r.PathValue("file")
		w.Header().Set("Cache-Control", "max-age=3600")
		files.ServeHTTP(w, r2)
		return nil
	})
	rt.handle("GET /login", func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		return render(w, "login.html", map[string]any{"Title": "Sign in"})
	})
	rt.handle("POST /login", func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		req := LoginRequest{User: r.PostFormValue("user"), Password: r.PostFormValue("password"), TOTP: r.PostFormValue("totp")}
		v.endOldSession(r)
		id, out, err := v.Login(r.Context(), clientAddr(r), req)
		var ae *apiError
		if errors.As(err, &ae) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			setRetryAfter(w, ae.retryAfter)
			w.WriteHeader(ae.status)
			return portalTemplates.ExecuteTemplate(w, "login.html", map[string]any{"Title": "Sign in", "Error": ae.msg,
				"User": req.User, "NeedTOTP": ae.code == CodeTOTPRequired})
		}
		if err != nil {
			return err
		}
		setSessionCookie(w, id, out.Expires)
		next := "/computers"
		if out.User.MustChange {
			next = "/account" // a one-time password can only be changed
		}
		http.Redirect(w, r, next, http.StatusSeeOther)
		return nil
	})
	rt.handle("POST /logout", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		if err := v.Logout(r.Context(), p, sessionOf(r).id, r.PostFormValue("everywhere") != ""); err != nil {
			return err
		}
		clearSessionCookie(w)
		http.Redirect(w, r, "/login", http.StatusSeeOther)
		return nil
	})
	rt.handle("GET /computers", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		rows, err := v.StatusOf(r.Context(), p, "")
		if err != nil {
			return err
		}
		u, err := v.Catalog.User(p.user)
		if err != nil {
			return catalogErr(err)
		}
		// Those needing attention first; the page carries at most
		// MaxPageRows, the script the rest from the JSON.
		total := len(rows)
		slices.SortStableFunc(rows, func(a, b ConfigStatus) int { return stateRank[a.State] - stateRank[b.State] })
		rows = rows[:min(total, MaxPageRows)]
		return render(w, "computers.html", map[string]any{"Title": "All Computers", "P": p, "Rows": rows, "MustChange": u.MustChange,
			"CSRF": csrfToken(sessionOf(r).id), "States": []string{StateTesting, StateInitial, StateProtected, StateBehind, StateError, StateOffline},
			"Operator": p.Kind == Operator, "Total": total, "Limit": MaxPageRows})
	})

	account := func(w http.ResponseWriter, r *http.Request, p *Principal, status int, msg, done string) error {
		u, err := v.Catalog.User(p.user)
		if err != nil {
			return catalogErr(err)
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(status)
		return portalTemplates.ExecuteTemplate(w, "account.html", map[string]any{"Title": "Your account", "P": p,
			"CSRF": csrfToken(sessionOf(r).id), "Error": msg, "Done": done, "MustChange": u.MustChange})
	}
	rt.handle("GET /account", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		return account(w, r, p, http.StatusOK, "", "")
	})
	rt.handle("POST /account", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		err := v.ChangeOwnPassword(r.Context(), p, sessionOf(r).id, clientAddr(r), r.PostFormValue("current"), r.PostFormValue("new"))
		var ae *apiError
		if errors.As(err, &ae) {
			return account(w, r, p, ae.status, ae.msg, "")
		}
		if err != nil {
			return err
		}
		return account(w, r, p, http.StatusOK, "", "Password changed; your other sessions are signed out.")
	})

	// The JSON API.
	rt.handle("POST "+PortalAPI+"login", func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		var req LoginRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		v.endOldSession(r)
		id, out, err := v.Login(r.Context(), clientAddr(r), req)
		if err != nil {
			return err
		}
		setSessionCookie(w, id, out.Expires)
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+PortalAPI+"logout", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req struct {
			Everywhere bool `json:"everywhere"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if err := v.Logout(r.Context(), p, sessionOf(r).id, req.Everywhere); err != nil {
			return err
		}
		clearSessionCookie(w)
		writeJSON(w, map[string]bool{"signed_out": true})
		return nil
	})
	rt.handle("GET "+PortalAPI+"me", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		u, err := v.Catalog.User(p.user)
		if err != nil {
			return catalogErr(err)
		}
		writeJSON(w, map[string]any{"user": userInfo(u), "csrf_token": csrfToken(sessionOf(r).id)})
		return nil
	})
	rt.handle("GET "+PortalAPI+"status", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		return v.writeStatusJSON(w, r, p, r.URL.Query().Get("company"))
	})
	rt.handle("POST "+PortalAPI+"password", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req struct {
			Current string `json:"current"`
			New     string `json:"new"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if err := v.ChangeOwnPassword(r.Context(), p, sessionOf(r).id, clientAddr(r), req.Current, req.New); err != nil {
			return err
		}
		writeJSON(w, map[string]bool{"changed": true})
		return nil
	})
	v.resetRoutes(rt)
	v.userRoutes(rt, PortalAPI+"users")
	v.portalPages(rt)
	v.portalAppliance(rt)
	v.portalCommandRoutes(rt)
	v.ownMailRoute(rt)
	return rt
}

// endOldSession ends the session a sign-in request arrives with, if any:
// a sign-in always makes a new id.
func (v *Vault) endOldSession(r *http.Request) {
	if c, err := r.Cookie(SessionCookie); err == nil && c.Value != "" && len(c.Value) <= 128 {
		v.Catalog.DeleteSession(sessionHash(c.Value))
	}
}

// userRoutes registers the user management routes under base, on the admin
// socket and the portal alike.
func (v *Vault) userRoutes(rt *router, base string) {
	rt.handle("GET "+base, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.Users(r.Context(), p)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+base, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req UserRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.AddUser(r.Context(), p, req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+base+"/{name}/caps", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req SetCapsRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.SetUserCaps(r.Context(), p, r.PathValue("name"), req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+base+"/{name}/password", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req PasswordRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.SetUserPassword(r.Context(), p, r.PathValue("name"), req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+base+"/{name}/totp", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req struct {
			Enable bool `json:"enable"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.SetUserTOTP(r.Context(), p, r.PathValue("name"), req.Enable)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+base+"/{name}/mail", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req MailPrefs
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.SetUserMail(r.Context(), p, r.PathValue("name"), req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("DELETE "+base+"/{name}", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		if err := v.DeleteUser(r.Context(), p, r.PathValue("name")); err != nil {
			return err
		}
		writeJSON(w, map[string]string{"deleted": r.PathValue("name")})
		return nil
	})
}
