package vault

import (
	"encoding/json"
	"strings"
	"testing"

	"vaultnode/appliance/catalog"
)

// TestAuditLog: changes through the portal and the admin socket are
// recorded with who, from where, on which company and computer; a refused
// change and a read are not; an operator sees every entry, a company's
// user manager only its company's.
func TestAuditLog(t *testing.T) {
	pv := servePortal(t)
	pv.addUser(t, UserRequest{Name: "root", Kind: catalog.UserOperator, Caps: capNames(operatorCaps)})
	pv.addUser(t, UserRequest{Name: "mgr", Kind: catalog.UserCompany, Company: "acme", Caps: []string{"manage_users", "manage_computers"}})
	op := pv.browser(t)
	if st, code := op.login("root", "password-of-root"); st != 200 {
		t.Fatalf("sign in: %d %s", st, code)
	}
	mgr := pv.browser(t)
	if st, code := mgr.login("mgr", "password-of-mgr"); st != 200 {
		t.Fatalf("sign in: %d %s", st, code)
	}
	for _, c := range []struct {
		b        *browser
		computer string
		status   int
	}{{op, "pc-g1", 200}, {mgr, "pc-a1", 200}, {mgr, "pc-g1", 404}} {
		if st, code, _ := c.b.do("POST", PortalAPI+"computers/"+c.computer+"/contact", ContactRequest{Contact: "it@example.com"}); st != c.status {
			t.Fatalf("contact of %s: %d %s, want %d", c.computer, st, code, c.status)
		}
	}
	res, err := pv.adminClient().Post("http://vault"+AdminContact, "application/json", strings.NewReader(`{"computer":"pc-a2","contact":"ops@example.com"}`))
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("admin contact: %v %v", res, err)
	}
	res.Body.Close()
	if cp, _ := pv.Catalog.FindComputer("pc-a2"); cp.Contact != "ops@example.com" {
		t.Fatalf("contact of pc-a2: %q", cp.Contact)
	}

	read := func(b *browser, query string) []catalog.AuditEntry {
		t.Helper()
		st, code, body := b.do("GET", PortalAPI+"audit"+query, nil)
		if st != 200 {
			t.Fatalf("audit%s: %d %s", query, st, code)
		}
		var page AuditPage
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		return page.Entries
	}
	all := read(op, "")
	var lines []string
	for _, e := range all {
		lines = append(lines, strings.Join([]string{e.Principal, e.Kind, e.From, e.Company, e.Computer, e.Action, e.Detail}, "|"))
	}
	got := strings.Join(lines, "\n")
	a1, _ := pv.Catalog.FindComputer("pc-a1")
	a2, _ := pv.Catalog.FindComputer("pc-a2")
	g1, _ := pv.Catalog.FindComputer("pc-g1")
	for _, want := range []string{
		"admin socket|operator|admin socket|acme|" + a2.ID + "|POST /admin/contact|/admin/contact: contact ops@example.com",
		"user mgr of acme|user|127.0.0.1|acme|" + a1.ID + "|POST /api/v1/computers/{computer}/contact|/api/v1/computers/pc-a1/contact: contact it@example.com",
		"operator root|operator|127.0.0.1|globex|" + g1.ID + "|POST /api/v1/computers/{computer}/contact|",
		"user mgr of acme|user|127.0.0.1|acme||POST /api/v1/login|/api/v1/login",
		"operator root|operator|127.0.0.1|||POST /api/v1/login|",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the audit log lacks %q:\n%s", want, got)
		}
	}
	if len(all) != 5 {
		t.Errorf("the audit log has %d entries, want 5 (no entry for the refused change or the reads):\n%s", len(all), got)
	}
	for i := 1; i < len(all); i++ {
		if all[i].Seq >= all[i-1].Seq {
			t.Errorf("entries not newest first: %d after %d", all[i].Seq, all[i-1].Seq)
		}
	}
	// The manager sees acme's entries only; paging goes on with next.
	mine := read(mgr, "")
	if len(mine) != 3 {
		t.Errorf("mgr of acme sees %d entries, want its company's 3: %+v", len(mine), mine)
	}
	for _, e := range mine {
		if e.Company != "acme" {
			t.Errorf("mgr of acme sees %+v", e)
		}
	}
	if st, _, _ := mgr.do("GET", PortalAPI+"audit?company=globex", nil); st != 404 {
		t.Errorf("mgr of acme reading globex's audit: %d, want 404", st)
	}
	st, _, body := op.do("GET", PortalAPI+"audit?limit=2", nil)
	var page AuditPage
	json.Unmarshal(body, &page)
	if st != 200 || len(page.Entries) != 2 || page.Next != page.Entries[1].Seq {
		t.Fatalf("limit 2: %d %+v", st, page)
	}
	if older := read(op, "?before="+itoa(page.Next)); len(older) != 3 || older[0].Seq != page.Next-1 {
		t.Errorf("the page after %d: %+v", page.Next, older)
	}
	if found := read(op, "?q=OPS@"); len(found) != 1 || found[0].Computer != a2.ID {
		t.Errorf("filter ops@: %+v", found)
	}
}

func itoa(n uint64) string { b, _ := json.Marshal(n); return string(b) }
