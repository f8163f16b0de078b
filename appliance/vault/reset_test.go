package vault

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"vaultnode/appliance/catalog"
)

var resetLinkRE = regexp.MustCompile(`https://\S+/reset\?token=([A-Za-z0-9_-]+)`)

// resetLinks answers the reset links mailed to addr, oldest first.
func resetLinks(t *testing.T, pv *portalVault, addr string) []string {
	t.Helper()
	ms, err := pv.Mail.List()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		if m.Kind == "password_reset" && m.To == addr {
			l := resetLinkRE.FindString(m.Body)
			if l == "" {
				t.Fatalf("reset mail %s has no link: %q", m.ID, m.Body)
			}
			out = append(out, l)
		}
	}
	return out
}

func tokenOf(t *testing.T, link string) string {
	t.Helper()
	u, err := url.Parse(link)
	if err != nil {
		t.Fatal(err)
	}
	return u.Query().Get("token")
}

// resetPortal serves a portal with ann (acme, with an address), bob (no
// address) and carl (an operator, with an address).
func resetPortal(t *testing.T) *portalVault {
	t.Helper()
	pv := servePortal(t)
	pv.addUser(t, UserRequest{Name: "ann", Company: "acme", Caps: []string{"view"}})
	pv.addUser(t, UserRequest{Name: "bob", Company: "acme", Caps: []string{"view"}})
	pv.addUser(t, UserRequest{Name: "carl", Kind: catalog.UserOperator, Caps: []string{"view"}})
	for _, u := range [][2]string{{"ann", "ann@acme.example"}, {"carl", "carl@vault.example"}} {
		if _, err := pv.SetUserMail(t.Context(), operator, u[0], MailPrefs{Email: u[1]}); err != nil {
			t.Fatal(err)
		}
	}
	return pv
}

// TestPasswordResetByMail: the answer is the same for every name; a
// matching user gets a single-use link of 256 random bits whose token the
// catalog never holds; a new request replaces the old link; using it sets
// the password, ends every session and is audited.
func TestPasswordResetByMail(t *testing.T) {
	pv := resetPortal(t)
	b1, b2 := pv.browser(t), pv.browser(t)
	for _, b := range []*browser{b1, b2} {
		if st, code := b.login("ann", "password-of-ann"); st != 200 {
			t.Fatalf("sign in: %d %s", st, code)
		}
	}
	anon := pv.browser(t)
	var first []byte
	for _, who := range []string{"ann", "nobody", "bob", "ANN@acme.example", "no@where.example"} {
		pv.clk.Advance(time.Second) // the mails sort by time
		st, _, body := anon.do("POST", PortalAPI+"password-reset", ResetRequest{User: who})
		if st != 200 {
			t.Fatalf("reset of %q: %d %s", who, st, body)
		}
		if first == nil {
			first = body
		} else if !bytes.Equal(body, first) {
			t.Fatalf("reset of %q answered %s, of ann %s: the answer tells who exists", who, body, first)
		}
	}
	links := resetLinks(t, pv, "ann@acme.example")
	if len(links) != 2 {
		t.Fatalf("ann got %d reset mails, want 2 (by name and by address): %v", len(links), links)
	}
	if ms, _ := pv.Mail.List(); len(ms) != 2 {
		t.Fatalf("%d mails queued, want ann's 2 only", len(ms))
	}
	if !strings.HasPrefix(links[1], pv.base+"/reset?token=") {
		t.Fatalf("link %q is not on the portal's listener %s", links[1], pv.base)
	}
	old, tok := tokenOf(t, links[0]), tokenOf(t, links[1])
	if len(tok) < 43 { // 32 bytes in base64url
		t.Fatalf("token %q is shorter than 256 bits", tok)
	}
	db, err := os.ReadFile(filepath.Join(pv.dir, catalog.File))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(db, []byte(tok)) {
		t.Fatal("the catalog holds the reset token itself")
	}

	// The replaced link is dead; a too short password spends nothing.
	if st, _, body := anon.do("POST", PortalAPI+"password-reset/confirm", map[string]string{"token": old, "new": "a-new-password"}); st != 404 {
		t.Fatalf("replaced link: %d %s", st, body)
	}
	if st, _, body := anon.do("POST", PortalAPI+"password-reset/confirm", map[string]string{"token": tok, "new": "short"}); st != 400 {
		t.Fatalf("short password: %d %s", st, body)
	}
	if st, _, body := anon.do("POST", PortalAPI+"password-reset/confirm", map[string]string{"token": tok, "new": "a-new-password"}); st != 200 {
		t.Fatalf("reset: %d %s", st, body)
	}
	if st, _, body := anon.do("POST", PortalAPI+"password-reset/confirm", map[string]string{"token": tok, "new": "another-password"}); st != 404 {
		t.Fatalf("second use of the link: %d %s", st, body)
	}
	for i, b := range []*browser{b1, b2} {
		if st, code, _ := b.do("GET", PortalAPI+"me", nil); st != 401 || code != CodeSignedOut {
			t.Fatalf("session %d after the reset: %d %s, want 401 %s", i, st, code, CodeSignedOut)
		}
	}
	if st, _ := pv.browser(t).login("ann", "password-of-ann"); st != 401 {
		t.Fatalf("old password after the reset: %d", st)
	}
	if st, code := pv.browser(t).login("ann", "a-new-password"); st != 200 {
		t.Fatalf("new password: %d %s", st, code)
	}

	var found bool
	pv.Catalog.AuditLog(0, func(e catalog.AuditEntry) bool {
		if e.Action == "POST "+PortalAPI+"password-reset/confirm" {
			found = e.Principal == "user ann of acme" && e.Company == "acme" && strings.Contains(e.Detail, "reset by e-mail link")
			return false
		}
		return true
	})
	if !found {
		t.Fatal("no audit entry names ann's reset")
	}
}

