package backup

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"vaultnode/agentkit/state"
	"vaultnode/internal/wire"
)

// refusingVault refuses to open a session, but only once the walk has
// begun (started is closed); it counts every other request, which must not
// come.
type refusingVault struct {
	started <-chan struct{}
	other   atomic.Int32
}

var errRefused = errors.New("refused by the test's vault")

func (v *refusingVault) Open(ctx context.Context, config string) (*wire.Session, error) {
	select {
	case <-v.started:
		return nil, errRefused
	case <-time.After(20 * time.Second): // a guard against a hang, not a timing
		return nil, errors.New("the walk did not begin while the session was opening")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (v *refusingVault) Lack(context.Context, string, [][32]byte) ([]bool, error) {
	v.other.Add(1)
	return nil, errors.New("lack without a session")
}

func (v *refusingVault) Upload(context.Context, string, io.Reader) error {
	v.other.Add(1)
	return errors.New("upload without a session")
}

func (v *refusingVault) Commit(context.Context, string, wire.Commit) (uint64, error) {
	v.other.Add(1)
	return 0, errors.New("commit without a session")
}

func (v *refusingVault) Abort(context.Context, string) error {
	v.other.Add(1)
	return nil
}

// The walk starts while the session opens (the handshake and the open's
// round trip no longer come before the first file); a refused open still
// ends the backup with the open's error, and no request that needs a
// session is made.
func TestWalkBeginsWhileSessionOpens(t *testing.T) {
	root := t.TempDir()
	for i := range 50 {
		name := filepath.Join(root, "f"+string(rune('a'+i%26))+string(rune('a'+i/26)))
		if err := os.WriteFile(name, []byte(strings.Repeat("x", 100+i)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	var once sync.Once
	v := &refusingVault{started: started}
	_, err = Run(context.Background(), Options{Vault: v, Config: wire.Config{Name: "c", Paths: []string{root}}, State: st,
		Interval: time.Millisecond, Progress: func(s *Stats) {
			if atomic.LoadInt64(&s.Files) > 0 {
				once.Do(func() { close(started) })
			}
		}})
	if !errors.Is(err, errRefused) || !strings.Contains(err.Error(), "open session") {
		t.Fatalf("backup with a refused session: %v; want the open's error", err)
	}
	if n := v.other.Load(); n != 0 {
		t.Errorf("%d requests that need a session were made without one", n)
	}
}
