package vault

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"vaultnode/internal/wire"
)

// TestInternalErrorGoesToTheLogNotTheClient: a failure inside the vault
// answers 500 with a code and the request's id; the error itself, with the
// id, the route and the principal, is only in the log.
func TestInternalErrorGoesToTheLogNotTheClient(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	v, err := Open(Options{Dir: t.TempDir(), Listen: "127.0.0.1:0", Log: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Store.Close()
	h := v.adminHandler()
	v.Catalog.Close() // every catalog read now fails inside the vault

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", AdminCompanies, nil))
	if rec.Code != http.StatusInternalServerError {
		t.Fatalf("status %d, want 500; body %s", rec.Code, rec.Body)
	}
	id := rec.Header().Get(wire.HeaderRequestID)
	if len(id) != 16 {
		t.Fatalf("X-Request-Id = %q, want 16 hex digits", id)
	}
	var we wire.Error
	if err := json.Unmarshal(rec.Body.Bytes(), &we); err != nil {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	want := "internal error (request id " + id + "); the vault's log has the details"
	if we.Code != wire.CodeInternal || we.RequestID != id || we.Message != want {
		t.Fatalf("answer %+v, want code %q, request id %q, message %q", we, wire.CodeInternal, id, want)
	}
	entries := logs.FilterMessage("request failed").AllUntimed()
	if len(entries) != 1 {
		t.Fatalf("%d log lines 'request failed', want 1: %v", len(entries), logs.AllUntimed())
	}
	f := entries[0].ContextMap()
	if f["request_id"] != id || f["route"] != "GET "+AdminCompanies || f["principal"] != "admin socket" {
		t.Fatalf("log fields %v, want request_id %s, route GET %s, principal admin socket", f, id, AdminCompanies)
	}
	errText, _ := f["error"].(string)
	if errText == "" || strings.Contains(rec.Body.String(), errText) {
		t.Fatalf("the log's error %q is empty or reached the client: %s", errText, rec.Body)
	}
}

// TestEveryAnswerHasARequestID: success, refusal and unknown route alike.
func TestEveryAnswerHasARequestID(t *testing.T) {
	v := openTestVault(t)
	seen := map[string]bool{}
	for _, tc := range []struct {
		h            http.Handler
		method, path string
		status       int
	}{
		{v.adminHandler(), "GET", AdminCompanies, 200},
		{v.adminHandler(), "GET", AdminVersions + "?computer=nobody", 404},
		{v.agentHandler(), "GET", wire.PathHealth, 200},
		{v.agentHandler(), "GET", wire.PathComputer, 401},
		{v.agentHandler(), "GET", "/v1/nothing-here", 404},
	} {
		rec := httptest.NewRecorder()
		tc.h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		id := rec.Header().Get(wire.HeaderRequestID)
		if rec.Code != tc.status || len(id) != 16 || seen[id] {
			t.Errorf("%s %s: status %d (want %d), X-Request-Id %q (want 16 hex digits, new)", tc.method, tc.path, rec.Code, tc.status, id)
		}
		seen[id] = true
		if rec.Code >= 300 {
			var we wire.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &we); err != nil || we.RequestID != id {
				t.Errorf("%s %s: body %q does not carry request id %s", tc.method, tc.path, rec.Body, id)
			}
		}
	}
}
