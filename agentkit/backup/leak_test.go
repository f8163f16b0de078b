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

// TestRunTakesTheLockAndSweeps: a synchronization of a configuration
// another holds is refused before it touches anything; once it holds the
// lock it removes the temporary files of synchronizations killed midway
// (nothing else removes them), and its own are gone when it ends, failed
// or not.
func TestRunTakesTheLockAndSweeps(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "f"), []byte("content"), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cdir, err := st.ConfigDir("c")
	if err != nil {
		t.Fatal(err)
	}
	stale := []string{filepath.Join(cdir, "listing-123.tmp"), filepath.Join(cdir, "dirs-456.tmp")}
	keep := filepath.Join(cdir, "listing-notes.txt")
	for _, p := range append(stale, keep) {
		if err := os.WriteFile(p, []byte("left by a killed synchronization"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	o := Options{Vault: failingVault{}, Config: wire.Config{Name: "c", Paths: []string{root}}, State: st, Interval: time.Hour}

	held, err := st.Lock("c")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Run(context.Background(), o); !errors.Is(err, state.ErrBusy) {
		t.Fatalf("Run while the configuration's lock is held: %v", err)
	}
	for _, p := range stale {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("a busy Run touched %s: %v", p, err)
		}
	}
	other := o
	other.Lock = held
	other.Config.Name = "d"
	if _, err := Run(context.Background(), other); err == nil || errors.Is(err, errUploadFailed) {
		t.Fatalf("Run of one configuration under another's lock: %v", err)
	}
	held.Release()

	if _, err := Run(context.Background(), o); !errors.Is(err, errUploadFailed) {
		t.Fatalf("Run once the lock is free: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(cdir, "*.tmp"))
	if len(left) != 0 {
		t.Fatalf("temporary files left after the run: %q", left)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("the sweep removed a file not its own: %v", err)
	}
	// The lock is free again for the next synchronization.
	l, err := st.Lock("c")
	if err != nil {
		t.Fatalf("Lock after Run: %v", err)
	}
	l.Release()
}
