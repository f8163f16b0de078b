package vault

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// TestEnrolmentTokensListAndRevoke: the enrolment page and GET
// /api/v1/tokens list the tokens that still enrol (when made, by whom,
// expiry), never the token itself; a user with manage_computers over the
// whole company revokes one, which then enrols nothing; a used token, or
// another company's, cannot be revoked; the revocation is audited.
func TestEnrolmentTokensListAndRevoke(t *testing.T) {
	pv := servePortal(t)
	for _, u := range []UserRequest{
		{Name: "mc", Kind: catalog.UserCompany, Company: "acme", Caps: []string{string(CapManageComputers)}},
		{Name: "mc-one", Kind: catalog.UserCompany, Company: "acme", Caps: []string{string(CapManageComputers)}, Limited: true, Computers: []string{"pc-a1"}},
		{Name: "viewer", Kind: catalog.UserCompany, Company: "acme"},
		{Name: "gx", Kind: catalog.UserCompany, Company: "globex", Caps: []string{string(CapManageComputers)}},
	} {
		pv.addUser(t, u)
	}
	signIn := func(name string) *browser {
		b := pv.browser(t)
		if st, code := b.login(name, "password-of-"+name); st != 200 {
			t.Fatalf("sign in %s: %d %s", name, st, code)
		}
		return b
	}
	mc := signIn("mc")
	made := func(ttl string) string {
		st, code, out := mc.do("POST", PortalAPI+"tokens", map[string]string{"ttl": ttl})
		var tr struct{ Token string }
		if st != 200 || json.Unmarshal(out, &tr) != nil {
			t.Fatalf("make a token: %d %s", st, code)
		}
		return tr.Token
	}
	tok1, tok2 := made("1h"), made("24h")
	list := func(b *browser) []catalog.TokenInfo {
		st, code, out := b.do("GET", PortalAPI+"tokens", nil)
		if st != 200 {
			t.Fatalf("list tokens: %d %s", st, code)
		}
		if strings.Contains(string(out), tok1) || strings.Contains(string(out), tok2) {
			t.Fatal("the token list shows a token itself")
		}
		var l []catalog.TokenInfo
		json.Unmarshal(out, &l)
		return l
	}
	l := list(mc)
	if len(l) != 2 || l[0].By != "user mc of acme" || l[0].Created.IsZero() || !l[0].Expires.Before(l[1].Expires) || l[0].Company != "acme" {
		t.Fatalf("tokens: %+v; want two of acme made by mc, soonest to expire first", l)
	}
	st, _, page := mc.do("GET", "/tokens", nil)
	if st != 200 || strings.Count(string(page), "token-revoke") < 2 || !strings.Contains(string(page), l[0].ID) || strings.Contains(string(page), tok1) {
		t.Fatalf("the tokens page: %d; want both tokens listed with a revoke button, and never the token itself", st)
	}
	if len(list(signIn("gx"))) != 0 {
		t.Error("another company's manager lists acme's tokens")
	}
	for _, c := range []struct {
		who    string
		status int
	}{{"gx", 404}, {"mc-one", 404}, {"viewer", 403}} {
		if st, code, _ := signIn(c.who).do("DELETE", PortalAPI+"tokens/"+l[0].ID, nil); st != c.status {
			t.Errorf("%s revokes acme's token: %d %s; want %d", c.who, st, code, c.status)
		}
	}
	if st, code, _ := mc.do("DELETE", PortalAPI+"tokens/"+l[0].ID, nil); st != 200 {
		t.Fatalf("revoke: %d %s", st, code)
	}
	wt, _ := wire.ParseToken(tok1)
	if _, err := pv.Catalog.TokenCompany(wt.Secret[:], pv.clk.Now()); !errors.Is(err, catalog.ErrToken) {
		t.Errorf("a revoked token still enrols: %v", err)
	}
	if st, _, _ := mc.do("DELETE", PortalAPI+"tokens/"+l[0].ID, nil); st != 404 {
		t.Errorf("revoke twice: %d; want 404", st)
	}
	// A used token is history: it leaves the list and stays.
	wt2, _ := wire.ParseToken(tok2)
	if err := pv.Catalog.EnrollComputer(wt2.Secret[:], pv.clk.Now(), catalog.Computer{ID: "pc-new", Company: "acme", Name: "new", Enrolled: pv.clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if l := list(mc); len(l) != 0 {
		t.Errorf("a used token is listed: %+v", l)
	}
	if st, _, _ := mc.do("DELETE", PortalAPI+"tokens/"+list2id(t, pv, tok2), nil); st != 404 {
		t.Errorf("revoke a used token: %d; want 404", st)
	}
	// An expired one leaves the list too.
	made("1h")
	pv.clk.Advance(2 * time.Hour)
	if l := list(mc); len(l) != 0 {
		t.Errorf("an expired token is listed: %+v", l)
	}
	page2, err := pv.AuditLog(t.Context(), operator, "acme", 0, 10, "tokens/")
	if err != nil || len(page2.Entries) == 0 || !strings.Contains(page2.Entries[0].Detail, "revoked") || page2.Entries[0].Principal != "user mc of acme" {
		t.Errorf("the revocation's audit entry: %+v %v", page2.Entries, err)
	}
}

// list2id is the id (hex SHA-256 of the secret) of token s.
func list2id(t *testing.T, pv *portalVault, s string) string {
	t.Helper()
	wt, err := wire.ParseToken(s)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(wt.Secret[:])
	return hex.EncodeToString(h[:])
}
