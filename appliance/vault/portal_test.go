package vault

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/clock"
	"vaultnode/internal/wire"
)

// Cheap hashes in this package's tests: the parameters are the hash's own,
// so the rules under test are the same; TestPasswordHash checks the real
// parameters.
func init() { hashParams = argon2Params{time: 1, memKiB: 64, threads: 1} }

// portalVault is a served vault with a portal on loopback and a fake clock:
// companies acme and globex, computers pc-a1 and pc-a2 of acme and pc-g1 of
// globex, each with a configuration "home".
type portalVault struct {
	*servedVault
	clk  *clock.Fake
	base string
}

func servePortal(t *testing.T) *portalVault {
	t.Helper()
	clk := clock.NewFake(time.Now())
	sv := serveTestVaultWith(t, Options{Clock: clk, Portal: "127.0.0.1:0"}, "acme", "globex")
	for _, c := range [][2]string{{"acme", "pc-a1"}, {"acme", "pc-a2"}, {"globex", "pc-g1"}} {
		enrolDirect(t, sv.Vault, c[0], c[1])
	}
	return &portalVault{servedVault: sv, clk: clk, base: "https://" + sv.PortalAddr()}
}

// browser is an HTTPS client with its own cookie jar.
type browser struct {
	t    *testing.T
	c    *http.Client
	base string
	csrf string
}

func (pv *portalVault) browser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	t.Cleanup(c.CloseIdleConnections)
	return &browser{t: t, c: c, base: pv.base}
}

// browserFrom is a browser whose connections come from the loopback
// address from (any of 127.0.0.0/8).
func (pv *portalVault) browserFrom(t *testing.T, from string) *browser {
	b := pv.browser(t)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	b.c.Transport.(*http.Transport).DialContext = d.DialContext
	return b
}

// do sends a request with the browser's CSRF token (unless it is "") and
// answers the status, the wire error code (JSON answers) and the body.
func (b *browser) do(method, path string, body any, hdr ...string) (int, string, []byte) {
	b.t.Helper()
	var rd io.Reader
	if body != nil {
		j, _ := json.Marshal(body)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, b.base+path, rd)
	req.Header.Set("Content-Type", "application/json")
	if b.csrf != "" {
		req.Header.Set("X-CSRF-Token", b.csrf)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	var we wire.Error
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		json.Unmarshal(out, &we)
	}
	return res.StatusCode, we.Code, out
}

func (b *browser) login(user, pw string) (int, string) {
	b.t.Helper()
	st, code, body := b.do("POST", PortalAPI+"login", LoginRequest{User: user, Password: pw})
	if st == 200 {
		var lr LoginResponse
		json.Unmarshal(body, &lr)
		b.csrf = lr.CSRF
	}
	return st, code
}

func (b *browser) session() string {
	u, _ := url.Parse(b.base)
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == SessionCookie {
			return c.Value
		}
	}
	return ""
}

func (pv *portalVault) addUser(t *testing.T, req UserRequest) {
	t.Helper()
	req.Password = "password-of-" + req.Name
	if _, err := pv.AddUser(t.Context(), operator, req); err != nil {
		t.Fatal(err)
	}
}

// TestPasswordHash: argon2id in PHC form with the documented parameters, a
// fresh salt each time, and a bounded decoder.
func TestPasswordHash(t *testing.T) {
	saved := hashParams
	hashParams = argon2Params{time: 1, memKiB: 46 << 10, threads: 1}
	h1, err := HashPassword("correct horse")
	hashParams = saved
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h1, "$argon2id$v=19$m=47104,t=1,p=1$") {
		t.Fatalf("hash %q: want argon2id PHC with m=47104,t=1,p=1", h1)
	}
	h2, _ := HashPassword("correct horse")
	if h1 == h2 {
		t.Fatal("two hashes of one password are equal: no fresh salt")
	}
	for pw, want := range map[string]bool{"correct horse": true, "correct horsf": false, "": false} {
		if ok, err := checkPassword(h1, pw); err != nil || ok != want {
			t.Errorf("check %q: %v %v, want %v", pw, ok, err, want)
		}
	}
	for _, bad := range []string{"", "$argon2i$v=19$m=8,t=1,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
		"$argon2id$v=19$m=4294967295,t=1,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "$argon2id$v=19$m=64,t=99,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
		"$argon2id$v=19$m=64,t=1,p=1$!!$AAAAAAAAAAAAAAAAAAAAAA"} {
		if _, err := checkPassword(bad, "x"); err == nil {
			t.Errorf("checkPassword accepted the hash %q", bad)
		}
	}
}

