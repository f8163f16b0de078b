package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// jobField reads one "field: value" line of `vaultctl job show`.
func jobField(t *testing.T, out, field string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, field+": "); ok {
			return v
		}
	}
	t.Fatalf("job show printed no %q line:\n%s", field, out)
	return ""
}

// TestVerifyJobSurvivesSIGKILL: vaultd is SIGKILLed while a verify job is
// half-way through the packs; at the next start the job is recorded as
// interrupted, and the next verify completes, clean.
func TestVerifyJobSurvivesSIGKILL(t *testing.T) {
	e := newEnv(t)
	g := newGen(t, e.src, 11)
	for i := 0; i < 6; i++ { // about five 64 MiB packs of incompressible data
		g.write(fmt.Sprintf("big-%d", i), g.random(50<<20), 0o644)
	}
	e.a.backup("home")

	out := e.v.mustCtl("job", "start", "verify")
	f := strings.Fields(out) // "job ID started"
	if len(f) != 3 || f[0] != "job" {
		t.Fatalf("job start printed %q", out)
	}
	id := f[1]
	// Wait until it is past its first pack and not done, then kill.
	var items string
	for polls := 0; ; polls++ {
		if polls == 100000 {
			t.Fatalf("verify job %s never got past its first pack", id)
		}
		show := e.v.mustCtl("job", "show", id)
		state, progress := jobField(t, show, "state"), jobField(t, show, "progress")
		if state != "running" {
			t.Fatalf("verify ended (%s) before it could be killed half-way: make the tree bigger\n%s", state, show)
		}
		var done, total int
		if n, _ := fmt.Sscanf(progress, "%d/%d items", &done, &total); n == 2 && done >= 1 && done < total {
			items = progress
			break
		}
	}
	e.v.kill()
	t.Logf("killed vaultd with verify at %s", items)
	e.v.start()
	show := e.v.mustCtl("job", "show", id)
	if st := jobField(t, show, "state"); st != "interrupted" {
		t.Fatalf("after the kill the job is %q, want interrupted:\n%s", st, show)
	}
	if r := e.v.ctl("verify"); r.code != 0 || !strings.Contains(r.stdout, "0 problems") {
		t.Fatalf("verify after the kill: %s", r)
	}
	jobs := e.v.mustCtl("jobs")
	if strings.Count(jobs, "verify-") != 2 || !strings.Contains(jobs, "interrupted") || !strings.Contains(jobs, "done") {
		t.Fatalf("vaultctl jobs:\n%s", jobs)
	}
}

// TestRetentionAndPrune: a policy set with vaultctl, a dry run naming the
// rule that keeps each version, a prune that removes the others from the
// catalog, and the kept versions restore; the agent sees them gone.
func TestRetentionAndPrune(t *testing.T) {
	e := newEnv(t)
	g := newGen(t, e.src, 12)
	for v := 1; v <= 4; v++ {
		g.write("file", g.text(fmt.Sprint("round", v), 4000), 0o644)
		e.a.backup("home")
	}
	want := snapshot(t, e.src)
	if r := e.v.ctl("retention", e.comp, "home", "dayly 3"); r.code == 0 || !strings.Contains(r.stderr, "unknown kind") {
		t.Fatalf("a bad policy: %s", r)
	}
	e.v.mustCtl("retention", e.comp, "home", "last 2")
	if out := e.v.mustCtl("retention"); !strings.Contains(out, "last 2") || !strings.Contains(out, "all 30d, monthly 12m") {
		t.Fatalf("vaultctl retention:\n%s", out)
	}
	dry := e.v.mustCtl("prune", "--dry-run")
	for _, w := range []string{"keep   home@1", "first complete version", "remove home@2", "keep   home@3", "last 2",
		"keep   home@4", "newest complete version", "would remove 1 versions"} {
		if !strings.Contains(dry, w) {
			t.Errorf("dry run lacks %q:\n%s", w, dry)
		}
	}
	if out := e.v.mustCtl("versions", e.comp, "home"); strings.Count(out, "home@") != 4 {
		t.Fatalf("the dry run removed versions:\n%s", out)
	}
	if out := e.v.mustCtl("prune"); !strings.Contains(out, "pruned 1 versions") {
		t.Fatalf("prune printed %q", out)
	}
	out := e.v.mustCtl("versions", e.comp, "home")
	if strings.Contains(out, "home@2\t") || strings.Contains(out, "home@2 ") || strings.Count(out, "home@") != 3 {
		t.Fatalf("versions after prune:\n%s", out)
	}
	agentOut := e.a.must("versions", "home")
	if strings.Contains(agentOut, "home@2 ") || strings.Count(agentOut, "home@") != 3 {
		t.Fatalf("the agent's versions after prune:\n%s", agentOut)
	}
	got, r := e.restore(4)
	if r.code != 0 {
		t.Fatalf("restore home@4: %s", r)
	}
	compareTrees(t, "home@4 after prune", want, snapshot(t, got))
	if _, err := os.Stat(filepath.Join(got, "file")); err != nil {
		t.Fatal(err)
	}
	if r := e.v.ctl("verify"); r.code != 0 {
		t.Fatalf("verify after prune: %s", r)
	}
}
