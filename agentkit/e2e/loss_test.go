package e2e

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// packSizes lists every pack file of a vault with its size.
func packSizes(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	root := filepath.Join(dir, "packs")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out[strings.TrimPrefix(p, root)] = info.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func cp(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// vaultdRefuses runs vaultd on dir and returns what it printed when it
// exited; it fails the test if vaultd serves instead.
func vaultdRefuses(t *testing.T, v *vaultProc) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "vaultd"), "-data", v.dir, "-listen", v.addr, "-portal", "off").CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("vaultd did not refuse to start (%v):\n%s", err, out)
	}
	return string(out)
}

// TestCatalogAndIndexLoss deletes or rolls back catalog.db, index.db or
// both in a real vault with real versions: vaultd either rebuilds or
// refuses with a message that says what to do, no pack is lost or
// shortened, and once the operator has done what the message says every
// version restores identical.
func TestCatalogAndIndexLoss(t *testing.T) {
	e := newEnv(t)
	g := newGen(t, e.src, 11)
	g.makeTree(60, 3<<20)
	dir := e.v.dir
	snaps := map[uint64]map[string]entryState{}
	snaps[1] = snapshot(t, e.src)
	if s := e.a.backup("home"); s.Version != 1 {
		t.Fatalf("first backup committed version %d", s.Version)
	}
	// A one-shot backup is contact (issue 12: LAST SEEN said "never"), seen
	// at once and, after a clean stop, kept.
	lastSeen := func(what string) {
		t.Helper()
		out := e.v.mustCtl("status", "acme")
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "home") && strings.Contains(l, "never") {
				t.Fatalf("%s: a computer that just backed up was never seen:\n%s", what, out)
			}
		}
		if !strings.Contains(out, "home") {
			t.Fatalf("%s: status lists no configuration:\n%s", what, out)
		}
	}
	lastSeen("after a one-shot backup")
	e.v.stop()
	old := t.TempDir()
	cp(t, filepath.Join(dir, "catalog.db"), filepath.Join(old, "catalog.db"))
	cp(t, filepath.Join(dir, "index.db"), filepath.Join(old, "index.db"))
	e.v.start()
	lastSeen("after a restart")
	for n := uint64(2); n <= 3; n++ {
		g.mutate(int(n))
		snaps[n] = snapshot(t, e.src)
		if s := e.a.backup("home"); s.Version != n {
			t.Fatalf("backup %d committed version %d", n, s.Version)
		}
	}
	e.v.stop()
	good := t.TempDir()
	cp(t, filepath.Join(dir, "catalog.db"), filepath.Join(good, "catalog.db"))
	cp(t, filepath.Join(dir, "index.db"), filepath.Join(good, "index.db"))
	packs := packSizes(t, dir)
	if len(packs) == 0 {
		t.Fatal("no packs")
	}

	restoreAll := func(what string) {
		t.Helper()
		out := e.a.must("versions", "home")
		for n := uint64(1); n <= 3; n++ {
			got, r := e.restore(n)
			if r.code != 0 {
				t.Fatalf("%s: restore home@%d: %s\nversions:\n%s", what, n, r, out)
			}
			compareTrees(t, fmt.Sprintf("%s: home@%d", what, n), snaps[n], snapshot(t, got))
		}
	}
	rebuildCatalog := func(what string) string {
		t.Helper()
		out := e.v.mustCtl("rebuild-catalog")
		if !strings.Contains(out, "catalog rebuilt from the packs") {
			t.Fatalf("%s: rebuild-catalog printed %q", what, out)
		}
		return out
	}
	const (
		idx = "index.db"
		cat = "catalog.db"
	)
	for _, sc := range []struct {
		name    string
		from    map[string]string // file -> copy to put in place ("" removes it)
		refuses string            // what vaultd's refusal must say
		// rebuild: the operator runs rebuild-catalog (after the refusal, or
		// because the catalog is older than the packs).
		rebuild bool
		// respec: the configuration's spec was lost with the catalog.
		respec bool
	}{
		{name: "index deleted", from: map[string]string{idx: ""}},
		{name: "index rolled back", from: map[string]string{idx: filepath.Join(old, idx)}},
		{name: "catalog deleted", from: map[string]string{cat: ""}, refuses: "rebuild-catalog", rebuild: true, respec: true},
		{name: "catalog rolled back", from: map[string]string{cat: filepath.Join(old, cat)}, rebuild: true},
		{name: "both deleted", from: map[string]string{cat: "", idx: ""}, refuses: "rebuild-catalog", rebuild: true, respec: true},
		{name: "both rolled back", from: map[string]string{cat: filepath.Join(old, cat), idx: filepath.Join(old, idx)}, rebuild: true},
	} {
		t.Logf("--- %s", sc.name)
		for f, src := range sc.from {
			os.Remove(filepath.Join(dir, f))
			if src != "" {
				cp(t, src, filepath.Join(dir, f))
			}
		}
		if sc.refuses != "" {
			out := vaultdRefuses(t, e.v)
			if !strings.Contains(out, sc.refuses) {
				t.Fatalf("%s: vaultd refused without saying %q:\n%s", sc.name, sc.refuses, out)
			}
		}
		if sc.rebuild {
			t.Logf("%s: %s", sc.name, rebuildCatalog(sc.name))
		}
		e.v.start()
		if sc.respec {
			e.a.must("config", "set", "home", "-path", e.src)
		}
		restoreAll(sc.name)
		e.v.stop()
		now := packSizes(t, dir)
		for p, size := range packs {
			if now[p] < size {
				t.Fatalf("%s: pack %s is %d bytes, was %d", sc.name, p, now[p], size)
			}
		}
		// Back to the good pair for the next case.
		cp(t, filepath.Join(good, cat), filepath.Join(dir, cat))
		cp(t, filepath.Join(good, idx), filepath.Join(dir, idx))
	}
}
