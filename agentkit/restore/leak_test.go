package restore

import (
	"context"
	"os"
	"path/filepath"
	"slices"
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

// Over files already there (-existing overwrite), every third of them
// changed, the files opened ahead of their reading (inplace.go) are
// closed too.
func testRunLeavesNothingOpen(t *testing.T) {
	for _, over := range []bool{false, true} {
		for _, cancel := range []bool{false, true} {
			src := &cancellingSource{countingSource: countingSource{memSource: memSource{}}, cancelAfter: 1 << 30}
			m, want := restoreCorpus(t, &src.countingSource)
			to := t.TempDir()
			o := Options{Source: src, ChunkKey: testKey, Manifest: m, Target: to, Meta: meta.Options{SkipOwner: true}, Workers: 4}
			if over {
				if _, err := Run(context.Background(), o); err != nil {
					t.Fatal(err)
				}
				for i, w := range want {
					if i%3 == 0 && len(w.data) > 0 {
						p := filepath.Join(to, w.path)
						b := slices.Clone(w.data)
						b[len(b)/2]++
						if err := os.WriteFile(p, b, 0o600); err != nil {
							t.Fatal(err)
						}
					}
				}
				o.Existing = Overwrite
			}
			ctx, stop := context.WithCancel(context.Background())
			after := src.frames + 1 + 60 // the listing, then 60 chunks
			if over {
				after = src.frames + 1 + 20
			}
			if cancel {
				src.cancelAfter, src.cancel = after, stop
			} else {
				src.cutAfter = after
			}
			_, err := Run(ctx, o)
			stop()
			if src.frames <= after {
				t.Fatalf("over files there %v: the restore took %d frames, ended before the failure after %d", over, src.frames, after)
			}
			if cancel && err == nil {
				t.Errorf("a cancelled restore returned no error")
			}
			open, err := testtree.OpenUnder(to)
			if err != nil {
				t.Fatal(err)
			}
			if len(open) != 0 {
				t.Errorf("over files there %v, cancelled %v: %d files of the target still open after the restore ended: %q", over, cancel, len(open), open[:min(5, len(open))])
			}
		}
	}
}
