package restore

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// BenchmarkRestoreSmallFiles restores a tree of many small files (like the
// benchmark's small-files shape: 100 a directory, 16 B to 4 KiB, one in
// twenty a copy of an earlier one) from memory, so the figures are the
// file side's alone: no vault, no TLS. VAULTNODE_BENCH_FILES sets the
// number of files (default 20,000), VAULTNODE_BENCH_DIR where the trees go
// (default a temporary directory; a filesystem of its own keeps other
// processes' deletions out of the way, see docs/performance.md item 8).
// It reports the process's CPU time per file restored.
func BenchmarkRestoreSmallFiles(b *testing.B) {
	n := 20000
	if s := os.Getenv("VAULTNODE_BENCH_FILES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	base := os.Getenv("VAULTNODE_BENCH_DIR")
	if base == "" {
		base = b.TempDir()
	}
	src := memSource{}
	m := smallFilesVersion(b, src, n)
	var cpu time.Duration
	for i := 0; b.Loop(); i++ {
		to := filepath.Join(base, fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), i))
		c0 := cpuTime()
		res, err := Run(context.Background(), Options{Source: src, ChunkKey: testKey, Manifest: m, Target: to,
			Meta: meta.Options{SkipOwner: true}, Workers: 8})
		cpu += cpuTime() - c0
		if err != nil {
			b.Fatalf("restore: %v", err)
		}
		if len(res.Problems) > 0 || res.Stats.Files != int64(n) {
			b.Fatalf("restore: %d files, problems %q", res.Stats.Files, res.Problems[:min(3, len(res.Problems))])
		}
	}
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*n), "cpu-us/file")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func smallFilesVersion(tb testing.TB, src memSource, n int) wire.Manifest {
	rng := rand.New(rand.NewPCG(11, 12))
	words := []string{"func", "return", "package", "import", "struct", "range", "error", "nil", "if", "for", "var", "type"}
	dirs := (n + 99) / 100
	nodes := []tree.Node{dir("src")}
	var contents [][]byte
	for d := range dirs {
		nodes = append(nodes, dir(fmt.Sprintf("src/m%d/p%d", d/50, d)))
		if d%50 == 0 {
			nodes = append(nodes, dir(fmt.Sprintf("src/m%d", d/50)))
		}
	}
	for i := range n {
		var data []byte
		if i > 10 && rng.IntN(20) == 0 {
			data = contents[rng.IntN(len(contents))]
		} else {
			size := int(16 * float64(uint(1)<<rng.IntN(9)) * (1 + rng.Float64()))
			data = fmt.Appendf(nil, "package p%d\n", i%dirs)
			for len(data) < size {
				data = append(data, words[rng.IntN(len(words))]...)
				data = append(data, ' ')
			}
			data = data[:min(size, 4096)]
		}
		contents = append(contents, data)
		f := file(fmt.Sprintf("src/m%d/p%d/f%d.go", (i%dirs)/50, i%dirs, i))
		f.Size = int64(len(data))
		f.Mtime = tree.Timespec{Sec: 1700000000 + int64(i)}
		f.Chunks = src.put(data, 1<<20)
		nodes = append(nodes, f)
	}
	slices.SortFunc(nodes, func(a, b tree.Node) int { return tree.Compare(a.Path, b.Path) })
	var buf bytes.Buffer
	w, err := tree.NewWriter(&buf)
	if err != nil {
		tb.Fatal(err)
	}
	for i := range nodes {
		if err := w.Write(&nodes[i]); err != nil {
			tb.Fatal(err)
		}
	}
	// The listing in chunks of 1 MiB, within tree.MaxListingChunk.
	return wire.Manifest{Config: "c", Seq: 1, Listing: src.put(buf.Bytes(), 1<<20)}
}
