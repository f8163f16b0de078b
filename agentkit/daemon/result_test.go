package daemon

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"

	"vaultnode/agentkit/client"
	"vaultnode/internal/wire"
)

// roundTripFunc serves requests in the process: a vault's answers without
// a network.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// oldResult is wire.CommandResult as vaults before the kept and reused
// counts decode it (strictly: an unknown field is refused).
type oldResult struct {
	State       string             `json:"state"`
	Error       string             `json:"error,omitempty"`
	Files       int64              `json:"files,omitempty"`
	Bytes       int64              `json:"bytes,omitempty"`
	Failures    []wire.FileFailure `json:"failures,omitempty"`
	FailedCount int64              `json:"failed_count,omitempty"`
}

// oldReport is wire.RestoreReport as vaults before the kept and reused
// counts decode it.
type oldReport struct {
	ID       string `json:"id"`
	Phase    string `json:"phase"`
	Config   string `json:"config"`
	Version  uint64 `json:"version"`
	Journal  int    `json:"journal,omitempty"`
	Path     string `json:"path,omitempty"`
	Target   string `json:"target"`
	Existing string `json:"existing,omitempty"`
	Files    int64  `json:"files,omitempty"`
	Bytes    int64  `json:"bytes,omitempty"`
	Skipped  int64  `json:"skipped,omitempty"`
	Failed   int64  `json:"failed,omitempty"`
	Error    string `json:"error,omitempty"`
}

// A restore's result (a command's, or the report of vault-agent restore)
// with kept and reused counts reaches a vault that predates them: refused
// with them (bad_request, as its strict decoding answers), it is sent
// again without them and taken.
func TestResultToAnOlderVault(t *testing.T) {
	var mu sync.Mutex
	var taken []oldResult
	var reports []oldReport
	refused := 0
	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		answer := func(code int, v any) (*http.Response, error) {
			b, _ := json.Marshal(v)
			return &http.Response{StatusCode: code, Header: http.Header{"Content-Type": {"application/json"}},
				Body: io.NopCloser(bytes.NewReader(b)), Request: r}, nil
		}
		// refuse decodes the body into v strictly, as the older vault
		// does, and returns its answer when it refuses it.
		refuse := func(v any) *http.Response {
			err := wire.DecodeJSON(r.Body, wire.MaxJSONBody, "wire.MaxJSONBody", v, true)
			if err == nil {
				return nil
			}
			mu.Lock()
			refused++
			mu.Unlock()
			resp, _ := answer(http.StatusBadRequest, wire.Error{Code: wire.CodeBadRequest, Message: "malformed JSON request: " + err.Error()})
			return resp
		}
		if r.URL.Path == wire.PathRestoreReport {
			var rep oldReport
			if resp := refuse(&rep); resp != nil {
				return resp, nil
			}
			mu.Lock()
			reports = append(reports, rep)
			mu.Unlock()
			return &http.Response{StatusCode: http.StatusNoContent, Body: http.NoBody, Header: http.Header{}, Request: r}, nil
		}
		if !strings.HasSuffix(r.URL.Path, "/result") {
			return answer(http.StatusNotFound, wire.Error{Code: wire.CodeNotFound, Message: "not this test's"})
		}
		var res oldResult
		if resp := refuse(&res); resp != nil {
			return resp, nil
		}
		mu.Lock()
		taken = append(taken, res)
		mu.Unlock()
		return answer(http.StatusOK, map[string]string{"state": res.State})
	})
	c := client.New("vault.test:7443", tls.Certificate{}, x509.NewCertPool(), func(http.RoundTripper) http.RoundTripper { return rt })
	cm := &commander{d: &daemon{client: c, log: zap.NewNop()}, running: map[string]context.CancelFunc{},
		results: map[string]*wire.CommandResult{"c-1": {State: wire.CmdDone, Files: 3, Bytes: 300, Kept: 2, Reused: 100}}}
	cm.send(context.Background(), "c-1")
	if refused != 1 || len(taken) != 1 || taken[0].Files != 3 || taken[0].Bytes != 300 || taken[0].State != wire.CmdDone {
		t.Fatalf("refused %d times, taken %+v; want refused once, then taken with its files and bytes", refused, taken)
	}
	if len(cm.results) != 0 {
		t.Errorf("the result is still waiting to be sent")
	}
	rep := wire.RestoreReport{ID: "r-1", Phase: wire.RestoreFinished, Config: "home", Version: 2, Target: "/", Existing: "overwrite",
		Files: 5, Bytes: 500, Kept: 4, Reused: 50}
	if err := c.ReportRestore(context.Background(), rep); err != nil {
		t.Fatalf("report a restore to the older vault: %v", err)
	}
	if refused != 2 || len(reports) != 1 || reports[0].Files != 5 || reports[0].Existing != "overwrite" {
		t.Errorf("refused %d times in all, reports taken %+v; want the report refused once, then taken", refused, reports)
	}
}
