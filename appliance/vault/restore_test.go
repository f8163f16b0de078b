package vault

import (
	"context"
	"testing"
	"time"

	"vaultnode/internal/wire"
)

// TestRestoreCommand: a restore from the portal needs restore over the
// source and the target, which must be of one company; it pins the version
// (and the journal records of latest or a moment) it was asked for; the
// target's agent, and only it, reads that version of the source through
// its command.
func TestRestoreCommand(t *testing.T) {
	v := openTestVault(t)
	ctx := context.Background()
	if err := v.NewCompany("globex"); err != nil {
		t.Fatal(err)
	}
	a1 := recordComputer(t, v, "pc-a1", "acme")
	a2 := recordComputer(t, v, "pc-a2", "acme")
	recordComputer(t, v, "pc-g1", "globex")
	start := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	if err := v.Catalog.AddVersion(wire.Manifest{Magic: wire.ManifestMagic, Company: "acme", Computer: "pc-a1", Config: "home", Seq: 1,
		Started: start, Finished: start, Listing: listingOf(t, v, 10, dir("home"), file("home/x", 1))}, [32]byte{1}); err != nil {
		t.Fatal(err)
	}
	jt := start.Add(time.Hour)
	for i := range 2 {
		if _, err := v.Catalog.AddJournal("pc-a1", "home", wire.Journal{Base: 1, Time: jt.Add(time.Duration(i) * time.Hour),
			Listing: listingOf(t, v, 10, file("home/x", int64(2+i)))}); err != nil {
			t.Fatal(err)
		}
	}
	user := func(caps []Capability, computers ...string) *Principal {
		p := &Principal{Kind: User, Name: "user of acme", Company: "acme", Caps: append([]Capability{CapView}, caps...)}
		if len(computers) > 0 {
			p.Computers = computers
		}
		return p
	}
	restorer := user([]Capability{CapRestore})
	req := RestoreRequest{Computer: "pc-a1", Config: "home", Paths: []string{"/home/x/"}, Target: "pc-a2", To: "/tmp/r", Existing: "keep-both"}
	for _, c := range []struct {
		who  string
		p    *Principal
		req  func(RestoreRequest) RestoreRequest
		code string
	}{
		{"view only", user(nil), nil, wire.CodeForbidden},
		{"configure", user([]Capability{CapConfigure}), nil, wire.CodeForbidden},
		{"restore over the source only", user([]Capability{CapRestore}, "pc-a1"), nil, wire.CodeNotFound},
		{"restore over the target only", user([]Capability{CapRestore}, "pc-a2"), nil, wire.CodeNotFound},
		{"onto another company's computer", operator, func(r RestoreRequest) RestoreRequest { r.Target = "pc-g1"; return r }, wire.CodeBadRequest},
		{"a relative path", restorer, func(r RestoreRequest) RestoreRequest { r.Paths = []string{"home/x"}; return r }, wire.CodeBadRequest},
		{"a bad policy", restorer, func(r RestoreRequest) RestoreRequest { r.Existing = "merge"; return r }, wire.CodeBadRequest},
		{"a version that does not exist", restorer, func(r RestoreRequest) RestoreRequest { r.Version = "9"; return r }, wire.CodeNotFound},
		{"an agent", a1, nil, wire.CodeForbidden},
	} {
		r := req
		if c.req != nil {
			r = c.req(r)
		}
		_, err := v.Restore(ctx, c.p, r)
		wantCmdCode(t, c.who, err, c.code)
	}

	// Latest onto another computer: version 1 and both journal records.
	cv, err := v.Restore(ctx, user([]Capability{CapRestore}, "pc-a1", "pc-a2"), req)
	if err != nil {
		t.Fatal(err)
	}
	want := wire.RestoreArgs{Config: "home", Version: 1, Paths: []string{"/home/x"}, To: "/tmp/r", Existing: "keep-both", Computer: "pc-a1", At: jt.Add(time.Hour)}
	if cv.Computer != "pc-a2" || cv.Restore == nil || !sameArgs(*cv.Restore, want) {
		t.Fatalf("queued on %s: %+v, want on pc-a2: %+v", cv.Computer, cv.Restore, want)
	}
	if got := poll(t, v, a2); len(got) != 1 || got[0].ID != cv.ID {
		t.Fatalf("pc-a2 polled %+v", got)
	}
	pt, err := v.RestorePoint(ctx, a2, cv.ID)
	if err != nil || pt.Manifest.Seq != 1 || pt.Manifest.Computer != "pc-a1" || len(pt.Journal) != 2 {
		t.Fatalf("restore point: %+v %v", pt, err)
	}
	_, err = v.RestorePoint(ctx, a1, cv.ID)
	wantCmdCode(t, "the source's agent reads the target's command", err, wire.CodeNotFound)
	if _, err := v.FinishCommand(ctx, a2, cv.ID, wire.CommandResult{State: wire.CmdDone}); err != nil {
		t.Fatal(err)
	}
	_, err = v.RestorePoint(ctx, a2, cv.ID)
	wantCmdCode(t, "a finished restore's point", err, wire.CodeNotFound)

	// A moment between the journal records: one of them; a numbered
	// version on its own computer: none, and the agent resolves it.
	r := req
	r.Target, r.Point = "", Point{At: jt.Add(30 * time.Minute)}
	if cv, err = v.Restore(ctx, restorer, r); err != nil {
		t.Fatal(err)
	}
	poll(t, v, a1)
	if pt, err = v.RestorePoint(ctx, a1, cv.ID); err != nil || len(pt.Journal) != 1 || cv.Restore.Computer != "" {
		t.Fatalf("at a moment: %+v %+v %v", cv.Restore, pt, err)
	}
	r.Point, r.Paths = Point{Version: "1"}, []string{"/"}
	if cv, err = v.Restore(ctx, restorer, r); err != nil {
		t.Fatal(err)
	}
	if a := cv.Restore; a.Version != 1 || !a.At.IsZero() || a.Computer != "" || a.Paths != nil {
		t.Errorf("version 1, all of it: %+v", a)
	}
}

func sameArgs(a, b wire.RestoreArgs) bool {
	return a.Config == b.Config && a.Version == b.Version && len(a.Paths) == len(b.Paths) && (len(a.Paths) == 0 || a.Paths[0] == b.Paths[0]) &&
		a.To == b.To && a.Existing == b.Existing && a.Computer == b.Computer && a.At.Equal(b.At)
}
