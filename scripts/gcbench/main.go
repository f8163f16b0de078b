// Command gcbench measures garbage collection (issue 11, "Benchmark"):
// after 30 mutated versions of the benchmark corpus, prune down to 5 and
// collect. It reports the collection's time, the bytes reclaimed, the
// store's size over the live data's (target <= 1.1), vaultd's peak RSS
// during the collection (per million chunks), and the slowdown of a backup
// that runs during a collection (target <= 1.3x).
//
//	gcbench [-bin bin] [-scale 1] [-shape current] [-versions 30] [-keep 5] [-work DIR] [-out FILE]
//
// It drives real vaultd, vaultctl and vault-agent processes (make build).
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"vaultnode/internal/corpus"
)

type results struct {
	Scale            float64 `json:"scale"`
	Shape            string  `json:"shape"`
	Versions         int     `json:"versions"`
	Kept             int     `json:"kept"`
	CorpusBytes      int64   `json:"corpus_bytes"`
	Chunks           int64   `json:"chunks"`
	CollectSeconds   float64 `json:"collect_seconds"`
	Reclaimed        int64   `json:"reclaimed_bytes"`
	StoreBefore      int64   `json:"store_bytes_before"`
	StoreAfter       int64   `json:"store_bytes_after"`
	LiveAfter        int64   `json:"live_bytes_after"`
	StoreOverLive    float64 `json:"store_over_live"`
	PeakRSS          int64   `json:"vaultd_peak_rss_bytes"`
	BaseRSS          int64   `json:"vaultd_rss_before_bytes"`
	RSSPerMillion    float64 `json:"rss_growth_per_million_chunks_bytes"`
	BackupAlone      float64 `json:"backup_alone_seconds"`
	BackupDuring     float64 `json:"backup_during_collection_seconds"`
	Slowdown         float64 `json:"slowdown"`
	CollectionDuring float64 `json:"collection_during_backup_seconds"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gcbench:", err)
		os.Exit(1)
	}
}

var collectRE = regexp.MustCompile(`(\d+) of (\d+) chunks swept .* (\d+) bytes reclaimed; packs now hold (\d+) bytes, (\d+) of them live`)

func run() error {
	bin := flag.String("bin", "bin", "directory of vaultd, vaultctl and vault-agent")
	scale := flag.Float64("scale", 1, "corpus scale (1: about 1 GiB; 0.01 for a quick try)")
	shape := flag.String("shape", "current", "corpus shape")
	versions := flag.Int("versions", 30, "mutated versions backed up before the prune")
	keep := flag.Int("keep", 5, "versions the prune keeps")
	work := flag.String("work", "out/gcbench", "work directory (emptied first)")
	outFile := flag.String("out", "out/bench/gc.json", "results file")
	flag.Parse()
	abs, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	*bin = abs
	os.RemoveAll(*work)
	// The corpus holds Go-like sources: a go.mod of its own keeps them out
	// of the repository's ./... .
	if err := os.MkdirAll(*work, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*work, "go.mod"), []byte("module scratch/gcbench\n"), 0o644); err != nil {
		return err
	}
	src, data, state := filepath.Join(*work, "src"), filepath.Join(*work, "vault"), filepath.Join(*work, "agent")
	res := results{Scale: *scale, Shape: *shape, Versions: *versions, Kept: *keep}
	fmt.Printf("generating the corpus (shape %s, scale %g)\n", *shape, *scale)
	st, err := corpus.Generate(src, corpus.Options{Seed: 1, Scale: *scale, Shape: *shape})
	if err != nil {
		return err
	}
	res.CorpusBytes = st.Bytes

	listen := "127.0.0.1:17443"
	vd := exec.Command(filepath.Join(*bin, "vaultd"), "-data", data, "-listen", listen)
	logf, err := os.Create(filepath.Join(*work, "vaultd.log"))
	if err != nil {
		return err
	}
	vd.Stderr = logf
	stdout, err := vd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := vd.Start(); err != nil {
		return err
	}
	defer func() { vd.Process.Kill(); vd.Wait() }()
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && !strings.Contains(sc.Text(), "serving agents on") {
	}
	go func() { // drains vaultd's stdout until it exits
		for sc.Scan() {
		}
	}()
	ctl := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(*bin, "vaultctl"), append([]string{"-data", data}, args...)...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("vaultctl %v: %w: %s", args, err, out)
		}
		return string(out), nil
	}
	agent := func(args ...string) error {
		out, err := exec.Command(filepath.Join(*bin, "vault-agent"), append([]string{"-state", state}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("vault-agent %v: %w: %s", args, err, out)
		}
		return nil
	}
	if _, err := ctl("company", "create", "acme"); err != nil {
		return err
	}
	tok, err := ctl("token", "create", "acme")
	if err != nil {
		return err
	}
	if err := agent("enroll", "-vault", listen, "-token", strings.TrimSpace(tok), "-name", "bench"); err != nil {
		return err
	}
	if err := agent("config", "set", "home", "-path", src); err != nil {
		return err
	}
	backup := func() (time.Duration, error) {
		t := time.Now()
		err := agent("backup", "home")
		return time.Since(t), err
	}
	mutate := func(i int) error {
		_, err := corpus.Mutate(src, uint64(1000+i))
		return err
	}
	for i := 0; i < *versions; i++ {
		if i > 0 {
			if err := mutate(i); err != nil {
				return err
			}
		}
		if _, err := backup(); err != nil {
			return err
		}
		fmt.Printf("\rversion %d of %d backed up", i+1, *versions)
	}
	fmt.Println()
	if _, err := ctl("retention", "acme", fmt.Sprintf("last %d", *keep)); err != nil {
		return err
	}
	if _, err := ctl("prune"); err != nil {
		return err
	}
	packs := filepath.Join(data, "packs")
	if res.StoreBefore, err = diskUsage(packs); err != nil {
		return err
	}
	pid := vd.Process.Pid
	res.BaseRSS = rss(pid, "VmRSS")
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		fmt.Println("cannot reset vaultd's peak RSS (needs root): the peak includes the backups")
	}
	t := time.Now()
	out, err := ctl("collect")
	if err != nil {
		return err
	}
	res.CollectSeconds = time.Since(t).Seconds()
	res.PeakRSS = rss(pid, "VmHWM")
	m := collectRE.FindStringSubmatch(out)
	if m == nil {
		return fmt.Errorf("vaultctl collect printed %q", out)
	}
	res.Chunks, _ = strconv.ParseInt(m[2], 10, 64)
	res.Reclaimed, _ = strconv.ParseInt(m[3], 10, 64)
	res.StoreAfter, _ = strconv.ParseInt(m[4], 10, 64)
	res.LiveAfter, _ = strconv.ParseInt(m[5], 10, 64)
	if res.LiveAfter > 0 {
		res.StoreOverLive = float64(res.StoreAfter) / float64(res.LiveAfter)
	}
	if res.Chunks > 0 {
		res.RSSPerMillion = float64(res.PeakRSS-res.BaseRSS) / float64(res.Chunks) * 1e6
	}

	// Slowdown: a backup alone, then garbage to collect (more versions,
	// pruned), then a backup while the collection runs.
	if err := mutate(100); err != nil {
		return err
	}
	d, err := backup()
	if err != nil {
		return err
	}
	res.BackupAlone = d.Seconds()
	for i := 0; i < *keep+1; i++ {
		if err := mutate(200 + i); err != nil {
			return err
		}
		if _, err := backup(); err != nil {
			return err
		}
	}
	if _, err := ctl("prune"); err != nil {
		return err
	}
	if err := mutate(300); err != nil {
		return err
	}
	done := make(chan error, 1)
	var collectDur time.Duration
	go func() { // owner: run, which waits on done below
		t := time.Now()
		_, err := ctl("collect")
		collectDur = time.Since(t)
		done <- err
	}()
	d, err = backup()
	if cerr := <-done; cerr != nil {
		return cerr
	}
	if err != nil {
		return err
	}
	res.BackupDuring, res.CollectionDuring = d.Seconds(), collectDur.Seconds()
	res.Slowdown = res.BackupDuring / res.BackupAlone

	fmt.Printf("corpus %d bytes, %d versions pruned to %d, %d chunks before the collection\n", res.CorpusBytes, res.Versions, res.Kept, res.Chunks)
	fmt.Printf("collection: %.2f s, %d bytes reclaimed; packs %d -> %d bytes; store/live %.3f (target <= 1.1)\n",
		res.CollectSeconds, res.Reclaimed, res.StoreBefore, res.StoreAfter, res.StoreOverLive)
	fmt.Printf("vaultd RSS: %d before, peak %d during the collection: %.0f bytes per million chunks of growth\n", res.BaseRSS, res.PeakRSS, res.RSSPerMillion)
	fmt.Printf("backup alone %.2f s, during a collection %.2f s (the collection took %.2f s): slowdown %.2fx (target <= 1.3)\n",
		res.BackupAlone, res.BackupDuring, res.CollectionDuring, res.Slowdown)
	if err := os.MkdirAll(filepath.Dir(*outFile), 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	return os.WriteFile(*outFile, b, 0o644)
}

// rss reads a VmRSS or VmHWM line of /proc/PID/status, in bytes.
func rss(pid int, key string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == key+":" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n << 10
		}
	}
	return 0
}

// diskUsage sums the sizes of the files under dir.
func diskUsage(dir string) (int64, error) {
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n, err
}
