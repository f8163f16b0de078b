// Command bench measures vaultnode against restic on one generated corpus:
// an initial backup, an incremental backup after a mutation, a backup with
// no change and a full restore. It prints a table, the ratios and the
// targets of issue 2, and writes the figures as JSON.
//
//	bench [-scale 1] [-seed 1] [-only vaultnode|restic] [-work DIR] [-keep]
//	      [-bin ./bin] [-restic restic] [-out out/bench/results.json] [-warm] [-runs 1]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"vaultnode/internal/clock"
	"vaultnode/internal/corpus"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// Phases, in the order they run.
const (
	phaseInitial     = "initial"
	phaseIncremental = "incremental"
	phaseNoChange    = "no-change"
	phaseRestore     = "restore"
	// phaseRollback restores the latest version over the tree a restore
	// made and the corpus's mutation then changed (untimed), as after
	// ransomware or a mistake: vaultnode with -existing overwrite, restic
	// with its default --overwrite always. Only when -phases names it.
	phaseRollback = "rollback"
)

// What the incremental phase follows (-mutation).
const (
	mutationEdit  = "edit"
	mutationTouch = "touch"
)

// allPhases are every phase, in their order; defaultPhases those run
// unless -phases says otherwise; phases those this run runs.
var (
	allPhases     = []string{phaseInitial, phaseIncremental, phaseNoChange, phaseRestore, phaseRollback}
	defaultPhases = allPhases[:4]
	phases        = defaultPhases
)

// avgChunk is the chunker's average chunk size (internal/chunker.AvgSize).
const avgChunk = 1 << 20

// tool is one backup program under test.
type tool interface {
	Name() string
	Setup(ctx context.Context) error
	Backup(ctx context.Context, res *phaseResult) error
	// Restore restores the latest version into dir and returns where the
	// corpus root landed; over: over the files there, replacing them.
	Restore(ctx context.Context, dir string, over bool, res *phaseResult) (string, error)
	StoreDir() string
	// SentIsStoreGrowth says bytes sent are measured as store growth.
	SentIsStoreGrowth() bool
	Close() error
}

// phaseResult is one tool's figures for one phase.
type phaseResult struct {
	Tool               string  `json:"tool"`
	Phase              string  `json:"phase"`
	WallSeconds        float64 `json:"wall_seconds"`
	MBPerSecond        float64 `json:"mb_per_second"` // corpus data bytes (holes excluded) / wall, 1 MB = 10^6 B
	CPUSeconds         float64 `json:"cpu_seconds"`   // client + server, user + system
	ClientCPUSeconds   float64 `json:"client_cpu_seconds"`
	ServerCPUSeconds   float64 `json:"server_cpu_seconds"`
	OtherCPUSeconds    float64 `json:"other_cpu_seconds"`        // the rest of the machine during the phase: contention
	CommitSeconds      float64 `json:"commit_seconds,omitempty"` // vaultnode: of the wall time, the commit request
	PeakRSSBytes       int64   `json:"peak_rss_bytes"`           // client + server
	ClientPeakRSSBytes int64   `json:"client_peak_rss_bytes"`
	ServerPeakRSSBytes int64   `json:"server_peak_rss_bytes"`
	// Minor page faults (first touches of memory): each costs the kernel
	// work, on some virtual machines tens of microseconds.
	ClientMinorFaults int64 `json:"client_minor_faults"`
	ServerMinorFaults int64 `json:"server_minor_faults"`
	// ServerPeakAnonBytes: of the vault's resident memory, the largest part
	// no file backs (polled; the rest of its peak is mapped files: its program,
	// the index).
	ServerPeakAnonBytes int64     `json:"server_peak_anon_bytes,omitempty"`
	BytesSent           int64     `json:"bytes_sent"`     // on the wire to the vault; restic: repository growth
	BytesReceived       int64     `json:"bytes_received"` // on the wire from the vault
	ReportedBytesSent   *int64    `json:"reported_bytes_sent,omitempty"`
	StoreBytesAdded     int64     `json:"store_bytes_added"`
	Notes               []string  `json:"notes,omitempty"`
	Error               string    `json:"error,omitempty"`
	Runs                int       `json:"runs,omitempty"`             // successful runs the median is taken from
	AllWallSeconds      []float64 `json:"all_wall_seconds,omitempty"` // their wall times, sorted

	clientWall time.Duration
}

