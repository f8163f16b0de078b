package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vaultnode/agentkit/state"
	"vaultnode/internal/testtree"
	"vaultnode/internal/wire"
)

// failingVault opens sessions and lacks every chunk, but fails every
// upload: a backup that ends half way with files open in its queues.
type failingVault struct{}

var errUploadFailed = errors.New("upload failed in the test's vault")

func (failingVault) Open(context.Context, string) (*wire.Session, error) {
	return &wire.Session{ID: "s"}, nil
}

func (failingVault) Lack(_ context.Context, _ string, ids [][32]byte) ([]bool, error) {
	lack := make([]bool, len(ids))
	for i := range lack {
		lack[i] = true
	}
	return lack, nil
}

func (failingVault) Upload(_ context.Context, _ string, body io.Reader) error {
	return errUploadFailed
}

func (failingVault) Commit(context.Context, string, wire.Commit) (uint64, error) {
	return 0, errors.New("commit after a failed upload")
}

func (failingVault) Abort(context.Context, string) error { return nil }

// TestFailedBackupClosesItsFiles: a backup that fails while files wait in
// its queues (opened by the walker, not yet read) leaves none of them
// open; a daemon retries failed backups for days.
func TestFailedBackupClosesItsFiles(t *testing.T) {
	root := t.TempDir()
	for d := range 40 {
		dir := filepath.Join(root, fmt.Sprintf("d%02d", d))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for f := range 100 {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", f)), []byte(strings.Repeat(fmt.Sprint(d, f), 300)), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for attempt := range 3 {
		_, err = Run(context.Background(), Options{Vault: failingVault{}, Config: wire.Config{Name: "c", Paths: []string{root}}, State: st,
			Interval: time.Hour})
		if !errors.Is(err, errUploadFailed) {
			t.Fatalf("backup against a vault whose uploads fail: %v", err)
		}
		open, err := testtree.OpenUnder(root)
		if err != nil {
			t.Fatal(err)
		}
		if len(open) != 0 {
			t.Fatalf("attempt %d: %d files of the tree still open after the backup failed: %q", attempt+1, len(open), open[:min(5, len(open))])
		}
	}
}
