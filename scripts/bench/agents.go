package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"text/tabwriter"
	"time"

	"vaultnode/internal/corpus"
)

// agentsResult is what -agents N writes as JSON: one agent alone, then N
// agents at once, each backing up its own tree into one vault.
type agentsResult struct {
	Started time.Time         `json:"started"`
	Host    map[string]string `json:"host"`
	Shape   string            `json:"shape"`
	Scale   float64           `json:"scale"`
	Agents  int               `json:"agents"`
	Caches  string            `json:"caches"`
	Alone   agentsPhase       `json:"alone"`
	AtOnce  agentsPhase       `json:"at_once"`
	Errors  []string          `json:"errors,omitempty"`
}

// agentsPhase is one initial backup of one or many agents.
type agentsPhase struct {
	Agents            int     `json:"agents"`
	DataBytes         int64   `json:"data_bytes"` // corpus data backed up, holes excluded
	WallSeconds       float64 `json:"wall_seconds"`
	MBPerSecond       float64 `json:"mb_per_second"` // aggregate ingest
	AgentCPUSeconds   float64 `json:"agent_cpu_seconds"`
	VaultCPUSeconds   float64 `json:"vault_cpu_seconds"`
	VaultCPUPerGB     float64 `json:"vault_cpu_seconds_per_gb"`
	VaultPeakRSSBytes int64   `json:"vault_peak_rss_bytes"`
	AgentPeakRSSBytes int64   `json:"agent_peak_rss_bytes"` // the largest agent
	BytesSent         int64   `json:"bytes_sent"`
	StoreBytesAdded   int64   `json:"store_bytes_added"`
	SlowestSeconds    float64 `json:"slowest_agent_seconds"`
	FastestSeconds    float64 `json:"fastest_agent_seconds"`
}

// manyAgents runs the many-agents benchmark: one vault, n+1 computers each
// in its own company with its own tree; the first backs up alone, then the
// other n back up at once.
func (b *bench) manyAgents(ctx context.Context, n int, out string, stdout io.Writer) error {
	root := filepath.Join(b.work, "agents")
	if err := os.RemoveAll(root); err != nil {
		return fmt.Errorf("clean work dir: %w", err)
	}
	res := &agentsResult{Started: b.clk.Now().UTC(), Host: hostInfo(b.restic), Shape: b.shape, Scale: b.scale, Agents: n}
	res.Caches = map[bool]string{true: "cold: page caches dropped before each phase", false: "warm"}[b.cold]
	trees := make([]string, n+1)
	sizes := make([]int64, n+1)
	b.logf("generating %d trees (shape %s, scale %g) under %s", n+1, b.shape, b.scale, root)
	for i := range trees {
		trees[i] = filepath.Join(root, fmt.Sprintf("tree-%02d", i))
		st, err := corpus.Generate(trees[i], b.corpusOptions(b.seed+uint64(i)*1000))
		if err != nil {
			return err
		}
		sizes[i] = st.DataBytes
	}
	v := &vaultnode{bin: b.bin, work: filepath.Join(root, "vaultnode"), corpus: trees[0], r: b.r, clk: b.clk}
	if err := v.Setup(ctx); err != nil {
		return err
	}
	defer v.Close()
	states := make([]string, n+1)
	states[0] = v.stateDir()
	for i := 1; i <= n; i++ {
		states[i] = filepath.Join(root, fmt.Sprintf("agent-%02d", i))
		company := fmt.Sprintf("bench-%02d", i)
		if err := os.MkdirAll(states[i], 0o700); err != nil {
			return fmt.Errorf("set up agent: %w", err)
		}
		if _, err := b.r.run(ctx, command{name: v.prog("vaultctl"), args: []string{"-data", v.StoreDir(), "company", "create", company}, logTo: v.logFile()}); err != nil {
			return err
		}
		if err := v.enrollAt(ctx, company, states[i], fmt.Sprintf("computer-%02d", i)); err != nil {
			return err
		}
		if _, err := b.r.run(ctx, command{name: v.prog("vault-agent"), args: []string{"-state", states[i], "config", "set", "corpus", "-path", trees[i]}, logTo: v.logFile()}); err != nil {
			return err
		}
	}
	phase := func(idx []int) (agentsPhase, error) {
		p := agentsPhase{Agents: len(idx)}
		if b.cold {
			if err := dropCaches(); err != nil {
				return p, err
			}
		}
		store0, err := diskUsage(v.StoreDir())
		if err != nil {
			return p, err
		}
		var mu sync.Mutex
		var errs []error
		pr := &phaseResult{}
		err = v.measureVault(ctx, pr, func() error {
			var wg sync.WaitGroup
			for _, i := range idx {
				wg.Add(1)
				go func() {
					defer wg.Done()
					u, err := b.r.run(ctx, command{name: v.prog("vault-agent"), args: []string{"-state", states[i], "backup", "-json", "corpus"},
						logTo: filepath.Join(root, fmt.Sprintf("agent-%02d.log", i)), stdout: true})
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						errs = append(errs, err)
					}
					p.AgentCPUSeconds += u.cpu.Seconds()
					p.AgentPeakRSSBytes = max(p.AgentPeakRSSBytes, u.maxRSS)
					s := u.wall.Seconds()
					p.SlowestSeconds = max(p.SlowestSeconds, s)
					if p.FastestSeconds == 0 || s < p.FastestSeconds {
						p.FastestSeconds = s
					}
					p.DataBytes += sizes[i]
				}()
			}
			wg.Wait()
			return nil
		})
		p.WallSeconds = p.SlowestSeconds
		if len(errs) > 0 {
			err = fmt.Errorf("%d of %d agents failed; first: %w", len(errs), len(idx), errs[0])
		}
		p.VaultCPUSeconds = pr.ServerCPUSeconds
		p.VaultPeakRSSBytes = pr.ServerPeakRSSBytes
		p.BytesSent = pr.BytesSent
		if store1, serr := diskUsage(v.StoreDir()); serr == nil {
			p.StoreBytesAdded = store1 - store0
		}
		if p.WallSeconds > 0 {
			p.MBPerSecond = float64(p.DataBytes) / 1e6 / p.WallSeconds
		}
		if p.DataBytes > 0 {
			p.VaultCPUPerGB = p.VaultCPUSeconds / (float64(p.DataBytes) / 1e9)
		}
		return p, err
	}
	var err error
	b.logf("one agent alone: initial backup")
	if res.Alone, err = phase([]int{0}); err != nil {
		res.Errors = append(res.Errors, "alone: "+err.Error())
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i + 1
	}
	b.logf("%d agents at once: initial backups", n)
	if res.AtOnce, err = phase(idx); err != nil {
		res.Errors = append(res.Errors, "at once: "+err.Error())
	}
	printAgents(stdout, res)
	if err := writeJSONValue(out, res); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nresults: %s\n", out)
	if len(res.Errors) > 0 {
		return fmt.Errorf("many agents: %v", res.Errors)
	}
	return nil
}

