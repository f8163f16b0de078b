package vault

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/clock"
	"vaultnode/internal/storagehealth"
	"vaultnode/internal/wire"
)

// TestStorageFailedRefusesAgents: with the firmware's report saying the
// array failed, every agent route but health answers 503 storage_failed;
// degraded, stale or absent reports change nothing.
func TestStorageFailedRefusesAgents(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC))
	state := filepath.Join(t.TempDir(), "storage.json")
	v, err := Open(Options{Dir: t.TempDir(), Listen: "127.0.0.1:0", Clock: clk, StorageState: state})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	report := func(st string, age time.Duration) {
		t.Helper()
		if err := storagehealth.Save(state, storagehealth.Report{State: st, Detail: "array md0 (raid6) " + st, Updated: clk.Now().Add(-age)}); err != nil {
			t.Fatal(err)
		}
		clk.Advance(2 * time.Second) // past the vault's one-second cache
	}
	call := func(method, path string) (int, string) {
		rec := httptest.NewRecorder()
		v.agentHandler().ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader("{}")))
		return rec.Code, rec.Body.String()
	}
	health := func() string {
		_, body := call("GET", wire.PathHealth)
		var h map[string]any
		_ = json.Unmarshal([]byte(body), &h)
		s, _ := h["storage"].(string)
		return s
	}

	// No report (not an appliance, or the firmware has not written yet).
	if code, _ := call("GET", wire.PathComputer); code != http.StatusUnauthorized {
		t.Errorf("no report: computer answered %d, want 401 (no client certificate)", code)
	}
	if s := health(); s != "" {
		t.Errorf("no report: health says storage %q", s)
	}

	report(storagehealth.Degraded, 0)
	if code, _ := call("POST", wire.PathSessions); code != http.StatusUnauthorized {
		t.Errorf("degraded: sessions answered %d, want to pass on to authentication (401)", code)
	}
	if s := health(); s != storagehealth.Degraded {
		t.Errorf("degraded: health says storage %q", s)
	}

	report(storagehealth.Failed, 0)
	for _, r := range []struct{ method, path string }{{"POST", wire.PathSessions}, {"GET", wire.PathComputer}, {"POST", wire.PathChunks}, {"POST", wire.PathEnroll}} {
		code, body := call(r.method, r.path)
		var we wire.Error
		_ = json.Unmarshal([]byte(body), &we)
		if code != http.StatusServiceUnavailable || we.Code != wire.CodeStorageFailed || !strings.Contains(we.Message, "storage failed: array md0 (raid6) failed") {
			t.Errorf("failed: %s %s answered %d %s", r.method, r.path, code, body)
		}
	}
	if code, _ := call("GET", wire.PathHealth); code != http.StatusOK || health() != storagehealth.Failed {
		t.Errorf("failed: health answered %d, storage %q", code, health())
	}
	rec := httptest.NewRecorder()
	v.adminHandler().ServeHTTP(rec, httptest.NewRequest("GET", AdminStorage, nil))
	var si StorageInfo
	if err := json.Unmarshal(rec.Body.Bytes(), &si); err != nil || !si.Known || si.Report.State != storagehealth.Failed {
		t.Errorf("admin storage: %d %s", rec.Code, rec.Body)
	}

	// A report the firmware stopped updating is not trusted to refuse.
	report(storagehealth.Failed, 5*time.Minute)
	if code, _ := call("GET", wire.PathComputer); code != http.StatusUnauthorized {
		t.Errorf("stale failed report: computer answered %d, want 401", code)
	}
}

// TestNotifyStorage: operators hear once when the array becomes degraded
// and once when it is clean again; a resync alone and company users do not.
func TestNotifyStorage(t *testing.T) {
	clk := clock.NewFake(time.Now())
	state := filepath.Join(t.TempDir(), "storage.json")
	v, err := Open(Options{Dir: t.TempDir(), Listen: "127.0.0.1:0", Clock: clk, StorageState: state})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, u := range []struct {
		req  UserRequest
		mail string
	}{{UserRequest{Name: "op", Kind: catalog.UserOperator, Caps: []string{"operate"}}, "op@provider.example"},
		{UserRequest{Name: "ann", Company: "acme"}, "ann@acme.example"}} {
		u.req.Password = "password-of-" + u.req.Name
		if _, err := v.AddUser(ctx, operator, u.req); err != nil {
			t.Fatal(err)
		}
		if _, err := v.SetUserMail(ctx, operator, u.req.Name, MailPrefs{Email: u.mail}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.SetUserMail(ctx, operator, "ann", MailPrefs{Email: "ann@acme.example", Events: []string{EventStorage}}); err == nil {
		t.Error("a company user chose the storage event")
	}
	report := func(st, detail string) {
		t.Helper()
		clk.Advance(time.Minute)
		if err := storagehealth.Save(state, storagehealth.Report{State: st, Detail: detail, Updated: clk.Now()}); err != nil {
			t.Fatal(err)
		}
		notify(t, v)
	}
	report(storagehealth.Clean, "array md0 (raid6) clean: 4 of 4 disks")
	report(storagehealth.Degraded, "array md0 (raid6) is degraded: 3 of 4 disks in sync")
	report(storagehealth.Degraded, "array md0 (raid6) is degraded: 3 of 4 disks in sync, still")
	report(storagehealth.Resyncing, "array md0 (raid6) rebuilding: 10.0 %")
	report(storagehealth.Clean, "array md0 (raid6) clean: 4 of 4 disks")
	report(storagehealth.Resyncing, "array md0 (raid6) resyncing: 50.0 %")
	report(storagehealth.Clean, "array md0 (raid6) clean: 4 of 4 disks again")
	got := outbox(t, v)
	want := []string{"storage: Vault storage degraded", "storage: Vault storage clean again"}
	if strings.Join(got["op@provider.example"], "|") != strings.Join(want, "|") || len(got["ann@acme.example"]) != 0 {
		t.Errorf("mail queued %v, want %v to the operator only", got, want)
	}
	if body := mailTo(t, v, "op@provider.example", EventStorage); !strings.Contains(body, "3 of 4 disks in sync") || !strings.Contains(body, "vaultctl disk replace") {
		t.Errorf("the degraded mail says:\n%s", body)
	}
}
