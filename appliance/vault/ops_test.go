package vault

import (
	"context"
	"errors"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// enrolDirect records a computer of company in the catalog, as enrolment
// does, and returns it.
func enrolDirect(t testing.TB, v *Vault, company, id string) catalog.Computer {
	t.Helper()
	secret := []byte("token-for-" + id)
	if err := v.Catalog.AddToken(secret, catalog.Token{Company: company, Expires: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	cp, err := v.Catalog.Enroll(secret, time.Now(), func(company string) (catalog.Computer, error) {
		return catalog.Computer{ID: id, Company: company, Name: id, Enrolled: time.Now()}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Catalog.PutConfig(id, wire.Config{Name: "home", Kind: wire.KindFiles, Paths: []string{"/home"}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	return cp
}

func code(err error) string {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.code
	}
	if err != nil {
		return "internal: " + err.Error()
	}
	return "ok"
}

// TestOperationsKeepPrincipalsInScope calls the operations as each kind of
// principal, the way the portal will: an operation refuses a capability
// the principal lacks (forbidden) and an object outside its scope (not
// found, so nothing leaks about other companies' computers).
func TestOperationsKeepPrincipalsInScope(t *testing.T) {
	v := openTestVault(t)
	if err := v.NewCompany("globex"); err != nil {
		t.Fatal(err)
	}
	enrolDirect(t, v, "acme", "a1")
	enrolDirect(t, v, "acme", "a2")
	enrolDirect(t, v, "globex", "g1")
	ka, _ := v.companyKeys("acme")
	a1, _ := v.Catalog.Computer("a1")
	agent := agentPrincipal(&caller{Computer: a1, keys: ka})
	viewer := &Principal{Kind: User, Name: "viewer", Company: "acme", Caps: []Capability{CapView}}
	assigned := &Principal{Kind: User, Name: "assigned", Company: "acme", Computers: []string{"a2"},
		Caps: []Capability{CapView, CapConfigure, CapManageComputers}}
	admin := &Principal{Kind: User, Name: "admin", Company: "acme",
		Caps: []Capability{CapView, CapConfigure, CapRestore, CapManageComputers, CapManageUsers}}
	ctx := context.Background()
	cfg := wire.Config{Name: "etc", Kind: wire.KindFiles, Paths: []string{"/etc"}}

	for _, tc := range []struct {
		who  *Principal
		op   string
		call func(p *Principal) error
		want string
	}{
		// Configuring: the capability, then the scope.
		{viewer, "put config on a1", func(p *Principal) error { _, err := v.PutConfig(ctx, p, "a1", cfg); return err }, wire.CodeForbidden},
		{assigned, "put config on a2", func(p *Principal) error { _, err := v.PutConfig(ctx, p, "a2", cfg); return err }, "ok"},
		{assigned, "put config on a1", func(p *Principal) error { _, err := v.PutConfig(ctx, p, "a1", cfg); return err }, wire.CodeNotFound},
		{admin, "put config on g1", func(p *Principal) error { _, err := v.PutConfig(ctx, p, "g1", cfg); return err }, wire.CodeNotFound},
		{agent, "put config on its own computer", func(p *Principal) error { _, err := v.PutConfig(ctx, p, "", cfg); return err }, "ok"},
		{agent, "put config on a2", func(p *Principal) error { _, err := v.PutConfig(ctx, p, "a2", cfg); return err }, wire.CodeNotFound},
		{agent, "bandwidth on a2", func(p *Principal) error { _, err := v.SetBandwidth(ctx, p, "a2", "1Mbit/s"); return err }, wire.CodeNotFound},
		{operator, "bandwidth on g1", func(p *Principal) error { _, err := v.SetBandwidth(ctx, p, "g1", "1Mbit/s"); return err }, "ok"},
		{operator, "bad bandwidth", func(p *Principal) error { _, err := v.SetBandwidth(ctx, p, "g1", "fast"); return err }, wire.CodeBadRequest},
		// Viewing.
		{viewer, "versions of g1", func(p *Principal) error { _, err := v.Versions(ctx, p, "g1", ""); return err }, wire.CodeNotFound},
		{viewer, "versions of a2", func(p *Principal) error { _, err := v.Versions(ctx, p, "a2", ""); return err }, "ok"},
		{viewer, "computers of globex", func(p *Principal) error { _, err := v.Computers(ctx, p, "globex"); return err }, wire.CodeNotFound},
		// Managing computers needs the whole company.
		{assigned, "token for acme", func(p *Principal) error { _, err := v.CreateToken(ctx, p, "acme", 0); return err }, wire.CodeNotFound},
		{admin, "token for acme", func(p *Principal) error { _, err := v.CreateToken(ctx, p, "", 0); return err }, "ok"},
		{admin, "token for globex", func(p *Principal) error { _, err := v.CreateToken(ctx, p, "globex", 0); return err }, wire.CodeNotFound},
		{agent, "token for acme", func(p *Principal) error { _, err := v.CreateToken(ctx, p, "acme", 0); return err }, wire.CodeForbidden},
		{admin, "revoke g1", func(p *Principal) error { _, err := v.Revoke(ctx, p, "g1"); return err }, wire.CodeNotFound},
		// Only an agent writes its computer's history; only an operator
		// runs the appliance.
		{operator, "open a session", func(p *Principal) error { _, err := v.OpenSession(ctx, p, "home"); return err }, wire.CodeForbidden},
		{admin, "open a session", func(p *Principal) error { _, err := v.OpenSession(ctx, p, "home"); return err }, wire.CodeForbidden},
		{admin, "report a state", func(p *Principal) error { return v.ReportState(ctx, p, wire.Report{Config: "home"}) }, wire.CodeForbidden},
		{agent, "open a session", func(p *Principal) error { _, err := v.OpenSession(ctx, p, "home"); return err }, "ok"},
		{admin, "create a company", func(p *Principal) error { return v.CreateCompany(ctx, p, "initech") }, wire.CodeForbidden},
		{admin, "verify", func(p *Principal) error { _, err := v.VerifyStore(ctx, p); return err }, wire.CodeForbidden},
		{operator, "create a company", func(p *Principal) error { return v.CreateCompany(ctx, p, "initech") }, "ok"},
	} {
		if got := code(tc.call(tc.who)); got != tc.want {
			t.Errorf("%s: %s: got %s, want %s", tc.who, tc.op, got, tc.want)
		}
	}

	// Listings show only what the principal covers.
	cis, err := v.Computers(ctx, assigned, "")
	if err != nil || len(cis) != 1 || cis[0].ID != "a2" {
		t.Errorf("computers seen by a user assigned a2: %v, %v", cis, err)
	}
	sts, err := v.StatusOf(ctx, viewer, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range sts {
		if st.Company != "acme" {
			t.Errorf("an acme viewer sees the status of %s/%s", st.Company, st.Computer)
		}
	}
	if len(sts) == 0 {
		t.Error("an acme viewer sees no status at all")
	}
	// Keys go to the computer's own agent only.
	mine, err := v.Computer(ctx, agent, "")
	if err != nil || len(mine.ChunkKey) == 0 {
		t.Errorf("the agent's own computer: keys %d bytes, %v", len(mine.ChunkKey), err)
	}
	other, err := v.Computer(ctx, admin, "a1")
	if err != nil || len(other.ChunkKey) != 0 || len(other.GearKey) != 0 {
		t.Errorf("a user reading a1: keys %d+%d bytes, %v; want none", len(other.ChunkKey), len(other.GearKey), err)
	}
}