// TestPasswordResetExpires: a link is dead 30 minutes after it was made.
func TestPasswordResetExpires(t *testing.T) {
	pv := resetPortal(t)
	anon := pv.browser(t)
	if st, _, body := anon.do("POST", PortalAPI+"password-reset", ResetRequest{User: "ann"}); st != 200 {
		t.Fatalf("ask: %d %s", st, body)
	}
	tok := tokenOf(t, resetLinks(t, pv, "ann@acme.example")[0])
	pv.clk.Advance(ResetLifetime - time.Second)
	if st, _, _ := anon.do("GET", "/reset?token="+tok, nil); st != 200 {
		t.Fatalf("the reset page before expiry: %d", st)
	}
	pv.clk.Advance(time.Second)
	if st, _, _ := anon.do("GET", "/reset?token="+tok, nil); st != 404 {
		t.Fatalf("the reset page at expiry: %d", st)
	}
	if st, _, body := anon.do("POST", PortalAPI+"password-reset/confirm", map[string]string{"token": tok, "new": "a-new-password"}); st != 404 {
		t.Fatalf("expired link: %d %s", st, body)
	}
	// Straight to the catalog, past the vault's own check: the command
	// refuses it too.
	h, _ := HashPassword("a-new-password")
	if _, err := pv.Catalog.UseReset(resetHash(tok), pv.clk.Now(), h); err == nil {
		t.Fatal("use_reset took an expired token")
	}
	if st, _ := pv.browser(t).login("ann", "password-of-ann"); st != 200 {
		t.Fatalf("the old password after an expired link: %d", st)
	}
}

// TestPasswordResetRateLimits: at most ResetMailsPerUser links per user
// per window, refused silently (the same answer); at most LoginRate
// requests per address per minute, shared with sign-in.
func TestPasswordResetRateLimits(t *testing.T) {
	pv := resetPortal(t)
	anon := pv.browserFrom(t, "127.0.0.2")
	for i := range ResetMailsPerUser + 2 {
		if st, _, body := anon.do("POST", PortalAPI+"password-reset", ResetRequest{User: "ann"}); st != 200 || !strings.Contains(string(body), ResetAnswer) {
			t.Fatalf("request %d: %d %s", i, st, body)
		}
	}
	if n := len(resetLinks(t, pv, "ann@acme.example")); n != ResetMailsPerUser {
		t.Fatalf("%d mails to ann, want %d", n, ResetMailsPerUser)
	}
	pv.clk.Advance(ResetMailWindow)
	if st, _, _ := anon.do("POST", PortalAPI+"password-reset", ResetRequest{User: "ann"}); st != 200 {
		t.Fatalf("after the window: %d", st)
	}
	if n := len(resetLinks(t, pv, "ann@acme.example")); n != ResetMailsPerUser+1 {
		t.Fatalf("%d mails to ann after the window, want %d", n, ResetMailsPerUser+1)
	}

	flood := pv.browserFrom(t, "127.0.0.3")
	now := pv.clk.Now()
	pv.clk.Advance(now.Truncate(LoginWindow).Add(LoginWindow).Sub(now)) // a fresh window
	for i := range LoginRate {
		if st, _, _ := flood.do("POST", PortalAPI+"password-reset", ResetRequest{User: "x" + string(rune('a'+i))}); st != 200 {
			t.Fatalf("request %d: %d", i, st)
		}
	}
	for path, body := range map[string]any{PortalAPI + "password-reset": ResetRequest{User: "ann"}, PortalAPI + "login": LoginRequest{User: "ann", Password: "x"}} {
		st, code, _ := flood.do("POST", path, body)
		if st != 429 || code != CodeRateLimited {
			t.Fatalf("%s past the address's rate: %d %s, want 429 %s", path, st, code, CodeRateLimited)
		}
	}
}

