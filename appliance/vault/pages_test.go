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

// TestRestoreOnlyUserNeverBrowsesLiveFiles: browsing a computer's live
// files is for configuring; a user holding restore without
// configure_backup is refused it (here and in Enqueue), and the pages it
// sees offer no button that would call it: the restore page browses the
// version on the vault.
func TestRestoreOnlyUserNeverBrowsesLiveFiles(t *testing.T) {
	pv := servePortal(t)
	pv.addUser(t, UserRequest{Name: "rita", Kind: catalog.UserCompany, Company: "acme", Caps: []string{string(CapRestore)}})
	b := pv.browser(t)
	if st, code := b.login("rita", "password-of-rita"); st != 200 {
		t.Fatalf("sign in: %d %s", st, code)
	}
	if st, code, _ := b.do("POST", PortalAPI+"computers/pc-a1/browse?wait=0", wire.BrowseArgs{Path: "/"}); st != 403 || code != wire.CodeForbidden {
		t.Errorf("a restore-only user browses live files: %d %q", st, code)
	}
	_, _, page := b.do("GET", "/computers/pc-a1", nil)
	if !strings.Contains(string(page), `id="restore-link"`) || strings.Contains(string(page), `id="configure-link"`) {
		t.Errorf("the computer page of a restore-only user: want the restore link and no configure link")
	}
	for _, path := range []string{"/computers/pc-a1/restore?config=home", "/static/pages.js", "/static/portal.js"} {
		st, _, body := b.do("GET", path, nil)
		if st != 200 {
			t.Fatalf("%s: %d", path, st)
		}
		if strings.Contains(string(body), "/browse") || strings.Contains(string(body), "configure.js") {
			t.Errorf("%s reaches the live-tree browse route, which a restore-only user may not call", path)
		}
	}
}
