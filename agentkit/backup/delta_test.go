package backup

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"vaultnode/agentkit/selection"
)

func TestDeltaTargets(t *testing.T) {
	sel, err := selection.New(selection.Options{Exclude: []string{"*.tmp"}, StatePath: "/home/ann/.agent"})
	if err != nil {
		t.Fatal(err)
	}
	ch := Changes{
		Paths: []string{
			"/home/ann/b.txt", "/home/ann/a.txt", "/home/ann/a.txt", // duplicates
			"/home/ann/new/x", // covered by the rescan of new/
			"/home/ann/x.tmp", // excluded
			"/home/ann/.agent/pending.journal",
			"/etc/passwd",           // outside the roots
			"/home/ann.txt",         // sorts between, not under
			"/home/ann/docs/report", // kept
		},
		Rescan: []string{"/home/ann/new", "/home/ann/new/deeper"},
	}
	var got []string
	for _, tg := range deltaTargets(roots([]string{"/home/ann", "/home/ann.txt"}), sel, ch) {
		s := tg.abs
		if tg.rescan {
			s += " (rescan)"
		}
		got = append(got, s)
	}
	want := []string{"/home/ann", "/home/ann/a.txt", "/home/ann/b.txt", "/home/ann/docs/report", "/home/ann/new (rescan)", "/home/ann.txt"}
	want = want[1:] // the root itself did not change
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("targets (-want +got):\n%s", diff)
	}
}