func (r *phaseResult) addClient(u usage) {
	r.clientWall += u.wall
	r.ClientCPUSeconds += u.cpu.Seconds()
	r.ClientPeakRSSBytes = max(r.ClientPeakRSSBytes, u.maxRSS)
	r.ClientMinorFaults += u.minflt
}

// results is what results.json holds.
type results struct {
	Started       time.Time             `json:"started"`
	Host          map[string]string     `json:"host"`
	Scale         float64               `json:"scale"`
	Shape         string                `json:"shape"`
	Tree          string                `json:"tree,omitempty"` // -tree: the existing tree measured instead of a generated corpus
	NoSparse      bool                  `json:"no_sparse,omitempty"`
	Seed          uint64                `json:"seed"`
	Caches        string                `json:"caches"`
	RestoreFS     string                `json:"restore_fs"`
	Order         string                `json:"order"`
	Corpus        corpus.Stats          `json:"corpus"`
	CorpusSeconds float64               `json:"corpus_generate_seconds"`
	MutationKind  string                `json:"mutation_kind"` // -mutation: edit or touch
	Mutation      corpus.MutationStats  `json:"mutation"`
	SetupErrors   map[string]string     `json:"setup_errors,omitempty"`
	Phases        []*phaseResult        `json:"phases"` // the median run of each tool and phase
	Runs          [][]*phaseResult      `json:"runs"`
	Restores      map[string]restoreChk `json:"restore_check"`
	Targets       []target              `json:"targets"`
}

