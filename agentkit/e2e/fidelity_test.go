package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vaultnode/agentkit/treediff"
	"vaultnode/internal/testtree"
)

// TestFidelity backs up a tree holding every case of issue 3 with the real
// binaries, restores it to another directory and requires no difference,
// both by `vault-agent diff` and by treediff.Compare in this process; then
// mutates the tree, backs up again, and restores both versions, comparing
// each with a copy of the tree as it was at that version.
//
// The privileged cases (owners, devices, immutable files, trusted and
// security xattrs, unreadable modes) need root; CI runs as root. As another
// user the test fails rather than skip them silently, unless
// VAULTNODE_FIDELITY_UNPRIVILEGED=1 asks for the unprivileged subset.
func TestFidelity(t *testing.T) {
	opts := testtree.Options{}
	if os.Geteuid() != 0 {
		if os.Getenv("VAULTNODE_FIDELITY_UNPRIVILEGED") == "" {
			t.Fatalf("the fidelity test needs root for the cases %v: run it as root (CI does), or set VAULTNODE_FIDELITY_UNPRIVILEGED=1 to run the unprivileged subset", testtree.PrivilegedCases())
		}
		opts.Unprivileged = true
		// Set-id bits are restored only as root with -setid.
		opts.Drop = append(opts.Drop, testtree.CaseModes)
		t.Logf("LOUD: running without the privileged cases %v nor %s", testtree.PrivilegedCases(), testtree.CaseModes)
	}
	e := newEnv(t)
	unprotect := func(dir string) {
		t.Cleanup(func() {
			if err := testtree.Unprotect(dir); err != nil && !os.IsNotExist(err) {
				t.Logf("unprotect %s: %v", dir, err)
			}
		})
	}
	unprotect(e.src)
	man, err := testtree.Generate(e.src, opts)
	if err != nil {
		t.Fatalf("generate the test tree: %v", err)
	}
	t.Logf("cases: %v (dropped: %v)", man.Made, man.Dropped)
	if !opts.Unprivileged && len(man.Made) != len(testtree.AllCases()) {
		t.Fatalf("the tree lacks cases: made %v of %v", man.Made, testtree.AllCases())
	}

	// The copy kept for version 1: the same options give the same tree.
	// It must equal the source (this also proves the generator is
	// deterministic, which the comparison of version 1 relies on).
	keep1 := filepath.Join(e.root, "keep1")
	unprotect(keep1)
	if _, err := testtree.Generate(keep1, opts); err != nil {
		t.Fatal(err)
	}
	requireSame(t, "the copy kept for version 1 against the source", e.src, keep1, true)

	s1 := e.a.backup("home")
	t.Logf("v1: %+v", s1)
	to1 := e.restoreTo(1)
	unprotect(to1)
	// vault-agent diff compares the version with where it was restored.
	requireDiffClean(t, e, "home@1", to1)
	requireSame(t, "restore of home@1 against the source", e.src, filepath.Join(to1, e.src), false)

	changes, err := testtree.MutateReport(e.src, 42)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mutated: %v", changes)
	s2 := e.a.backup("home")
	t.Logf("v2: %+v", s2)
	if s2.FilesRead == 0 || s2.FilesRead > int64(len(changes))+5 {
		t.Errorf("after %d changes the second backup read %d files", len(changes), s2.FilesRead)
	}

	// Both versions, restored afresh, against the tree as it was at each.
	// The source is unchanged since version 2, so it is version 2's copy.
	for _, tc := range []struct {
		v    uint64
		want string
	}{{1, keep1}, {2, e.src}} {
		to := e.restoreTo(tc.v)
		unprotect(to)
		requireDiffClean(t, e, fmt.Sprintf("home@%d", tc.v), to)
		requireSame(t, fmt.Sprintf("restore of home@%d against its copy", tc.v), tc.want, filepath.Join(to, e.src), tc.v == 1)
	}
	// And the versions differ where the tree changed: version 2's restore
	// is not version 1's copy.
	if d, err := treediff.Compare(keep1, e.src, treediff.Options{SkipRoot: true, Limit: 5}); err != nil || len(d) == 0 {
		t.Errorf("the mutation changed nothing treediff sees: %v %v", d, err)
	}
}

// restoreTo restores home@N to a fresh directory and returns it.
func (e *env) restoreTo(version uint64) string {
	e.t.Helper()
	to := filepath.Join(e.root, fmt.Sprintf("fidelity-restore-%d", version))
	for i := 0; ; i++ {
		if _, err := os.Lstat(to); os.IsNotExist(err) {
			break
		}
		to = filepath.Join(e.root, fmt.Sprintf("fidelity-restore-%d.%d", version, i))
	}
	if r := e.a.run("restore", fmt.Sprintf("home@%d", version), "-to", to, "-devices", "-setid"); r.code != 0 {
		e.t.Fatalf("restore home@%d: %s", version, r)
	}
	return to
}

func requireDiffClean(t *testing.T, e *env, spec, dir string) {
	t.Helper()
	r := e.a.run("diff", spec, dir)
	if r.code != 0 || !strings.Contains(r.stdout, "no difference") {
		t.Errorf("vault-agent diff %s %s: %s", spec, dir, r)
	}
}

// requireSame requires no difference between the trees; skipRoot leaves
// out the metadata of the top directory (a kept copy's top is made by the
// generator, not by the test environment).
func requireSame(t *testing.T, what, want, got string, skipRoot bool) {
	t.Helper()
	diffs, err := treediff.Compare(want, got, treediff.Options{Limit: 50, SkipRoot: skipRoot})
	if err != nil {
		t.Fatalf("%s: compare: %v", what, err)
	}
	if len(diffs) > 0 {
		var b strings.Builder
		for _, d := range diffs {
			fmt.Fprintf(&b, "\n  %s", d)
		}
		t.Errorf("%s: %d differences:%s", what, len(diffs), b.String())
	}
}