// TestPortalAuthorizationMatrix sends every portal route from a principal
// holding each capability (company users of acme, unlimited and limited to
// pc-a1; operators; no session), on objects of their own company and of
// another, and on assigned and unassigned computers, each expecting its
// documented answer (docs/api.md).
func TestPortalAuthorizationMatrix(t *testing.T) {
	pv := servePortal(t)
	type who struct {
		name    string
		kind    string
		caps    []string
		limited bool
	}
	var whos []who
	for _, c := range userCaps {
		whos = append(whos, who{"all-" + strings.ReplaceAll(string(c), "_", "-"), catalog.UserCompany, []string{string(c)}, false})
		whos = append(whos, who{"one-" + strings.ReplaceAll(string(c), "_", "-"), catalog.UserCompany, []string{string(c)}, true})
	}
	whos = append(whos, who{"op-all", catalog.UserOperator, capNames(operatorCaps), false}, who{"op-view", catalog.UserOperator, nil, false})
	for _, w := range whos {
		req := UserRequest{Name: w.name, Kind: w.kind, Caps: w.caps, Limited: w.limited}
		if w.kind == catalog.UserCompany {
			req.Company = "acme"
			if w.limited {
				req.Computers = []string{"pc-a1"}
			}
		}
		pv.addUser(t, req)
	}
	// A version of pc-a1 to browse.
	a1, _ := pv.Catalog.FindComputer("pc-a1")
	now := pv.clk.Now()
	if err := pv.Catalog.AddVersion(wire.Manifest{Magic: wire.ManifestMagic, Company: "acme", Computer: a1.ID, Config: "home", Seq: 1, Started: now,
		Finished: now, Listing: listingOf(t, pv.Vault, 10, dir("home"), file("home/x", 1))}, [32]byte{1}); err != nil {
		t.Fatal(err)
	}
	// Targets of the user routes: one per company and an operator.
	pv.addUser(t, UserRequest{Name: "target-acme", Kind: catalog.UserCompany, Company: "acme"})
	pv.addUser(t, UserRequest{Name: "target-globex", Kind: catalog.UserCompany, Company: "globex"})
	pv.addUser(t, UserRequest{Name: "target-op", Kind: catalog.UserOperator})

	type want struct {
		status int
		code   string
	}
	// expect is the documented answer of route for w, on company's objects.
	expect := func(route string, w *who, company string) want {
		page := strings.HasPrefix(route, "GET /computers") || strings.HasPrefix(route, "GET /audit") || route == "GET /tokens" || route == "GET /users" || route == "GET /appliance"
		code := func(c string) string { // a page answers HTML, no code
			if page {
				return ""
			}
			return c
		}
		if w == nil {
			if page {
				return want{303, ""}
			}
			return want{401, CodeSignedOut}
		}
		op := w.kind == catalog.UserOperator
		has := func(c Capability) bool { return c == CapView || slices.Contains(w.caps, string(c)) }
		switch {
		case strings.Contains(route, "{computer}") && strings.HasPrefix(route, "GET "):
			// pc-a1 of acme (a limited user's) or pc-g1 of globex.
			switch {
			case strings.Contains(route, "restore") || strings.Contains(route, "/files"):
				if !has(CapRestore) {
					return want{403, code(wire.CodeForbidden)}
				}
			}
			if !op && company != "acme" {
				return want{404, code(wire.CodeNotFound)}
			}
			if strings.Contains(route, "/files") && company != "acme" {
				return want{404, code(wire.CodeNotFound)} // pc-g1 has no version
			}
			return want{200, ""}
		case strings.HasPrefix(route, "GET /computers"), route == "GET /api/v1/me", route == "POST /api/v1/mail":
			return want{200, ""}
		case route == "GET /api/v1/status?company=":
			if !op && company != "acme" {
				return want{404, wire.CodeNotFound}
			}
			return want{200, ""}
		case route == "GET /audit?company=" || route == "GET /api/v1/audit?company=":
			switch {
			case op:
				return want{200, ""}
			case !has(CapManageUsers), w.limited:
				return want{403, code(wire.CodeForbidden)}
			case company != "acme":
				return want{404, code(wire.CodeNotFound)}
			}
			return want{200, ""}
		case route == "GET /tokens" || route == "POST /api/v1/tokens" || route == "GET /api/v1/tokens?company=":
			switch {
			case !has(CapManageComputers):
				return want{403, code(wire.CodeForbidden)}
			case op:
				return want{200, ""}
			case w.limited || company != "acme": // a token is for the whole company
				return want{404, code(wire.CodeNotFound)}
			}
			return want{200, ""}
		case route == "POST /api/v1/restores":
			switch {
			case !has(CapRestore):
				return want{403, wire.CodeForbidden}
			case company != "acme": // pc-g1: another company's, or no version
				return want{404, wire.CodeNotFound}
			}
			return want{200, ""}
		case route == "GET /appliance", route == "GET /api/v1/pair":
			switch {
			case !has(CapOperate) || !op:
				return want{403, code(wire.CodeForbidden)}
			case route == "GET /api/v1/pair": // a single vault: no pair
				return want{404, wire.CodeNotFound}
			}
			return want{200, ""}
		case route == "GET /users":
			switch {
			case !has(CapManageUsers), !op && w.limited:
				return want{403, ""}
			}
			return want{200, ""}
		case route == "POST /api/v1/computers/{computer}/contact":
			switch {
			case !has(CapManageComputers):
				return want{403, wire.CodeForbidden}
			case !op && company != "acme":
				return want{404, wire.CodeNotFound}
			}
			return want{200, ""} // a limited user's is pc-a1, the computer named
		}
		// the user routes
		switch {
		case !has(CapManageUsers):
			return want{403, wire.CodeForbidden}
		case op:
			return want{200, ""}
		case w.limited:
			return want{403, wire.CodeForbidden}
		case route == "GET /api/v1/users":
			return want{200, ""}
		case company != "acme":
			return want{404, wire.CodeNotFound}
		case route == "POST /api/v1/users/{name}/caps" && !has(CapRestore):
			return want{403, wire.CodeForbidden} // the call gives restore: only one who holds it may
		}
		return want{200, ""}
	}
	// Company-specific routes name their object: targets of company.
	type call struct {
		route  string
		method string
		path   string
		body   func(company string) any
	}
	target := func(company string) string {
		if company == "" {
			return "target-op"
		}
		return "target-" + company
	}
	_ = target
	n := 0
	calls := []call{
		{"GET /computers", "GET", "/computers", nil},
		{"GET /api/v1/me", "GET", PortalAPI + "me", nil},
		{"GET /api/v1/status?company=", "GET", PortalAPI + "status?company=%s", nil},
		{"GET /api/v1/users", "GET", PortalAPI + "users", nil},
		{"GET /audit?company=", "GET", "/audit?company=%s", nil},
		{"GET /computers/{computer}", "GET", "/computers/%s", nil},
		{"GET /tokens", "GET", "/tokens", nil},
		{"POST /api/v1/tokens", "POST", PortalAPI + "tokens", func(co string) any { return map[string]string{"company": co, "ttl": "1h"} }},
		{"GET /api/v1/tokens?company=", "GET", PortalAPI + "tokens?company=%s", nil},
		{"GET /users", "GET", "/users", nil},
		{"GET /appliance", "GET", "/appliance", nil},
		{"GET /api/v1/pair", "GET", PortalAPI + "pair", nil},
		{"POST /api/v1/restores", "POST", PortalAPI + "restores", func(co string) any {
			return RestoreRequest{Computer: map[string]string{"acme": "pc-a1", "globex": "pc-g1"}[co], Config: "home", To: "/tmp/r"}
		}},
		{"GET /api/v1/computers/{computer}", "GET", PortalAPI + "computers/%s", nil},
		{"GET /computers/{computer}/restore", "GET", "/computers/%s/restore", nil},
		{"GET /api/v1/computers/{computer}/configs/{config}/files", "GET", PortalAPI + "computers/%s/configs/home/files?dir=/home", nil},
		{"GET /api/v1/audit?company=", "GET", PortalAPI + "audit?company=%s", nil},
		{"POST /api/v1/computers/{computer}/contact", "POST", PortalAPI + "computers/%s/contact", func(co string) any { return ContactRequest{Contact: "it@" + co + ".example"} }},
		{"POST /api/v1/users", "POST", PortalAPI + "users", func(co string) any {
			n++
			return UserRequest{Name: fmt.Sprintf("new-%d", n), Kind: catalog.UserCompany, Company: co, Caps: []string{"view"}}
		}},
		{"POST /api/v1/users/{name}/caps", "POST", PortalAPI + "users/target-%s/caps", func(string) any { return SetCapsRequest{Caps: []string{"view", "restore"}} }},
		{"POST /api/v1/users/{name}/password", "POST", PortalAPI + "users/target-%s/password", func(string) any { return PasswordRequest{} }},
		{"POST /api/v1/users/{name}/totp", "POST", PortalAPI + "users/target-%s/totp", func(string) any { return map[string]bool{"enable": false} }},
		{"POST /api/v1/users/{name}/mail", "POST", PortalAPI + "users/target-%s/mail", func(string) any { return MailPrefs{Email: "target@example.com"} }},
		{"POST /api/v1/mail", "POST", PortalAPI + "mail", func(string) any { return MailPrefs{Email: "me@example.com", Digest: true} }},
	}
	covered := map[string]bool{}
	for i := range append(whos, who{}) {
		var w *who
		b := pv.browser(t)
		label := "no session"
		if i < len(whos) {
			w = &whos[i]
			label = w.name
			if st, code := b.login(w.name, "password-of-"+w.name); st != 200 {
				t.Fatalf("%s cannot sign in: %d %s", w.name, st, code)
			}
		}
		for _, c := range calls {
			covered[strings.Split(strings.Split(c.route, "?")[0], " ")[0]+" "+routePath(c.route)] = true
			for _, co := range []string{"acme", "globex"} {
				path := c.path
				if strings.Contains(c.route, "{computer}") {
					path = fmt.Sprintf(path, map[string]string{"acme": "pc-a1", "globex": "pc-g1"}[co])
				} else if strings.Contains(path, "%s") {
					path = fmt.Sprintf(path, co)
				}
				var body any
				if c.body != nil {
					body = c.body(co)
				}
				st, code, out := b.do(c.method, path, body)
				if exp := expect(c.route, w, co); st != exp.status || code != exp.code {
					t.Errorf("%s: %s %s (company %s): got %d %q %.200s; want %d %q", label, c.method, path, co, st, code, out, exp.status, exp.code)
				}
				// Scope of what a 200 shows.
				if st == 200 && (c.route == "GET /api/v1/status?company=" || c.route == "GET /computers") {
					sees := func(id string) bool { return bytes.Contains(out, []byte(id)) }
					op := w.kind == catalog.UserOperator
					for _, id := range []string{"pc-a1", "pc-a2", "pc-g1"} {
						wantSee := op || id == "pc-a1" || (id == "pc-a2" && !w.limited)
						if c.route == "GET /api/v1/status?company=" && op {
							wantSee = strings.HasPrefix(id, "pc-"+co[:1])
						}
						if sees(id) != wantSee {
							t.Errorf("%s: %s %s: sees %s %v, want %v", label, c.method, path, id, sees(id), wantSee)
						}
					}
				}
				if st == 200 && c.route == "GET /api/v1/users" {
					sees := bytes.Contains(out, []byte(`"target-globex"`))
					if sees != (w.kind == catalog.UserOperator) {
						t.Errorf("%s: GET /api/v1/users lists another company's user: %v", label, sees)
					}
				}
				if c.route == "GET /computers" || c.route == "GET /api/v1/me" || c.route == "GET /api/v1/users" || c.route == "GET /tokens" || c.route == "GET /users" ||
					c.route == "GET /appliance" || c.route == "GET /api/v1/pair" {
					break // no company in the request
				}
			}
		}
		// The operator targets: only operators manage operators.
		if w != nil {
			st, code, _ := b.do("POST", PortalAPI+"users/target-op/caps", SetCapsRequest{Caps: []string{"view"}})
			exp := want{404, wire.CodeNotFound}
			switch {
			case !slices.Contains(w.caps, string(CapManageUsers)):
				exp = want{403, wire.CodeForbidden}
			case w.kind == catalog.UserOperator:
				exp = want{200, ""}
			case w.limited:
				exp = want{403, wire.CodeForbidden}
			}
			if st != exp.status || code != exp.code {
				t.Errorf("%s: caps of an operator: got %d %q, want %d %q", label, st, code, exp.status, exp.code)
			}
		}
	}
	// DELETE, sign-out and sign-in routes: their own tests end sessions; here
	// DELETE from the principals that matter.
	for _, tc := range []struct {
		user, target string
		status       int
	}{{"all-view", "target-acme", 403}, {"all-manage-users", "target-globex", 404}, {"one-manage-users", "target-acme", 403},
		// target-acme holds restore by now (op-all gave it above), which
		// all-manage-users does not: it may not manage a stronger user.
		{"all-manage-users", "target-op", 404}, {"all-manage-users", "target-acme", 403}, {"op-all", "target-globex", 200}} {
		b := pv.browser(t)
		b.login(tc.user, "password-of-"+tc.user)
		if st, code, _ := b.do("DELETE", PortalAPI+"users/"+tc.target, nil); st != tc.status {
			t.Errorf("%s: DELETE user %s: got %d %q, want %d", tc.user, tc.target, st, code, tc.status)
		}
	}
	// Every portal route that needs a capability is in this test or in
	// the session tests below.
	inSessionTests := []string{"POST /logout", "POST /api/v1/logout", "POST /api/v1/login", "DELETE /api/v1/users/{name}",
		"GET /account", "POST /account", "POST /api/v1/password",
		"DELETE /api/v1/tokens/{id}"} // TestEnrolmentTokensListAndRevoke
	for _, p := range pv.portalRoutes(pv.authenticatePortal).patterns {
		if routeCaps[p] == CapPublic || covered[p] || slices.Contains(inSessionTests, p) || slices.Contains(commandRoutesTested, p) {
			continue
		}
		t.Errorf("route %s is in no authorization test", p)
	}
}

