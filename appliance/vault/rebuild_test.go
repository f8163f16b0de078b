package vault

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
)

// TestRebuildIndex: vaultctl rebuild-index's work: refused while the vault
// has the directory open; with it stopped, an index.db that is garbage is
// kept aside and rebuilt from the packs, and verify is clean.
func TestRebuildIndex(t *testing.T) {
	f := newVerifyFixture(t)
	if _, err := RebuildIndex(context.Background(), f.dir, zaptest.NewLogger(t), nil); !errors.Is(err, ErrRunning) {
		t.Fatalf("RebuildIndex with the vault open: %v, want ErrRunning", err)
	}
	f.v.Close()
	idx := filepath.Join(f.dir, "index.db")
	if err := os.WriteFile(idx, []byte(strings.Repeat("not a bbolt file ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	if v, err := Open(Options{Dir: f.dir, Listen: "127.0.0.1:0"}); err == nil {
		v.Close()
		t.Fatal("the vault opened on a garbage index")
	} else if !strings.Contains(err.Error(), "rebuild-index") {
		t.Fatalf("opening on a garbage index: %v; want a message that says to run rebuild-index", err)
	}
	pr, err := RebuildIndex(context.Background(), f.dir, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pr.Entries != 7 || pr.Skipped != 0 {
		t.Fatalf("rebuild indexed %+v, want 7 entries", pr)
	}
	old, _ := filepath.Glob(idx + ".old-*")
	if len(old) != 1 {
		t.Fatalf("old index kept as %v, want one copy", old)
	}
	f.open()
	f.mustClean(f.verify())
}
