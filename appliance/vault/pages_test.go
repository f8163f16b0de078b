package vault

import (
	"strings"
	"testing"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// TestPortalPagesRender: every page renders whole (a template error
// midway would still answer 200), for an operator and a company user.
func TestPortalPagesRender(t *testing.T) {
	pv := servePortal(t)
	a1, _ := pv.Catalog.FindComputer("pc-a1")
	now := pv.clk.Now()
	if _, err := pv.Catalog.PutConfig(a1.ID, wire.Config{Name: "home", Kind: "files", Paths: []string{"/home"}, Mode: "continuous"}, now); err != nil {
		t.Fatal(err)
	}
	if err := pv.Catalog.AddVersion(wire.Manifest{Magic: wire.ManifestMagic, Company: "acme", Computer: a1.ID, Config: "home", Seq: 1, Started: now,
		Finished: now, Listing: listingOf(t, pv.Vault, 10, dir("home"), file("home/x", 1))}, [32]byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := pv.Catalog.AddJournal(a1.ID, "home", wire.Journal{Base: 1, Time: now, Listing: listingOf(t, pv.Vault, 10, file("home/y", 2))}); err != nil {
		t.Fatal(err)
	}
	pv.addUser(t, UserRequest{Name: "root", Kind: catalog.UserOperator, Caps: capNames(operatorCaps)})
	pv.addUser(t, UserRequest{Name: "boss", Kind: catalog.UserCompany, Company: "acme", Caps: capNames(userCaps)})
	for _, u := range []string{"root", "boss"} {
		b := pv.browser(t)
		if st, code := b.login(u, "password-of-"+u); st != 200 {
			t.Fatalf("sign in %s: %d %s", u, st, code)
		}
		for _, page := range []string{"/computers", "/computers/pc-a1", "/computers/pc-a1/restore?config=home", "/audit", "/tokens", "/users", "/account"} {
			st, _, body := b.do("GET", page, nil)
			if st != 200 || !strings.HasSuffix(strings.TrimSpace(string(body)), "</html>") {
				t.Errorf("%s: %s: %d, ends %q", u, page, st, body[max(0, len(body)-200):])
			}
		}
	}
}