func routePath(route string) string {
	_, p, _ := strings.Cut(strings.Split(route, "?")[0], " ")
	return p
}

// TestPortalSessions: session fixation, CSRF, lockout, expiry, sign-out
// and sign-out everywhere, the second factor and the rate limit.
func TestPortalSessions(t *testing.T) {
	pv := servePortal(t)
	pv.addUser(t, UserRequest{Name: "ann", Kind: catalog.UserCompany, Company: "acme", Caps: []string{"manage_users"}})

	t.Run("fixation", func(t *testing.T) {
		b := pv.browser(t)
		u, _ := url.Parse(pv.base)
		b.c.Jar.SetCookies(u, []*http.Cookie{{Name: SessionCookie, Value: "chosen-by-the-attacker", Path: "/"}})
		if st, code := b.login("ann", "password-of-ann"); st != 200 {
			t.Fatalf("sign in: %d %s", st, code)
		}
		first := b.session()
		if first == "chosen-by-the-attacker" || len(first) < 40 {
			t.Fatalf("session id after sign-in is %q: the client chose it", first)
		}
		// A second sign-in with a valid session makes a new id and ends
		// the old one.
		if st, _ := b.login("ann", "password-of-ann"); st != 200 {
			t.Fatal("second sign-in refused")
		}
		if b.session() == first {
			t.Fatal("a sign-in kept the session id the request came with")
		}
		old := pv.browser(t)
		old.c.Jar.SetCookies(u, []*http.Cookie{{Name: SessionCookie, Value: first, Path: "/"}})
		if st, code, _ := old.do("GET", PortalAPI+"me", nil); st != 401 || code != CodeSignedOut {
			t.Errorf("the session before sign-in still works: %d %s", st, code)
		}
	})

	t.Run("csrf", func(t *testing.T) {
		b := pv.browser(t)
		b.login("ann", "password-of-ann")
		tok := b.csrf
		add := func(name string) UserRequest {
			return UserRequest{Name: name, Company: "acme", Caps: []string{"view"}}
		}
		b.csrf = ""
		if st, code, _ := b.do("POST", PortalAPI+"users", add("c1")); st != 403 || code != CodeCSRF {
			t.Errorf("change without the CSRF token: %d %s, want 403 csrf", st, code)
		}
		b.csrf = "forged"
		if st, code, _ := b.do("POST", PortalAPI+"users", add("c2")); st != 403 || code != CodeCSRF {
			t.Errorf("change with a wrong CSRF token: %d %s, want 403 csrf", st, code)
		}
		b.csrf = tok
		if st, _, _ := b.do("POST", PortalAPI+"users", add("c3"), "Sec-Fetch-Site", "cross-site"); st != 403 {
			t.Errorf("a cross-site change with the token: %d, want 403 (CrossOriginProtection)", st)
		}
		if st, _, _ := b.do("POST", PortalAPI+"login", LoginRequest{User: "ann", Password: "password-of-ann"}, "Origin", "https://evil.example"); st != 403 {
			t.Errorf("a cross-origin sign-in: %d, want 403", st)
		}
		if st, code, body := b.do("POST", PortalAPI+"users", add("c4")); st != 200 {
			t.Errorf("change with the token: %d %s %s", st, code, body)
		}
		for _, n := range []string{"c1", "c2", "c3"} {
			if _, err := pv.Catalog.User(n); err == nil {
				t.Errorf("user %s was made by a refused request", n)
			}
		}
		// The sign-out form needs the token too.
		req, _ := http.NewRequest("POST", pv.base+"/logout", strings.NewReader(""))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		res, err := b.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 403 {
			t.Errorf("sign-out form without the token: %d, want 403", res.StatusCode)
		}
		form := url.Values{"csrf_token": {tok}}
		res, err = b.c.PostForm(pv.base+"/logout", form)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 303 || res.Header.Get("Location") != "/login" {
			t.Errorf("sign-out form: %d to %q, want 303 to /login", res.StatusCode, res.Header.Get("Location"))
		}
		if st, _, _ := b.do("GET", PortalAPI+"me", nil); st != 401 {
			t.Errorf("after sign-out: %d, want 401", st)
		}
	})

	t.Run("lockout", func(t *testing.T) {
		pv.addUser(t, UserRequest{Name: "lou", Company: "acme"})
		b := pv.browser(t)
		var lockedMsg string
		for _, name := range []string{"lou", "no-such-user"} {
			for i := 0; i < MaxLoginFailures; i++ {
				if st, code := b.login(name, "wrong password"); st != 401 || code != CodeBadCredentials {
					t.Fatalf("%s failure %d: %d %s, want 401 bad_credentials", name, i+1, st, code)
				}
			}
			// A name that exists and one that does not are locked and
			// answered alike: "locked" tells nothing about the name.
			st, code, body := b.do("POST", PortalAPI+"login", LoginRequest{User: name, Password: "password-of-lou"})
			if st != 403 || code != CodeLocked {
				t.Fatalf("%s after %d failures: %d %s, want 403 locked", name, MaxLoginFailures, st, code)
			}
			var we wire.Error
			json.Unmarshal(body, &we)
			if lockedMsg != "" && we.Message != lockedMsg {
				t.Errorf("locked answers differ for a real and an unknown name:\n%s\n%s", lockedMsg, we.Message)
			}
			lockedMsg = we.Message
		}
		// The lock is of (name, address): lou signs in from another
		// address at once.
		if st, code := pv.browserFrom(t, "127.0.0.2").login("lou", "password-of-lou"); st != 200 {
			t.Fatalf("lou from another address while locked at 127.0.0.1: %d %s, want 200", st, code)
		}
		pv.clk.Advance(Lockout - time.Second)
		if st, code := b.login("lou", "password-of-lou"); st != 403 || code != CodeLocked {
			t.Fatalf("a second before the lockout ends: %d %s, want 403 locked", st, code)
		}
		pv.clk.Advance(time.Second)
		if st, code := b.login("lou", "password-of-lou"); st != 200 {
			t.Fatalf("after the lockout: %d %s", st, code)
		}
		// Failures count again from zero after a success.
		for i := 0; i < MaxLoginFailures-1; i++ {
			b.login("lou", "wrong")
		}
		if st, _ := b.login("lou", "password-of-lou"); st != 200 {
			t.Fatal("locked before the count was reached again")
		}
		// An operator's reset with -unlock clears a lockout.
		for i := 0; i < MaxLoginFailures; i++ {
			b.login("lou", "wrong")
		}
		if _, err := pv.SetUserPassword(t.Context(), operator, "lou", PasswordRequest{Password: "a new password", Unlock: true}); err != nil {
			t.Fatal(err)
		}
		if st, code := b.login("lou", "a new password"); st != 200 {
			t.Fatalf("after reset and unlock: %d %s", st, code)
		}
	})

	t.Run("expiry and sign-out everywhere", func(t *testing.T) {
		pv.clk.Advance(LoginWindow) // a fresh rate-limit window
		b1, b2 := pv.browser(t), pv.browser(t)
		b1.login("ann", "password-of-ann")
		b2.login("ann", "password-of-ann")
		pv.clk.Advance(SessionLifetime - time.Second)
		if st, _, _ := b1.do("GET", PortalAPI+"me", nil); st != 200 {
			t.Fatalf("a second before expiry: %d", st)
		}
		pv.clk.Advance(time.Second)
		if st, code, _ := b1.do("GET", PortalAPI+"me", nil); st != 401 || code != CodeSignedOut {
			t.Fatalf("at expiry: %d %s, want 401 signed_out", st, code)
		}
		res, err := b1.c.Get(pv.base + "/computers")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 303 || res.Header.Get("Location") != "/login" {
			t.Errorf("expired session on a page: %d to %q, want 303 to /login", res.StatusCode, res.Header.Get("Location"))
		}
		b1.login("ann", "password-of-ann")
		b2.login("ann", "password-of-ann")
		if st, _, _ := b1.do("POST", PortalAPI+"logout", map[string]bool{"everywhere": true}); st != 200 {
			t.Fatalf("sign out everywhere: %d", st)
		}
		if st, _, _ := b2.do("GET", PortalAPI+"me", nil); st != 401 {
			t.Errorf("the other session after sign-out everywhere: %d, want 401", st)
		}
	})

	t.Run("totp", func(t *testing.T) {
		pv.clk.Advance(LoginWindow)
		pv.addUser(t, UserRequest{Name: "tom", Company: "acme"})
		out, err := pv.SetUserTOTP(t.Context(), operator, "tom", true)
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(out.TOTPURL)
		secret := u.Query().Get("secret")
		b := pv.browser(t)
		if st, code := b.login("tom", "password-of-tom"); st != 401 || code != CodeTOTPRequired {
			t.Fatalf("no code: %d %s, want 401 totp_required", st, code)
		}
		st, code, _ := b.do("POST", PortalAPI+"login", LoginRequest{User: "tom", Password: "password-of-tom", TOTP: "000000"})
		if st != 401 || code != CodeBadCredentials {
			t.Fatalf("wrong code: %d %s", st, code)
		}
		good, _ := totp.GenerateCode(secret, pv.clk.Now())
		if st, code, _ := b.do("POST", PortalAPI+"login", LoginRequest{User: "tom", Password: "wrong password", TOTP: good}); st != 401 || code != CodeBadCredentials {
			t.Fatalf("right code, wrong password: %d %s", st, code)
		}
		if st, code, _ := b.do("POST", PortalAPI+"login", LoginRequest{User: "tom", Password: "password-of-tom", TOTP: good}); st != 200 {
			t.Fatalf("right code: %d %s", st, code)
		}
		// A code signs in once: the same code again within its window
		// is refused, from any address; the next step's code works.
		if st, code, body := pv.browserFrom(t, "127.0.0.3").do("POST", PortalAPI+"login", LoginRequest{User: "tom", Password: "password-of-tom", TOTP: good}); st != 401 || code != CodeBadCredentials || !bytes.Contains(body, []byte("used already")) {
			t.Fatalf("the same code again: %d %s %s, want 401 bad_credentials (used already)", st, code, body)
		}
		pv.clk.Advance(30 * time.Second)
		next, _ := totp.GenerateCode(secret, pv.clk.Now())
		if st, code, _ := b.do("POST", PortalAPI+"login", LoginRequest{User: "tom", Password: "password-of-tom", TOTP: next}); st != 200 {
			t.Fatalf("the next step's code: %d %s", st, code)
		}
	})

	t.Run("own password", func(t *testing.T) {
		pv.clk.Advance(LoginWindow)
		if _, err := pv.AddUser(t.Context(), operator, UserRequest{Name: "pat", Company: "acme"}); err != nil {
			t.Fatal(err)
		}
		pv.SetUserPassword(t.Context(), operator, "pat", PasswordRequest{Password: "first password"})
		u, _ := pv.Catalog.User("pat")
		u.MustChange = true
		pv.Catalog.PutUser(u, false, false)
		b, other := pv.browser(t), pv.browser(t)
		b.login("pat", "first password")
		other.login("pat", "first password")
		// A one-time password's user can only change it: pages go to the
		// account page, the API answers must_change_password.
		res, err := b.c.Get(pv.base + "/computers")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 303 || res.Header.Get("Location") != "/account" {
			t.Errorf("All Computers with a one-time password: %d to %q, want 303 to /account", res.StatusCode, res.Header.Get("Location"))
		}
		if st, code, _ := b.do("GET", PortalAPI+"status", nil); st != 403 || code != CodeMustChange {
			t.Errorf("status with a one-time password: %d %s, want 403 %s", st, code, CodeMustChange)
		}
		if st, _, _ := b.do("GET", PortalAPI+"me", nil); st != 200 {
			t.Errorf("me with a one-time password: %d, want 200", st)
		}
		if st, code, _ := b.do("POST", PortalAPI+"password", map[string]string{"current": "wrong", "new": "second password"}); st != 401 || code != CodeBadCredentials {
			t.Errorf("wrong current password: %d %s", st, code)
		}
		if st, _, _ := b.do("POST", PortalAPI+"password", map[string]string{"current": "first password", "new": "short"}); st != 400 {
			t.Errorf("a short new password: %d, want 400", st)
		}
		csrf := b.csrf
		b.csrf = ""
		if st, code, _ := b.do("POST", PortalAPI+"password", map[string]string{"current": "first password", "new": "second password"}); st != 403 || code != CodeCSRF {
			t.Errorf("password change without the CSRF token: %d %s", st, code)
		}
		b.csrf = csrf
		if st, code, body := b.do("POST", PortalAPI+"password", map[string]string{"current": "first password", "new": "second password"}); st != 200 {
			t.Fatalf("change: %d %s %s", st, code, body)
		}
		if st, _, _ := b.do("GET", PortalAPI+"me", nil); st != 200 {
			t.Error("the session that changed the password was signed out")
		}
		if st, _, _ := other.do("GET", PortalAPI+"me", nil); st != 401 {
			t.Error("another session survived the password change")
		}
		if u, _ := pv.Catalog.User("pat"); u.MustChange {
			t.Error("still marked one-time after the change")
		}
		if st, _ := pv.browser(t).login("pat", "second password"); st != 200 {
			t.Error("cannot sign in with the new password")
		}
		if st, _, _ := b.do("GET", PortalAPI+"status", nil); st != 200 {
			t.Errorf("status after choosing a password: %d, want 200", st)
		}
		// The form.
		res, err = b.c.PostForm(pv.base+"/account", url.Values{"csrf_token": {b.csrf}, "current": {"second password"}, "new": {"third password"}})
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || !bytes.Contains(page, []byte(`id="account-done"`)) {
			t.Errorf("account form: %d %s", res.StatusCode, page)
		}
	})

	t.Run("rate limit", func(t *testing.T) {
		pv.clk.Advance(LoginWindow)
		b := pv.browser(t)
		for i := 0; i < LoginRate; i++ {
			if st, code := b.login("nobody-"+fmt.Sprint(i), "x"); st != 401 {
				t.Fatalf("attempt %d: %d %s, want 401", i+1, st, code)
			}
		}
		if st, code := b.login("ann", "password-of-ann"); st != 429 || code != CodeRateLimited {
			t.Fatalf("attempt %d in a window: %d %s, want 429 rate_limited", LoginRate+1, st, code)
		}
		pv.clk.Advance(LoginWindow)
		if st, _ := b.login("ann", "password-of-ann"); st != 200 {
			t.Fatalf("next window: %d", st)
		}
	})
}

