package e2e

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTapeCommands: with real vaultd, vault-agent and vaultctl processes
// and no tape library: the company key is exported as text and a QR code;
// pools and tape coverage are set; prune keeps every version of a
// configuration written to tape until it is on tape, saying why; the
// library commands say there is no library.
func TestTapeCommands(t *testing.T) {
	e := newEnv(t)
	v := e.v
	out := v.mustCtl("company", "export-key", "acme", "-no-qr")
	f := strings.Fields(out)
	if len(f) != 3 || f[0] != "vaultnode-company-key-v1" || f[1] != "acme" || len(f[2]) != 64 {
		t.Fatalf("export-key -no-qr printed %q", out)
	}
	if _, err := hex.DecodeString(f[2]); err != nil {
		t.Fatalf("key %q: %v", f[2], err)
	}
	full := v.mustCtl("company", "export-key", "acme")
	if !strings.Contains(full, out) || strings.Count(full, "█") < 100 {
		t.Fatalf("export-key printed no key line or QR code:\n%s", full)
	}

	v.mustCtl("tape", "pool", "daily", "-allocation", "by-day", "-retention", "30d")
	if r := v.ctl("tape", "pool", "bad", "-allocation", "sometimes"); r.code == 0 || !strings.Contains(r.stderr, "continue, always-new or by-day") {
		t.Fatalf("a bad allocation: %s", r)
	}
	if r := v.ctl("tape", "enable", "acme", "nope"); r.code == 0 || !strings.Contains(r.stderr, "create it first") {
		t.Fatalf("enable with a missing pool: %s", r)
	}
	v.mustCtl("tape", "enable", "acme", "daily")
	st := v.mustCtl("tape", "status")
	for _, want := range []string{"no tape library", "company acme: on tape in pool daily", "pool daily: by-day, retention 30d"} {
		if !strings.Contains(st, want) {
			t.Fatalf("tape status lacks %q:\n%s", want, st)
		}
	}
	if r := v.ctl("tape", "inventory"); r.code == 0 || !strings.Contains(r.stderr, "no tape library") {
		t.Fatalf("inventory without a library: %s", r)
	}
	if r := v.ctl("tape", "run"); r.code == 0 || !strings.Contains(r.stderr, "no tape library") {
		t.Fatalf("tape run without a library: %s", r)
	}

	// Three versions, a policy that keeps only the first and the last:
	// the middle one stays because it is not on tape.
	for i := 0; i < 3; i++ {
		os.WriteFile(filepath.Join(e.src, "f"), []byte(strings.Repeat("x", i+1)), 0o644)
		e.a.backup("home")
	}
	v.mustCtl("retention", "acme", "last 1")
	plan := v.mustCtl("prune", "--dry-run")
	if !strings.Contains(plan, "not yet on tape") {
		t.Fatalf("prune plan does not hold the version for tape:\n%s", plan)
	}
	v.mustCtl("prune")
	if vs := v.mustCtl("versions", e.comp, "home"); strings.Count(vs, "\n") < 4 {
		t.Fatalf("versions after prune (all three must stay):\n%s", vs)
	}
	v.mustCtl("tape", "disable", "acme")
	v.mustCtl("prune")
	if vs := v.mustCtl("versions", e.comp, "home"); strings.Count(vs, "\n") >= 4 {
		t.Fatalf("versions after prune with tape off (one must go):\n%s", vs)
	}
}
