package restore

import (
	"runtime"
	"testing"
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