// TestPortalSessionsSwept: vaultd removes expired portal sessions from the
// catalog by itself, not only at the user's next sign-in.
func TestPortalSessionsSwept(t *testing.T) {
	pv := servePortal(t)
	pv.addUser(t, UserRequest{Name: "sam", Company: "acme"})
	b := pv.browser(t)
	if st, code := b.login("sam", "password-of-sam"); st != 200 {
		t.Fatalf("sign in: %d %s", st, code)
	}
	h := sessionHash(b.session())
	if _, err := pv.Catalog.Session(h); err != nil {
		t.Fatal(err)
	}
	pv.clk.Advance(SessionLifetime + time.Minute) // fires the sweeper's timer
	deadline := time.Now().Add(30 * time.Second)  // waits for the sweeper goroutine; not a speed check
	for {
		if _, err := pv.Catalog.Session(h); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the expired session is still in the catalog")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestManageUsersCannotRaise: a user manager gives only capabilities it
// holds, to itself or anyone, and cannot manage (reset the password of, so
// sign in as) a user holding more than it does.
func TestManageUsersCannotRaise(t *testing.T) {
	pv := servePortal(t)
	pv.addUser(t, UserRequest{Name: "mgr", Kind: catalog.UserCompany, Company: "acme", Caps: []string{"manage_users"}})
	pv.addUser(t, UserRequest{Name: "strong", Kind: catalog.UserCompany, Company: "acme", Caps: []string{"restore", "manage_users"}})
	pv.addUser(t, UserRequest{Name: "weak", Kind: catalog.UserCompany, Company: "acme"})
	b := pv.browser(t)
	if st, code := b.login("mgr", "password-of-mgr"); st != 200 {
		t.Fatalf("sign in: %d %s", st, code)
	}
	for _, tc := range []struct {
		method, path string
		body         any
		status       int
	}{
		{"POST", PortalAPI + "users/mgr/caps", SetCapsRequest{Caps: []string{"manage_users", "restore"}}, 403},
		{"POST", PortalAPI + "users", UserRequest{Name: "crony", Kind: catalog.UserCompany, Company: "acme", Caps: []string{"configure_backup"}}, 403},
		{"POST", PortalAPI + "users/strong/password", PasswordRequest{}, 403},
		{"POST", PortalAPI + "users/strong/caps", SetCapsRequest{Caps: []string{"view"}}, 403},
		{"POST", PortalAPI + "users/weak/caps", SetCapsRequest{Caps: []string{"manage_users"}}, 200},
		{"POST", PortalAPI + "users/weak/password", PasswordRequest{}, 200},
	} {
		if st, code, out := b.do(tc.method, tc.path, tc.body); st != tc.status {
			t.Errorf("%s %s: got %d %q %.200s, want %d", tc.method, tc.path, st, code, out, tc.status)
		}
	}
}
