package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAgentRestoreAudited: a restore run on the computer with `vault-agent
// restore` (not queued from the portal) shows in the vault's audit log,
// as it starts and as it ends, with the computer and what it restored
// where; and `vaultctl backup-now` in a script queues a backup command
// for the agent and says how to follow it.
func TestAgentRestoreAudited(t *testing.T) {
	e := newEnv(t)
	if err := os.WriteFile(filepath.Join(e.src, "a.txt"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.a.must("backup", "home")
	to := filepath.Join(e.root, "r")
	if r := e.a.run("restore", "home@1:"+filepath.Join(e.src, "a.txt"), "-to", to); r.code != 0 {
		t.Fatalf("restore: %s", r)
	}
	if b, err := os.ReadFile(filepath.Join(to, e.src, "a.txt")); err != nil || string(b) != "hello" {
		t.Fatalf("restored a.txt: %q %v", b, err)
	}
	out := e.v.mustCtl("audit", "restores/report")
	want := "home@1:" + filepath.Join(e.src, "a.txt")
	var started, finished bool
	for _, l := range strings.Split(out, "\n") {
		if !strings.Contains(l, e.comp) || !strings.Contains(l, want) || !strings.Contains(l, "into "+to) {
			continue
		}
		started = started || strings.Contains(l, " started ")
		finished = finished || strings.Contains(l, " finished ") && strings.Contains(l, "1 files, 5 bytes")
	}
	if !started || !finished {
		t.Errorf("vaultctl audit lacks the agent's restore (started %v, finished %v):\n%s", started, finished, out)
	}
	// A -parallel out of range is a usage error, before anything starts
	// (so not audited either).
	for _, bad := range []string{"-1", "65"} {
		if r := e.a.run("restore", "home@1", "-to", filepath.Join(e.root, "bad"), "-parallel", bad); r.code != 2 || !strings.Contains(r.stderr, "-parallel") {
			t.Errorf("restore -parallel %s: want a usage error (exit 2) naming -parallel, got %s", bad, r)
		}
	}
	// A dry run changes nothing and is not recorded.
	e.a.must("restore", "home@1", "-to", filepath.Join(e.root, "dry"), "-dry-run")
	n := 0
	for _, l := range strings.Split(e.v.mustCtl("audit", "restores/report"), "\n") {
		if strings.Contains(l, e.comp) && strings.Contains(l, "restores/report") {
			n++
		}
	}
	if n != 2 {
		t.Errorf("audit entries of agent restores after a dry run: %d; want 2", n)
	}

	// vaultctl backup-now, not on a terminal: the command's id and how to
	// follow it; the command waits queued (no agent runs here).
	out = e.v.mustCtl("backup-now", e.comp, "home")
	f := strings.Fields(out)
	if len(f) < 10 || f[8] != "command" || !strings.Contains(out, "vaultctl command "+e.comp+" "+f[9]) {
		t.Fatalf("vaultctl backup-now printed %q", out)
	}
	if st := e.v.mustCtl("command", e.comp, f[9]); !strings.Contains(st, "queued") || !strings.Contains(st, "backup") {
		t.Errorf("vaultctl command printed %q; want the backup command queued", st)
	}
}