func printAgents(w io.Writer, r *agentsResult) {
	fmt.Fprintf(w, "\nmany agents: shape %s, scale %g, each agent its own company and tree; caches %s\nhost: %s\n\n", r.Shape, r.Scale, r.Caches, hostLine(r.Host))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "agents\tdata MB\twall s\tingest MB/s\tagent CPU s\tvault CPU s\tvault CPU s/GB\tvault peak RSS MB\tlargest agent RSS MB\tsent MB\tstore +MB\tfastest s\t")
	for _, p := range []agentsPhase{r.Alone, r.AtOnce} {
		fmt.Fprintf(tw, "%d\t%.1f\t%.2f\t%.1f\t%.2f\t%.2f\t%.2f\t%.0f\t%.0f\t%.1f\t%.1f\t%.2f\t\n", p.Agents, float64(p.DataBytes)/1e6, p.WallSeconds,
			p.MBPerSecond, p.AgentCPUSeconds, p.VaultCPUSeconds, p.VaultCPUPerGB, float64(p.VaultPeakRSSBytes)/1e6,
			float64(p.AgentPeakRSSBytes)/1e6, float64(p.BytesSent)/1e6, float64(p.StoreBytesAdded)/1e6, p.FastestSeconds)
	}
	tw.Flush()
	if r.Alone.MBPerSecond > 0 {
		fmt.Fprintf(w, "aggregate ingest at once / one alone: %.2fx; vault CPU share of all CPU at once: %.0f %%\n",
			r.AtOnce.MBPerSecond/r.Alone.MBPerSecond,
			100*r.AtOnce.VaultCPUSeconds/max(1e-9, r.AtOnce.VaultCPUSeconds+r.AtOnce.AgentCPUSeconds))
	}
	fmt.Fprintln(w, "on one machine the agents compete with the vault for the same cores: the vault is the bottleneck only if its CPU per GB grows with agents or its share of CPU dominates")
}