type restoreChk struct {
	Root        string   `json:"root"`
	Identical   bool     `json:"identical"`
	Differences []string `json:"differences,omitempty"`
	// AllocatedBytes is the disk space the restored tree takes: more than
	// the corpus's data when holes were written as zeros.
	AllocatedBytes int64 `json:"allocated_bytes"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scale := fs.Float64("scale", 1, "corpus size: 1 is about 1 GiB of data (plus 8 GiB of sparse holes)")
	seed := fs.Uint64("seed", 1, "corpus and mutation seed")
	keep := fs.Bool("keep", false, "keep the work directory (corpus, stores, logs; the restored trees too with -restore-fs=false)")
	work := fs.String("work", "out/bench/work", "work directory; its bench subdirectories are replaced")
	only := fs.String("only", "", "run one tool: vaultnode or restic")
	bin := fs.String("bin", "bin", "directory holding vaultd, vaultctl and vault-agent")
	resticBin := fs.String("restic", "restic", "restic program")
	out := fs.String("out", "out/bench/results.json", "where to write the results as JSON")
	warm := fs.Bool("warm", false, "do not drop page caches between phases")
	freshFS := fs.Bool("restore-fs", true, "restore into a fresh filesystem each time (as root), not a directory of the work directory's")
	fsType := fs.String("restore-fstype", "ext4", "type of the fresh restore filesystem: ext4, btrfs or xfs (reflinks, which a rollback uses)")
	runs := fs.Int("runs", 1, "repeat everything (fresh corpus and stores) this many times and report the median run of each phase")
	shape := fs.String("shape", corpus.ShapeCurrent, fmt.Sprintf("corpus shape, one of %v", corpus.Shapes))
	files := fs.Int("files", 0, "files of the small-files shape (0: 500,000 times -scale)")
	noSparse := fs.Bool("no-sparse", false, "leave the sparse files out of the corpus, so holes do not decide the ratios")
	mutation := fs.String("mutation", mutationEdit, "the change before the incremental phase: edit (new content in places, files added and deleted, a directory renamed) or touch (every file's times set, its content kept, as touch or chown -R leave a tree)")
	phaseList := fs.String("phases", strings.Join(defaultPhases, ","), "phases to run, in their order (bench-scale: initial,no-change)")
	summary := fs.Bool("summarize", false, "print the ratios of the results files given as arguments, one line per shape and phase, and exit")
	treeDir := fs.String("tree", "", "instead of a generated corpus, back up this existing tree where it is, read only (initial, no-change and restore); with the incremental phase named in -phases, a copy of it in the work directory, changed between the backups")
	agents := fs.Int("agents", 0, "instead of the phases: this many agents back up different trees (each -scale) into one vault at once, against one alone")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *summary {
		return summarize(stdout, fs.Args())
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q; see -help", fs.Args())
	}
	if *only != "" && *only != "vaultnode" && *only != "restic" {
		return fmt.Errorf("-only %q: use vaultnode or restic", *only)
	}
	var err error
	if phases, err = selectPhases(*phaseList); err != nil {
		return err
	}
	var tree, treeMark string
	if *treeDir != "" {
		if tree, treeMark, err = existingTree(*treeDir); err != nil {
			return err
		}
		if *agents > 0 {
			return fmt.Errorf("-tree and -agents: the many agents back up generated trees; give one of them")
		}
		if slices.Contains(phases, phaseIncremental) && !flagGiven(fs, "phases") {
			// The tree is measured where it is unless the incremental
			// phase, which changes it, is asked for by name.
			phases = slices.DeleteFunc(phases, func(p string) bool { return p == phaseIncremental })
		}
	}
	if *mutation != mutationEdit && *mutation != mutationTouch {
		return fmt.Errorf("-mutation %q: use %s or %s", *mutation, mutationEdit, mutationTouch)
	}
	if *runs < 1 {
		return fmt.Errorf("-runs %d: give at least 1", *runs)
	}
	clk := clock.Real{}
	workDir, err := filepath.Abs(*work)
	if err != nil {
		return fmt.Errorf("resolve work dir: %w", err)
	}
	if tree != "" {
		if r, err := filepath.Rel(tree, workDir); err == nil && r != ".." && !strings.HasPrefix(r, "../") {
			return fmt.Errorf("-tree %s holds the work directory %s, where the stores and restores go; give -work outside it", tree, workDir)
		}
	}
	binDir, err := filepath.Abs(*bin)
	if err != nil {
		return fmt.Errorf("resolve bin dir: %w", err)
	}
	if err := ownModule(workDir); err != nil {
		return err
	}
	b := &bench{
		clk: clk, r: runner{clk: clk}, work: workDir, bin: binDir, only: *only, scale: *scale, seed: *seed,
		shape: *shape, files: *files, noSparse: *noSparse, mutation: *mutation, tree: tree, treeMark: treeMark,
		logf: func(format string, a ...any) {
			fmt.Fprintf(stderr, "bench: %s %s\n", clk.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
		},
	}
	if *only != "restic" {
		for _, p := range []string{"vaultd", "vaultctl", "vault-agent"} {
			if _, err := os.Stat(filepath.Join(binDir, p)); err != nil {
				return fmt.Errorf("find %s: %w; run make build first (or -only restic)", p, err)
			}
		}
	}
	if *only != "vaultnode" && *agents == 0 { // many agents run vaultnode alone
		if b.restic, err = exec.LookPath(*resticBin); err != nil {
			return fmt.Errorf("find restic: %w; scripts/bench.sh installs restic 0.18.1 into out/bench/bin (or -only vaultnode)", err)
		}
	}

	res := &results{Started: clk.Now().UTC(), Scale: *scale, Seed: *seed, Shape: *shape, NoSparse: *noSparse, MutationKind: *mutation, Tree: tree, Host: hostInfo(b.restic), Restores: map[string]restoreChk{}, SetupErrors: map[string]string{}}
	b.cold = !*warm
	res.Caches = "cold: page caches dropped before every phase"
	if b.cold {
		if err := dropCaches(); err != nil {
			b.cold = false
			res.Caches = fmt.Sprintf("warm: every phase of both tools runs with warm caches (%v)", err)
		}
	} else {
		res.Caches = "warm: -warm given; every phase of both tools runs with warm caches"
	}
	b.logf("caches: %s", res.Caches)
	b.freshFS, b.fsType = *freshFS, *fsType
	if _, ok := mkfs[b.fsType]; !ok {
		return fmt.Errorf("-restore-fstype %q: want ext4, btrfs or xfs", b.fsType)
	}
	res.RestoreFS = restoreFSDir
	if b.freshFS {
		res.RestoreFS = fmt.Sprintf(restoreFSFresh, b.fsType)
	}
	if *agents > 0 {
		return b.manyAgents(ctx, *agents, *out, stdout)
	}

	if !*keep {
		defer b.clean()
	}
	res.Order = "each phase runs every tool in turn; with more than one run, every other run turns the other way"
	for i := range *runs {
		if *runs > 1 {
			b.logf("run %d of %d", i+1, *runs)
		}
		if err := b.once(ctx, res, i%2 == 1); err != nil {
			return err
		}
	}
	res.Phases = medians(res.Runs)

	res.Targets = evaluate(res)
	printReport(stdout, res)
	if err := writeJSON(*out, res); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nresults: %s\n", *out)
	if *keep {
		fmt.Fprintf(stdout, "work directory kept (last run): %s\n", workDir)
	}
	return nil
}

// bench runs the phases.
type bench struct {
	clk       clock.Clock
	r         runner
	work, bin string
	restic    string // restic program, "" when not run
	only      string
	scale     float64
	seed      uint64
	shape     string
	files     int
	noSparse  bool
	mutation  string // mutationEdit or mutationTouch
	tree      string // an existing tree measured in place of a generated corpus
	treeMark  string // the name of one of tree's entries (firstEntry)
	cold      bool
	freshFS   bool   // restore into a fresh filesystem (restorefs.go)
	fsType    string // of that filesystem
	logf      func(format string, a ...any)
}

var workSubdirs = []string{"corpus", "vaultnode", "restic", "restore-vaultnode", "restore-restic"}

// clean removes the subdirectories of the work directory bench makes;
// anything else there is left alone.
func (b *bench) clean() error {
	for _, name := range []string{"vaultnode", "restic"} {
		f := &restoreFS{img: filepath.Join(b.work, "restorefs-"+name+".img"), mnt: filepath.Join(b.work, "restorefs-"+name)}
		if err := f.unmountStale(); err != nil {
			return fmt.Errorf("clean work dir: %w", err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("clean work dir: %w", err)
		}
	}
	for _, d := range workSubdirs {
		if err := os.RemoveAll(filepath.Join(b.work, d)); err != nil {
			return fmt.Errorf("clean work dir: %w", err)
		}
	}
	return nil
}

// once generates a fresh corpus and runs every phase of every tool on it,
// appending the figures to res.Runs. Each phase runs every tool in turn, and
// reversed runs turn the other way: a tool's phase took 20-30 % longer
// after some of the other tool's phases than after others, ours and
// restic's alike (docs/performance.md, "Chunker, frames, readers'
// buffers"), so alternating spreads that over both instead of charging it
// to whichever always ran second.
func (b *bench) once(ctx context.Context, res *results, reversed bool) error {
	if err := b.clean(); err != nil {
		return err
	}
	corpusDir, marker := filepath.Join(b.work, "corpus"), corpus.SourceDir
	copyTree := b.tree != "" && slices.Contains(phases, phaseIncremental)
	if b.tree != "" {
		marker = b.treeMark
		if !copyTree {
			corpusDir = b.tree
		}
	}
	var tools []tool
	var vn *vaultnode
	if b.only != "restic" {
		vn = &vaultnode{bin: b.bin, work: filepath.Join(b.work, "vaultnode"), corpus: corpusDir, marker: marker, r: b.r, clk: b.clk}
		tools = append(tools, vn)
	}
	if b.restic != "" {
		tools = append(tools, &restic{bin: b.restic, work: filepath.Join(b.work, "restic"), corpus: corpusDir, r: b.r})
	}

	t0 := b.clk.Now()
	var err error
	if b.tree != "" {
		if copyTree {
			b.logf("copying the tree %s into %s: the incremental phase changes it", b.tree, corpusDir)
			if out, err := exec.CommandContext(ctx, "cp", "-a", b.tree+"/.", corpusDir).CombinedOutput(); err != nil {
				return fmt.Errorf("copy the tree for the incremental phase: %w: %s", err, out)
			}
		}
		b.logf("measuring the tree %s", corpusDir)
		if res.Corpus, err = corpus.Measure(corpusDir); err != nil {
			return err
		}
	} else {
		b.logf("generating the corpus (shape %s, scale %g, seed %d, no sparse %v) in %s", b.shape, b.scale, b.seed, b.noSparse, corpusDir)
		if res.Corpus, err = corpus.Generate(corpusDir, b.corpusOptions(b.seed)); err != nil {
			return err
		}
	}
	res.CorpusSeconds = b.clk.Now().Sub(t0).Seconds()
	b.logf("corpus: %d files, %s of data, %s apparent, in %.1f s", res.Corpus.Files, mb(res.Corpus.DataBytes), mb(res.Corpus.Bytes), res.CorpusSeconds)

	broken := map[string]error{}
	for _, t := range tools {
		b.logf("%s: setting up", t.Name())
		if err := t.Setup(ctx); err != nil {
			broken[t.Name()] = err
			res.SetupErrors[t.Name()] = err.Error()
			b.logf("%s: setup failed: %v", t.Name(), err)
		}
	}
	defer func() {
		for _, t := range tools {
			if err := t.Close(); err != nil {
				b.logf("%s: %v", t.Name(), err)
			}
		}
	}()

	var run []*phaseResult
	defer func() { res.Runs = append(res.Runs, run) }()
	var want []corpus.Entry
	for _, ph := range phases {
		switch ph {
		case phaseIncremental:
			b.logf("mutating the corpus")
			mutate := b.edit()
			if b.mutation == mutationTouch {
				mutate = corpus.Touch
			}
			if res.Mutation, err = mutate(corpusDir, b.seed); err != nil {
				return err
			}
			if b.tree != "" && vn != nil {
				// The mark may have been the directory MutateTree renamed:
				// the restore's copy is found by an entry it has now.
				if vn.marker, err = firstEntry(corpusDir); err != nil {
					return err
				}
			}
		case phaseRestore, phaseRollback:
			if want == nil {
				if want, err = corpus.Manifest(corpusDir); err != nil {
					return err
				}
			}
		}
		// The results keep the tools' order whatever the order they run
		// in, so medians matches a tool's phase across runs by position.
		prs := make([]*phaseResult, len(tools))
		for i, t := range tools {
			prs[i] = &phaseResult{Tool: t.Name(), Phase: ph}
			run = append(run, prs[i])
		}
		for _, i := range runOrder(len(tools), reversed) {
			t, pr := tools[i], prs[i]
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if broken[t.Name()] != nil {
				pr.Error = "setup failed"
				continue
			}
			restoreDir := filepath.Join(b.work, "restore-"+t.Name())
			var rfs *restoreFS
			if (ph == phaseRestore || ph == phaseRollback) && b.freshFS {
				if rfs, err = newRestoreFS(b.work, t.Name(), b.fsType, restoreFSSize(res.Corpus.DataBytes, res.Corpus.Bytes, res.Corpus.Files+res.Corpus.Dirs+res.Corpus.Symlinks)); err != nil {
					b.freshFS = false
					res.RestoreFS = fmt.Sprintf("%s (no fresh filesystem: %v)", restoreFSDir, err)
					b.logf("%s", res.RestoreFS)
				} else {
					restoreDir = rfs.Dir()
				}
			}
			if ph == phaseRollback {
				b.logf("%s: restoring and changing the tree to roll back", t.Name())
				if err := b.rollbackSetup(ctx, t, restoreDir); err != nil {
					pr.Error = err.Error()
					b.logf("%s: %v", t.Name(), err)
					if rfs != nil {
						rfs.Close()
					}
					continue
				}
			}
			if b.cold {
				if err := dropCaches(); err != nil {
					return err
				}
			}
			b.logf("%s: %s", t.Name(), ph)
			root, err := runPhase(ctx, t, ph, restoreDir, res.Corpus.DataBytes, pr)
			if err != nil {
				pr.Error = err.Error()
				b.logf("%s: %s failed: %v", t.Name(), ph, err)
			} else {
				b.logf("%s: %s took %.2f s", t.Name(), ph, pr.WallSeconds)
			}
			if (ph == phaseRestore || ph == phaseRollback) && root != "" {
				syscall.Sync()
				key := t.Name()
				if ph == phaseRollback {
					// Neither tool removes what the mutation added.
					key += rollbackSuffix
				}
				c := checkRestore(want, root, ph == phaseRollback)
				if prev, ok := res.Restores[key]; ok && !prev.Identical {
					c = prev // keep the first failure
				}
				res.Restores[key] = c
			}
			if rfs != nil {
				if err := rfs.Close(); err != nil {
					return fmt.Errorf("remove the restore filesystem: %w", err)
				}
			}
		}
	}
	return nil
}

// runOrder is the order in which a phase runs n tools: as given, or
// reversed.
func runOrder(n int, reversed bool) []int {
	out := make([]int, n)
	for k := range out {
		out[k] = k
		if reversed {
			out[k] = n - 1 - k
		}
	}
	return out
}

func (b *bench) corpusOptions(seed uint64) corpus.Options {
	return corpus.Options{Seed: seed, Scale: b.scale, Shape: b.shape, Files: b.files, NoSparse: b.noSparse}
}

// existingTree resolves -tree's directory: absolute, symbolic links
// resolved (both tools record the path they are given), and a directory
// with at least one entry, whose name it returns as the mark the restore
// check looks for.
func existingTree(dir string) (abs, mark string, err error) {
	abs, err = filepath.Abs(dir)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return "", "", fmt.Errorf("-tree %s: %w", dir, err)
	}
	if mark, err = firstEntry(abs); err != nil {
		return "", "", err
	}
	return abs, mark, nil
}

// firstEntry is the name of one entry of the directory dir: the mark by
// which a restore's copy of the tree is found under its target.
func firstEntry(dir string) (string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return "", fmt.Errorf("-tree: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if len(names) == 0 {
		if err == nil || errors.Is(err, io.EOF) {
			return "", fmt.Errorf("-tree %s: the directory is empty; give a tree to back up", dir)
		}
		return "", fmt.Errorf("-tree: %w", err)
	}
	return names[0], nil
}

// flagGiven reports whether the flag name was set on the command line.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// selectPhases keeps the phases named in list (comma-separated), in their
// order. An incremental phase needs the initial one before it.
func selectPhases(list string) ([]string, error) {
	want := map[string]bool{}
	for _, p := range strings.Split(list, ",") {
		if p = strings.TrimSpace(p); p != "" {
			want[p] = true
		}
	}
	var out []string
	for _, p := range allPhases {
		if want[p] {
			out = append(out, p)
			delete(want, p)
		}
	}
	if len(want) > 0 || len(out) == 0 {
		return nil, fmt.Errorf("-phases %q: choose among %s", list, strings.Join(allPhases, ","))
	}
	return out, nil
}

// medians picks, for each tool and phase, the run with the median wall time
// among those that succeeded (the first failure when none did).
func medians(runs [][]*phaseResult) []*phaseResult {
	var out []*phaseResult
	if len(runs) == 0 {
		return out
	}
	for i, first := range runs[0] {
		var ok []*phaseResult
		for _, run := range runs {
			if i < len(run) && run[i].Error == "" {
				ok = append(ok, run[i])
			}
		}
		if len(ok) == 0 {
			out = append(out, first)
			continue
		}
		sort.Slice(ok, func(a, b int) bool { return ok[a].WallSeconds < ok[b].WallSeconds })
		m := ok[(len(ok)-1)/2]
		if len(runs) > 1 {
			m.Runs = len(ok)
			for _, p := range ok {
				m.AllWallSeconds = append(m.AllWallSeconds, p.WallSeconds)
			}
		}
		out = append(out, m)
	}
	return out
}

// runPhase runs one phase of one tool and fills in the figures.
func runPhase(ctx context.Context, t tool, ph, restoreDir string, dataBytes int64, pr *phaseResult) (string, error) {
	store0, err := diskUsage(t.StoreDir())
	if err != nil {
		return "", err
	}
	busy0, err := hostBusy()
	if err != nil {
		return "", err
	}
	var root string
	if ph == phaseRestore || ph == phaseRollback {
		if err := os.MkdirAll(restoreDir, 0o755); err != nil {
			return "", fmt.Errorf("create restore dir: %w", err)
		}
		root, err = t.Restore(ctx, restoreDir, ph == phaseRollback, pr)
	} else {
		err = t.Backup(ctx, pr)
	}
	busy1, berr := hostBusy()
	if berr != nil {
		return root, errors.Join(err, berr)
	}
	store1, serr := diskUsage(t.StoreDir())
	if serr != nil {
		return root, errors.Join(err, serr)
	}
	pr.StoreBytesAdded = store1 - store0
	if t.SentIsStoreGrowth() {
		pr.BytesSent = pr.StoreBytesAdded
	}
	pr.WallSeconds = pr.clientWall.Seconds()
	if pr.WallSeconds > 0 {
		pr.MBPerSecond = float64(dataBytes) / 1e6 / pr.WallSeconds
	}
	pr.CPUSeconds = pr.ClientCPUSeconds + pr.ServerCPUSeconds
	pr.OtherCPUSeconds = max(0, (busy1-busy0).Seconds()-pr.CPUSeconds)
	pr.PeakRSSBytes = pr.ClientPeakRSSBytes + pr.ServerPeakRSSBytes
	return root, err
}

// edit is how the tree is changed: corpus.Mutate for a generated corpus,
// corpus.MutateTree for -tree's.
func (b *bench) edit() func(dir string, seed uint64) (corpus.MutationStats, error) {
	if b.tree != "" {
		return corpus.MutateTree
	}
	return corpus.Mutate
}

// rollbackSuffix names the check of a tool's rollback in results.Restores.
const rollbackSuffix = " (rollback)"

// rollbackSetup restores the latest version into dir and changes the
// tree there as the incremental phase changes the corpus (another seed):
// what the rollback phase restores over.
func (b *bench) rollbackSetup(ctx context.Context, t tool, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create restore dir: %w", err)
	}
	root, err := t.Restore(ctx, dir, false, &phaseResult{Tool: t.Name(), Phase: "rollback-setup"})
	if err != nil {
		return fmt.Errorf("restore before the rollback: %w", err)
	}
	if _, err := b.edit()(root, b.seed+1); err != nil {
		return fmt.Errorf("change the restored tree: %w", err)
	}
	syscall.Sync()
	return nil
}

// checkRestore compares the tree at root with want; extra: entries not in
// want are allowed (a rollback leaves what was added since).
func checkRestore(want []corpus.Entry, root string, extra bool) restoreChk {
	got, err := corpus.Manifest(root)
	if err != nil {
		return restoreChk{Root: root, Differences: []string{err.Error()}}
	}
	if extra {
		known := map[string]bool{}
		for _, e := range want {
			known[e.Path] = true
		}
		got = slices.DeleteFunc(got, func(e corpus.Entry) bool { return !known[e.Path] })
	}
	d := corpus.Diff(want, got, 10)
	c := restoreChk{Root: root, Identical: len(d) == 0, Differences: d}
	c.AllocatedBytes, _ = diskUsage(root)
	return c
}

func hostInfo(resticProg string) map[string]string {
	h := map[string]string{"cpus": fmt.Sprint(runtime.NumCPU()), "go": runtime.Version()}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		h["loadavg_at_start"] = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h["kernel"] = strings.TrimSpace(string(b))
	}
	if resticProg == "" {
		resticProg = "restic"
	}
	if b, err := exec.Command(resticProg, "version").Output(); err == nil {
		h["restic"] = strings.TrimSpace(string(b))
	}
	return h
}

func writeJSON(path string, res *results) error { return writeJSONValue(path, res) }

func writeJSONValue(path string, res any) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// ownModule makes dir a Go module of its own (a go.mod at its root), so
// that `go vet ./...` and `go test ./...` in the repository skip it: the
// corpora hold source-like files named .go that are not Go, and the work
// directory's default is under out/.
func ownModule(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("make the work directory: %w", err)
	}
	p := filepath.Join(dir, "go.mod")
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	if err := os.WriteFile(p, []byte("module scratch/benchwork\n"), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}
