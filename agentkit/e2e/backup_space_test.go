package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackupStateDiskFull: with the agent's state on a full filesystem a
// backup still commits its version, says in a warning that its listing
// cache could not be written, and leaves no temporary file there; once
// there is room the cache is written again and the next backup reads no
// unchanged file.
func TestBackupStateDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: needs root (mounts a tmpfs); CI runs as root")
	}
	e := newEnv(t)
	g := newGen(t, e.src, 43)
	for i := range 3000 {
		g.write(fmt.Sprintf("d%02d/f%04d.txt", i%30, i), g.text("note", 300), 0o644)
	}
	g.setTimes()
	want := snapshot(t, e.src)

	// The agent's state (identity, configuration: 16 KiB) moves onto a
	// tmpfs of 40 KiB, which the listing cache of 3,000 files outgrows.
	saved := t.TempDir()
	if err := os.CopyFS(saved, os.DirFS(e.a.state)); err != nil {
		t.Fatal(err)
	}
	grow := smallFS(t, e.a.state, "40k")
	if err := os.CopyFS(e.a.state, os.DirFS(saved)); err != nil {
		t.Fatal(err)
	}
	cdir := filepath.Join(e.a.state, "configs", "home")
	backup := func(seq uint64) (summary, string) {
		t.Helper()
		r := e.a.run("backup", "-json", "home")
		var s summary
		if r.code != 0 || json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &s) != nil || s.Version != seq || len(s.Problems) > 0 {
			t.Fatalf("backup %d with the agent's state full: %s", seq, r)
		}
		if tmps, _ := filepath.Glob(filepath.Join(cdir, "*.tmp")); len(tmps) > 0 {
			t.Fatalf("backup %d left %v", seq, tmps)
		}
		return s, r.stderr
	}
	for seq := uint64(1); seq <= 2; seq++ {
		if _, stderr := backup(seq); !strings.Contains(stderr, "could not write the listing cache") || !strings.Contains(stderr, "no space left on device") {
			t.Errorf("backup %d does not say its listing cache could not be written:\n%s", seq, stderr)
		}
	}
	for _, seq := range []uint64{1, 2} {
		got, r := e.restore(seq)
		if r.code != 0 {
			t.Fatalf("restore home@%d: %s", seq, r)
		}
		compareTrees(t, fmt.Sprintf("home@%d, backed up with the agent's state full", seq), want, snapshot(t, got))
	}

	grow("16m")
	if _, stderr := backup(3); strings.Contains(stderr, "listing cache") {
		t.Errorf("backup 3, with room, warns about its listing cache:\n%s", stderr)
	}
	if s, _ := backup(4); s.FilesRead != 0 {
		t.Errorf("backup 4 read %d unchanged files: the cache backup 3 wrote was not kept", s.FilesRead)
	}
}
