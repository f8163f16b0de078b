package restore

import (
	"os"
	"path/filepath"
	"testing"

	"vaultnode/internal/tree"
)

// The policies for objects already at the target: skip leaves them,
// overwrite replaces them, keep-both restores beside them; for regular
// files, hard links and symlinks alike, all beneath the target.
func TestExistingPolicies(t *testing.T) {
	for _, tc := range []struct {
		existing Existing
		skipped  int64
	}{{Skip, 3}, {Overwrite, 0}, {KeepBoth, 0}} {
		t.Run(string(tc.existing), func(t *testing.T) {
			h := newHostile(t)
			must(t, os.MkdirAll(filepath.Join(h.target, "d"), 0o755))
			for _, p := range []string{"d/f", "d/l"} {
				must(t, os.WriteFile(filepath.Join(h.target, p), []byte("old "+p+"\n"), 0o644))
			}
			must(t, os.Symlink("old-target", filepath.Join(h.target, "d/s")))
			g := h.content("d/a", "new a\n")
			g.Nlink = 2
			l := file("d/l")
			l.LinkTo, l.Nlink = []byte("d/a"), 2
			o := h.options()
			o.Existing = tc.existing
			res, err := h.restore(o, dir("d"), g, h.content("d/f", "new d/f\n"), l,
				tree.Node{Path: []byte("d/s"), Type: tree.TypeSymlink, Target: []byte("new-target")})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Problems) > 0 {
				t.Errorf("problems: %q", res.Problems)
			}
			if res.Stats.Skipped != tc.skipped {
				t.Errorf("skipped %d, want %d", res.Stats.Skipped, tc.skipped)
			}
			h.requireOutsideUnchanged()
			at := func(p string) string { return filepath.Join(h.target, p) }
			link := func(p string) string { s, _ := os.Readlink(at(p)); return s }
			requireContent(t, at("d/a"), "new a\n")
			switch tc.existing {
			case Skip:
				requireContent(t, at("d/f"), "old d/f\n")
				requireContent(t, at("d/l"), "old d/l\n")
				if link("d/s") != "old-target" {
					t.Errorf("d/s -> %q, want the old target kept", link("d/s"))
				}
			case Overwrite:
				requireContent(t, at("d/f"), "new d/f\n")
				requireContent(t, at("d/l"), "new a\n")
				if link("d/s") != "new-target" {
					t.Errorf("d/s -> %q, want new-target", link("d/s"))
				}
			case KeepBoth:
				requireContent(t, at("d/f"), "old d/f\n")
				requireContent(t, at("d/f.restored"), "new d/f\n")
				requireContent(t, at("d/l"), "old d/l\n")
				requireContent(t, at("d/l.restored"), "new a\n")
				if link("d/s") != "old-target" || link("d/s.restored") != "new-target" {
					t.Errorf("d/s -> %q, d/s.restored -> %q", link("d/s"), link("d/s.restored"))
				}
			}
		})
	}
}
