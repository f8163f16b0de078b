package restore

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"testing"

	"vaultnode/internal/wire"
)

// TestDefaultWorkers: two workers per CPU the process may use, no fewer
// than four (a worker's waits for the vault and the disk) and no more than
// sixteen (each holds chunk-sized buffers).
func TestDefaultWorkers(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, c := range []struct{ procs, want int }{{1, 4}, {2, 4}, {3, 6}, {8, 16}, {64, 16}} {
		runtime.GOMAXPROCS(c.procs)
		if got := DefaultWorkers(); got != c.want {
			t.Errorf("GOMAXPROCS %d: %d workers, want %d", c.procs, got, c.want)
		}
	}
}

// keepingSource records what a restore told it about its downloads at once;
// its downloads fail (the restore stops at the listing).
type keepingSource struct{ keep []int }

func (s *keepingSource) KeepFrameReaders(n int) { s.keep = append(s.keep, n) }

func (s *keepingSource) GetChunks(context.Context, [][32]byte, func(*wire.Frame) error) error {
	return errors.New("no vault here")
}

// TestRunTellsSourceItsDownloads: a restore tells a source that keeps
// download readers (the client) how many downloads it runs at once, its
// workers and its listing, so none starts with a reader grown afresh.
func TestRunTellsSourceItsDownloads(t *testing.T) {
	for _, c := range []struct{ workers, want int }{{3, 4}, {0, DefaultWorkers() + 1}} {
		src := &keepingSource{}
		if _, err := Run(context.Background(), Options{Source: src, Workers: c.workers, Target: t.TempDir()}); err == nil {
			t.Fatal("the restore ran without a vault")
		}
		if !slices.Equal(src.keep, []int{c.want}) {
			t.Errorf("-parallel %d: the restore asked the source to keep %v readers, want [%d]", c.workers, src.keep, c.want)
		}
	}
}