// TestPasswordResetUnlocksKeepsTOTP: a reset clears the user's lockouts;
// a second factor stays required.
func TestPasswordResetUnlocksKeepsTOTP(t *testing.T) {
	pv := resetPortal(t)
	info, err := pv.SetUserTOTP(t.Context(), operator, "ann", true)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := url.Parse(info.TOTPURL)
	secret := key.Query().Get("secret")
	b := pv.browserFrom(t, "127.0.0.4")
	for range MaxLoginFailures {
		b.login("ann", "wrong-password")
	}
	if st, code := b.login("ann", "password-of-ann"); st != 403 || code != CodeLocked {
		t.Fatalf("after %d failures: %d %s, want locked", MaxLoginFailures, st, code)
	}
	if st, _, _ := b.do("POST", PortalAPI+"password-reset", ResetRequest{User: "ann"}); st != 200 {
		t.Fatal(st)
	}
	tok := tokenOf(t, resetLinks(t, pv, "ann@acme.example")[0])
	if st, _, body := b.do("POST", PortalAPI+"password-reset/confirm", map[string]string{"token": tok, "new": "a-new-password"}); st != 200 {
		t.Fatalf("reset: %d %s", st, body)
	}
	if st, code := b.login("ann", "a-new-password"); st != 401 || code != CodeTOTPRequired {
		t.Fatalf("sign-in after the reset without a code: %d %s, want 401 %s", st, code, CodeTOTPRequired)
	}
	code, _ := totp.GenerateCode(secret, pv.clk.Now())
	st, c, body := b.do("POST", PortalAPI+"login", LoginRequest{User: "ann", Password: "a-new-password", TOTP: code})
	if st != 200 {
		t.Fatalf("sign-in with the code after the reset: %d %s %s", st, c, body)
	}
}

// TestPasswordResetPages: the pages a browser walks: the link on the
// sign-in page, the form, the page the link opens; a cross-site post is
// refused.
func TestPasswordResetPages(t *testing.T) {
	pv := resetPortal(t)
	b := pv.browser(t)
	form := func(path string, vals url.Values, hdr ...string) (int, string) {
		req, _ := http.NewRequest("POST", pv.base+path, strings.NewReader(vals.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		res, err := b.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		out, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(out)
	}
	if _, _, body := b.do("GET", "/login", nil); !strings.Contains(string(body), `href="/forgot"`) {
		t.Fatal("the sign-in page has no Forgot password? link")
	}
	if st, _, _ := b.do("GET", "/forgot", nil); st != 200 {
		t.Fatal(st)
	}
	if st, _ := form("/forgot", url.Values{"user": {"carl"}}, "Sec-Fetch-Site", "cross-site"); st != 403 {
		t.Fatalf("cross-site forgot: %d", st)
	}
	if len(resetLinks(t, pv, "carl@vault.example")) != 0 {
		t.Fatal("a cross-site post mailed a link")
	}
	st, page := form("/forgot", url.Values{"user": {"carl"}})
	if st != 200 || !strings.Contains(page, "is on its way") {
		t.Fatalf("forgot: %d %s", st, page)
	}
	link := resetLinks(t, pv, "carl@vault.example")[0]
	tok := tokenOf(t, link)
	if st, _, body := b.do("GET", strings.TrimPrefix(link, pv.base), nil); st != 200 || !strings.Contains(string(body), `name="new"`) {
		t.Fatalf("the link's page: %d %s", st, body)
	}
	if st, page := form("/reset", url.Values{"token": {tok}, "new": {"carls-new-password"}}); st != 200 || !strings.Contains(page, "Password changed") {
		t.Fatalf("reset: %d %s", st, page)
	}
	if st, page := form("/reset", url.Values{"token": {tok}, "new": {"carls-newer-password"}}); st != 404 || !strings.Contains(page, "Ask for a new link") {
		t.Fatalf("the link again: %d %s", st, page)
	}
	st, _, body := b.do("POST", PortalAPI+"login", LoginRequest{User: "carl", Password: "carls-new-password"})
	var lr LoginResponse
	json.Unmarshal(body, &lr)
	if st != 200 || lr.User.Name != "carl" {
		t.Fatalf("sign-in with the new password: %d %s", st, body)
	}
}
