package restore

import (
	"context"
	"testing"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/testtree"
	"vaultnode/internal/wire"
)

// cancellingSource cancels the restore after a number of frames.
type cancellingSource struct {
	countingSource
	cancelAfter int
	cancel      context.CancelFunc
}

func (c *cancellingSource) GetChunks(ctx context.Context, ids [][32]byte, fn func(f *wire.Frame) error) error {
	return c.countingSource.GetChunks(ctx, ids, func(f *wire.Frame) error {
		c.mu.Lock()
		stop := c.frames > c.cancelAfter
		c.mu.Unlock()
		if stop {
			c.cancel()
		}
		return fn(f)
	})
}

// A restore that fails (the connection lost) or is cancelled half way
// leaves no file of the target open: a daemon runs restores for months.
func TestRunLeavesNothingOpen(t *testing.T) { forEachNaming(t, testRunLeavesNothingOpen) }

func testRunLeavesNothingOpen(t *testing.T) {
	for _, cancel := range []bool{false, true} {
		src := &cancellingSource{countingSource: countingSource{memSource: memSource{}}, cancelAfter: 1 << 30}
		m, _ := restoreCorpus(t, &src.countingSource)
		ctx, stop := context.WithCancel(context.Background())
		if cancel {
			src.cancelAfter, src.cancel = 1+60, stop
		} else {
			src.cutAfter = 1 + 60
		}
		to := t.TempDir()
		_, err := Run(ctx, Options{Source: src, ChunkKey: testKey, Manifest: m, Target: to,
			Meta: meta.Options{SkipOwner: true}, Workers: 4})
		stop()
		if cancel && err == nil {
			t.Errorf("a cancelled restore returned no error")
		}
		open, err := testtree.OpenUnder(to)
		if err != nil {
			t.Fatal(err)
		}
		if len(open) != 0 {
			t.Errorf("cancelled %v: %d files of the target still open after the restore ended: %q", cancel, len(open), open[:min(5, len(open))])
		}
	}
}
