package vault

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"vaultnode/internal/wire"
)

// TestAgentRestoreIsAudited: a restore an agent runs on its own reaches
// the audit log through POST /v1/restores/report, as it starts and as it
// ends (who: the computer; what: config@version:path into target; from
// where); an oversized or malformed report is refused and records nothing.
func TestAgentRestoreIsAudited(t *testing.T) {
	sv := serveTestVault(t, "acme")
	agent, id := sv.agentClient(t, "acme", "laptop")
	post := func(body []byte) int {
		resp, err := agent.Post("https://"+sv.addr+wire.PathRestoreReport, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	rep := wire.RestoreReport{ID: "r-1", Phase: wire.RestoreStarted, Config: "home", Version: 3, Journal: 2, Path: "/home/ann", Target: "/tmp/r", Existing: "skip"}
	b, _ := json.Marshal(rep)
	if st := post(b); st != 204 {
		t.Fatalf("report started: %d", st)
	}
	rep.Phase, rep.Files, rep.Bytes, rep.Failed, rep.Kept, rep.Reused = wire.RestoreFinished, 12, 3456, 1, 9, 2000
	b, _ = json.Marshal(rep)
	if st := post(b); st != 204 {
		t.Fatalf("report finished: %d", st)
	}
	big := rep
	big.Error = strings.Repeat("x", wire.MaxRestoreReport)
	b, _ = json.Marshal(big)
	if st := post(b); st != 400 {
		t.Errorf("an oversized report: %d; want 400", st)
	}
	bad := rep
	bad.Phase = "halfway"
	b, _ = json.Marshal(bad)
	if st := post(b); st != 400 {
		t.Errorf("a report of phase %q: %d; want 400", bad.Phase, st)
	}
	bad = rep
	bad.Kept = -1
	b, _ = json.Marshal(bad)
	if st := post(b); st != 400 {
		t.Errorf("a report of %d files kept: %d; want 400", bad.Kept, st)
	}
	page, err := sv.AuditLog(t.Context(), operator, "acme", 0, 10, "restores/report")
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Entries) != 2 {
		t.Fatalf("audit entries of the agent's restore: %+v; want started and finished", page.Entries)
	}
	fin, start := page.Entries[0], page.Entries[1]
	for _, e := range page.Entries {
		if e.Kind != "agent" || e.Computer != id || e.Company != "acme" || e.From == "" || !strings.Contains(e.Detail, "home@3+2:/home/ann") || !strings.Contains(e.Detail, "into /tmp/r") {
			t.Errorf("audit entry %+v: want the computer, its address, home@3+2:/home/ann into /tmp/r", e)
		}
	}
	if !strings.Contains(start.Detail, "started") || !strings.Contains(fin.Detail, "finished") || !strings.Contains(fin.Detail, "12 files, 3456 bytes, 0 skipped, 1 failed (9 of the files kept as they were there, 2000 bytes taken from the files there)") {
		t.Errorf("entries: %q, %q", start.Detail, fin.Detail)
	}
}
