package vault

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/clock"
	"vaultnode/internal/wire"
)

// TestStatusTransitions walks one configuration through every state with
// a fake clock: the states are derived from versions, reports and time.
func TestStatusTransitions(t *testing.T) {
	start := time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC) // a Monday
	clk := clock.NewFake(start)
	v, err := Open(Options{Dir: t.TempDir(), Listen: "127.0.0.1:0", Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	secret := []byte("0123456789abcdef01")
	if err := v.Catalog.AddToken(secret, catalog.Token{Company: "acme", Expires: start.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	cp, err := v.Catalog.Enroll(secret, start, func(company string) (catalog.Computer, error) {
		return catalog.Computer{ID: "pc-1", Company: company, Name: "web1", Enrolled: start}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := wire.Config{Name: "home", Kind: wire.KindFiles, Paths: []string{"/home"}, Mode: wire.ModeScheduled, Schedule: "24x7", Interval: "1h"}
	if _, err := v.Catalog.PutConfig(cp.ID, cfg, clk.Now()); err != nil {
		t.Fatal(err)
	}
	report := func(state, reason string) {
		t.Helper()
		if err := v.Catalog.PutReport(cp.ID, wire.Report{Config: "home", State: state, Reason: reason, Time: clk.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	seq := uint64(0)
	commit := func(complete bool) {
		t.Helper()
		seq++
		m := wire.Manifest{Magic: wire.ManifestMagic, Company: "acme", Computer: cp.ID, Config: "home", Seq: seq,
			Started: clk.Now().Add(-time.Minute), Finished: clk.Now(), Totals: wire.Totals{Files: 3}}
		if !complete {
			m.Totals.Unreadable = 1
		}
		if err := v.Catalog.AddVersion(m, [32]byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	want := func(state string) {
		t.Helper()
		sts, err := v.Status("acme")
		if err != nil {
			t.Fatal(err)
		}
		if len(sts) != 1 {
			t.Fatalf("%d statuses, want 1", len(sts))
		}
		if sts[0].State != state {
			t.Fatalf("at %s: state %q (%s), want %q", clk.Now().Format(time.RFC3339), sts[0].State, sts[0].Detail, state)
		}
	}

	report(wire.AgentRunning, "")
	want(StateTesting)
	commit(false) // a version with unreadable files is not protection
	clk.Advance(25 * time.Hour)
	report(wire.AgentIdle, "")
	want(StateInitial)
	commit(true)
	want(StateProtected)
	clk.Advance(90 * time.Minute)
	report(wire.AgentIdle, "")
	want(StateProtected) // due after 1h, with 1h of grace
	clk.Advance(40 * time.Minute)
	report(wire.AgentIdle, "")
	want(StateBehind)
	report(wire.AgentError, "open session: vault: disk full")
	want(StateError)
	commit(true)
	report(wire.AgentIdle, "")
	want(StateProtected)
	clk.Advance(16 * time.Minute)
	want(StateOffline)

	// A weekly window: a Monday 01:00-02:00 schedule is not behind on
	// Tuesday, and is on the next Monday after the window and its grace.
	cfg.Schedule = "tz=UTC; mon 01:00-02:00"
	if _, err := v.Catalog.PutConfig(cp.ID, cfg, clk.Now()); err != nil {
		t.Fatal(err)
	}
	clk.Set(time.Date(2026, 11, 9, 1, 30, 0, 0, time.UTC)) // Monday
	commit(true)
	clk.Set(time.Date(2026, 11, 10, 12, 0, 0, 0, time.UTC)) // Tuesday
	report(wire.AgentWaiting, "outside the schedule")
	want(StateProtected)
	clk.Set(time.Date(2026, 11, 16, 3, 0, 1, 0, time.UTC)) // next Monday, past 01:00 + 1h interval + 1h grace
	report(wire.AgentWaiting, "outside the schedule")
	want(StateBehind)

	// Continuous: journal records move what the protection covers.
	cfg.Mode, cfg.Schedule, cfg.Interval = wire.ModeContinuous, "24x7", "5m"
	if _, err := v.Catalog.PutConfig(cp.ID, cfg, clk.Now()); err != nil {
		t.Fatal(err)
	}
	commit(true)
	clk.Advance(20 * time.Minute)
	if _, err := v.Catalog.AddJournal(cp.ID, "home", wire.Journal{Base: seq, Time: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	report(wire.AgentIdle, "")
	want(StateProtected)
	sts, _ := v.Status("acme")
	if !sts[0].Covers.Equal(clk.Now()) {
		t.Fatalf("continuous protection covers %s, want the journal record's time %s", sts[0].Covers, clk.Now())
	}
}

// TestStatusJSONStreamed answers a status of more computers than one batch
// (statusBatch) as one valid JSON array with every row in order of the
// computers, and another company as an ordinary error before any byte.
func TestStatusJSONStreamed(t *testing.T) {
	v := openTestVault(t)
	n := 2*statusBatch + 3
	for i := range n {
		id := fmt.Sprintf("pc-%06d", i)
		if err := v.Catalog.RecordComputer(catalog.Computer{ID: id, Company: "acme", Name: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Catalog.PutConfig(id, wire.Config{Name: "home", Kind: wire.KindFiles, Paths: []string{"/home"}}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	batches := 0
	if err := v.StatusEachOf(t.Context(), operator, "", func([]ConfigStatus) error { batches++; return nil }); err != nil {
		t.Fatal(err)
	}
	if batches != 3 {
		t.Errorf("%d batches, want 3", batches)
	}
	rec := httptest.NewRecorder()
	if err := v.writeStatusJSON(rec, httptest.NewRequest("GET", PortalAPI+"status", nil), operator, ""); err != nil {
		t.Fatal(err)
	}
	var rows []ConfigStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &rows); err != nil {
		t.Fatalf("the answer is not one JSON array: %v", err)
	}
	if len(rows) != n || rows[0].Computer != "pc-000000" || rows[n-1].Computer != fmt.Sprintf("pc-%06d", n-1) {
		t.Fatalf("%d rows (want %d), first %q, last %q", len(rows), n, rows[0].Computer, rows[len(rows)-1].Computer)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	rec = httptest.NewRecorder()
	user := &Principal{Kind: User, Name: "u", Company: "acme", Caps: []Capability{CapView}}
	if err := v.writeStatusJSON(rec, httptest.NewRequest("GET", PortalAPI+"status?company=other", nil), user, "other"); err == nil || rec.Body.Len() != 0 {
		t.Fatalf("another company: err %v, %d bytes written", err, rec.Body.Len())
	}
}
