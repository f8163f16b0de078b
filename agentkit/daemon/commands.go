package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"vaultnode/agentkit/backup"
	"vaultnode/agentkit/client"
	"vaultnode/agentkit/compare"
	"vaultnode/agentkit/meta"
	"vaultnode/agentkit/restore"
	"vaultnode/agentkit/treediff"
	"vaultnode/internal/wire"
)

// The command channel (docs/protocol.md, "Commands"): the daemon keeps a
// long-poll open to the vault, runs each command it receives in its own
// goroutine, reports progress every ProgressEvery and the result at the
// end. Each poll names the commands still running (and those whose result
// the vault has not yet taken), so the vault re-delivers only what this
// process lost: after its restart, or an answer lost on the way. All of it
// goes through the same client, and so through the bandwidth limit.

// ProgressEvery is how often a running command reports progress.
const ProgressEvery = 2 * time.Second

// commander runs the commands of one daemon.
type commander struct {
	d *daemon

	mu      sync.Mutex
	running map[string]context.CancelFunc  // id -> cancel, until its result is taken
	results map[string]*wire.CommandResult // finished, result not yet taken by the vault
	wg      sync.WaitGroup
}

// commands serves the command channel until ctx ends; it then stops the
// running commands and waits for them.
func (d *daemon) commands(ctx context.Context) {
	c := &commander{d: d, running: map[string]context.CancelFunc{}, results: map[string]*wire.CommandResult{}}
	defer c.wg.Wait()
	defer c.cancelAll()
	backoff := time.Second
	for ctx.Err() == nil {
		c.flush(ctx)
		started := d.clk.Now()
		batch, err := d.client.PollCommands(ctx, wire.CommandPoll{Running: c.ids(), WaitMS: wire.MaxCommandWait.Milliseconds()})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.log.Debug("command poll failed; polling again", zap.Error(err), zap.Duration("in", backoff))
			if d.sleep(ctx, backoff) != nil {
				return
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		for _, cmd := range batch.Commands {
			c.start(ctx, cmd)
		}
		if len(batch.Commands) == 0 && d.clk.Now().Sub(started) < time.Second {
			// Answered at once with nothing (a vault at its bound of
			// waiting polls): do not spin.
			if d.sleep(ctx, time.Second) != nil {
				return
			}
		}
	}
}

func (d *daemon) sleep(ctx context.Context, dur time.Duration) error {
	t := d.clk.NewTimer(dur)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}

func (c *commander) ids() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.running))
	for id := range c.running {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

func (c *commander) cancelAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cancel := range c.running {
		cancel()
	}
}

// start runs cmd unless it already runs here (a delivery raced with this
// process's poll) or the agent runs its maximum.
func (c *commander) start(ctx context.Context, cmd wire.AgentCommand) {
	c.mu.Lock()
	if _, ok := c.running[cmd.ID]; ok || len(c.running) >= wire.MaxRunningCommands {
		c.mu.Unlock()
		return
	}
	cctx, cancel := context.WithCancel(ctx)
	c.running[cmd.ID] = cancel
	c.mu.Unlock()
	log := c.d.log.With(zap.String("command", cmd.ID), zap.String("kind", cmd.Kind))
	log.Info("command received", zap.Int("attempt", cmd.Attempt))
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		pr := &progress{c: c, id: cmd.ID, clk: c.d, cancel: cancel, log: log}
		res := c.d.execute(cctx, cmd, pr, log)
		if ctx.Err() != nil {
			return // the daemon stops: the vault re-delivers it to the next
		}
		fitResult(&res)
		log.Info("command finished", zap.String("state", res.State), zap.String("error", res.Error))
		c.mu.Lock()
		c.results[cmd.ID] = &res
		c.mu.Unlock()
		c.send(ctx, cmd.ID)
	}()
}

// send hands one finished command's result to the vault; on failure it
// stays for the next flush.
func (c *commander) send(ctx context.Context, id string) {
	c.mu.Lock()
	res := c.results[id]
	c.mu.Unlock()
	if res == nil {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := c.d.client.CommandResult(sctx, id, *res)
	if err != nil && !client.IsCode(err, wire.CodeNotFound) {
		c.d.log.Debug("cannot report a command's result yet", zap.String("command", id), zap.Error(err))
		return
	}
	c.mu.Lock()
	delete(c.results, id)
	if cancel := c.running[id]; cancel != nil {
		cancel()
	}
	delete(c.running, id)
	c.mu.Unlock()
}

// flush sends the results the vault has not taken yet.
func (c *commander) flush(ctx context.Context) {
	c.mu.Lock()
	var ids []string
	for id := range c.results {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	for _, id := range ids {
		c.send(ctx, id)
	}
}

// progress reports a running command's counters at most every
// ProgressEvery; a vault that says the command has ended stops it.
type progress struct {
	c      *commander
	id     string
	clk    *daemon
	cancel context.CancelFunc
	log    *zap.Logger

	mu    sync.Mutex
	last  time.Time
	start time.Time
}

func (p *progress) report(ctx context.Context, pr wire.CommandProgress, force bool) {
	now := p.clk.clk.Now()
	p.mu.Lock()
	if p.start.IsZero() {
		p.start = now
	}
	if !force && now.Sub(p.last) < ProgressEvery {
		p.mu.Unlock()
		return
	}
	p.last = now
	if el := now.Sub(p.start).Seconds(); el > 0 {
		pr.Rate = int64(float64(pr.Bytes) / el)
	}
	p.mu.Unlock()
	if pr.Rate > 0 && pr.TotalBytes > pr.Bytes {
		pr.ETASeconds = (pr.TotalBytes - pr.Bytes) / pr.Rate
	}
	if len(pr.Message) > wire.MaxCommandText {
		pr.Message = pr.Message[:wire.MaxCommandText]
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := p.c.d.client.CommandProgress(sctx, p.id, pr)
	if client.IsCode(err, wire.CodeFinished) || client.IsCode(err, wire.CodeNotFound) {
		p.log.Warn("the vault says this command has ended; stopping it", zap.Error(err))
		p.cancel()
	}
}

// execute runs one command to its result.
func (d *daemon) execute(ctx context.Context, cmd wire.AgentCommand, pr *progress, log *zap.Logger) wire.CommandResult {
	if err := wire.CheckCommand(&cmd); err != nil {
		return failed(err)
	}
	switch cmd.Kind {
	case wire.CmdBrowse:
		if d.o.NoBrowse {
			return failed(fmt.Errorf("browse: %w (it runs with -browse none)", ErrNotAllowed))
		}
		res, err := Browse(cmd.Browse.Path, d.o.Browse)
		if err != nil {
			return failed(err)
		}
		return wire.CommandResult{State: wire.CmdDone, Files: int64(len(res.Entries)), Browse: res}
	case wire.CmdConfigChanged:
		if err := d.pollNow(ctx); err != nil {
			return failed(err)
		}
		return wire.CommandResult{State: wire.CmdDone}
	case wire.CmdBackup:
		return d.backupNow(ctx, cmd.Backup.Config, pr)
	case wire.CmdRestore:
		return d.restore(ctx, cmd.ID, cmd.Restore, pr, log)
	case wire.CmdCompare:
		return d.compare(ctx, cmd.Compare)
	}
	return failed(fmt.Errorf("unknown command kind %q: update this agent", cmd.Kind))
}

func failed(err error) wire.CommandResult {
	msg := err.Error()
	if len(msg) > wire.MaxCommandText {
		msg = msg[:wire.MaxCommandText]
	}
	return wire.CommandResult{State: wire.CmdFailed, Error: msg}
}

// backupNow asks the configuration's runner to synchronize now and waits
// for that synchronization.
func (d *daemon) backupNow(ctx context.Context, config string, pr *progress) wire.CommandResult {
	r := d.runner(config)
	if r == nil {
		if err := d.pollNow(ctx); err != nil { // a configuration made a moment ago
			return failed(fmt.Errorf("fetch configurations: %w", err))
		}
		if r = d.runner(config); r == nil {
			return failed(fmt.Errorf("this computer has no configuration %q", config))
		}
	}
	w := r.nextSync(func(s backup.Stats) {
		pr.report(ctx, wire.CommandProgress{Files: s.Files, Bytes: s.BytesRead, Message: fmt.Sprintf("%d files seen, %d bytes sent", s.Files, s.BytesSent)}, false)
	})
	r.requestNow()
	select {
	case <-ctx.Done():
		return failed(ctx.Err())
	case out := <-w:
		if out.err != nil {
			return failed(out.err)
		}
		res := wire.CommandResult{State: wire.CmdDone, Files: out.res.Stats.Files, Bytes: out.res.Stats.Bytes,
			Backup: &wire.BackupResult{Config: config, Seq: out.res.Seq, BytesSent: out.res.Stats.BytesSent}}
		for _, p := range out.res.Problems {
			addFailure(&res, p)
		}
		return res
	}
}

// pollNow fetches the configurations now; the runners it starts belong to
// the daemon, not to the command that asked (ctx only bounds the wait).
func (d *daemon) pollNow(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- d.poll(d.runCtx) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *daemon) runner(config string) *runner {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.runners[config]
}

// addFailure records one "PATH: reason" problem within the bound.
func addFailure(res *wire.CommandResult, problem string) {
	res.FailedCount++
	if len(res.Failures) >= wire.MaxCommandFailures {
		return
	}
	path, why, ok := strings.Cut(problem, ": ")
	if !ok {
		path, why = "", problem
	}
	// The version's path (quoted when restore quoted it), as the computer
	// names it.
	if uq, err := strconv.Unquote(path); err == nil {
		path = uq
	}
	if path != "" && !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	res.Failures = append(res.Failures, wire.FileFailure{Path: trim(path), Error: trim(why)})
}

func trim(s string) string {
	if len(s) > wire.MaxCommandText {
		return s[:wire.MaxCommandText]
	}
	return s
}

func (d *daemon) chunkKey() ([32]byte, error) {
	key, _, err := d.keys()
	return key, err
}

// keys are the company's chunk key and the chunker's key (zero when the
// vault sent none).
func (d *daemon) keys() (chunk, gear [32]byte, err error) {
	d.mu.Lock()
	comp := d.comp
	d.mu.Unlock()
	if comp == nil || len(comp.ChunkKey) != 32 {
		return chunk, gear, errors.New("the agent has not reached the vault yet: try again in a moment")
	}
	if len(comp.GearKey) == 32 {
		gear = [32]byte(comp.GearKey)
	}
	return [32]byte(comp.ChunkKey), gear, nil
}

// restore restores a version, path by path, to its original place or
// under another directory.
func (d *daemon) restore(ctx context.Context, id string, a *wire.RestoreArgs, pr *progress, log *zap.Logger) wire.CommandResult {
	key, gear, err := d.keys()
	if err != nil {
		return failed(err)
	}
	var m wire.Manifest
	var js []wire.Journal
	if a.Computer != "" || !a.At.IsZero() {
		// Another computer's version (of this company: its chunks are
		// read with this computer's keys), or a moment: the vault
		// resolves it for this command.
		var pt *wire.RestorePoint
		if pt, err = d.client.RestorePoint(ctx, id); err != nil {
			return failed(fmt.Errorf("read the version to restore: %w", err))
		}
		m, js = pt.Manifest, pt.Journal
	} else if m, js, err = compare.Resolve(ctx, d.client, a.Config, a.Version); err != nil {
		return failed(err)
	}
	target := a.To
	if target == "" {
		target = "/"
	}
	existing := restore.Existing(a.Existing)
	if existing == "" {
		existing = restore.Skip
	}
	prefixes := [][]byte{nil}
	if len(a.Paths) > 0 {
		prefixes = prefixes[:0]
		for _, p := range a.Paths {
			prefixes = append(prefixes, []byte(strings.TrimPrefix(p, "/")))
		}
	}
	res := wire.CommandResult{State: wire.CmdDone}
	for _, prefix := range prefixes {
		var base wire.CommandProgress = wire.CommandProgress{Files: res.Files, Bytes: res.Bytes}
		o := restore.Options{Source: d.client, ChunkKey: key, GearKey: gear, Manifest: m, Journal: js, Prefix: prefix, Target: target,
			Existing: existing, Meta: meta.Options{SkipOwner: os.Geteuid() != 0}, Log: log,
			Progress: func(s *restore.Stats) {
				pr.report(ctx, wire.CommandProgress{Files: base.Files + s.Files, Bytes: base.Bytes + s.Bytes, TotalBytes: m.Totals.Bytes,
					Failed: res.FailedCount + s.Failed}, false)
			}}
		out, err := restore.Run(ctx, o)
		if out != nil {
			res.Files += out.Stats.Files
			res.Bytes += out.Stats.Bytes
			res.Kept += out.Stats.Kept
			res.Reused += out.Stats.Reused
			for _, p := range out.Problems {
				addFailure(&res, p)
			}
		}
		if err != nil {
			f := failed(err)
			res.State, res.Error = f.State, f.Error
			return res
		}
	}
	return res
}

// compare lists what changed on the computer since a version: added,
// changed and removed paths.
func (d *daemon) compare(ctx context.Context, a *wire.CompareArgs) wire.CommandResult {
	key, err := d.chunkKey()
	if err != nil {
		return failed(err)
	}
	m, js, err := compare.Resolve(ctx, d.client, a.Config, a.Version)
	if err != nil {
		return failed(err)
	}
	var prefix []byte
	dir := "/"
	if a.Path != "" && a.Path != "/" {
		prefix, dir = []byte(strings.TrimPrefix(a.Path, "/")), a.Path
	}
	cr := &wire.CompareResult{Config: a.Config, Version: m.Seq, Added: []string{}, Changed: []string{}, Removed: []string{}}
	seen := map[string]bool{}
	add := func(list *[]string, i int, p string) {
		cr.Counts[i]++
		if len(*list) < wire.MaxCompareEntries {
			*list = append(*list, p)
		} else {
			cr.Truncated = true
		}
	}
	_, err = compare.Run(ctx, d.client, key, m, js, prefix, dir, treediff.Options{IgnoreBlocks: true}, func(df treediff.Difference) {
		p := string(df.Path)
		switch df.Field {
		case "missing":
			add(&cr.Removed, 2, p)
		case "extra":
			add(&cr.Added, 0, p)
		default:
			if !seen[p] && len(seen) < 4*wire.MaxCompareEntries {
				seen[p] = true
				add(&cr.Changed, 1, p)
			}
		}
	})
	if err != nil {
		return failed(err)
	}
	return wire.CommandResult{State: wire.CmdDone, Files: cr.Counts[0] + cr.Counts[1] + cr.Counts[2], Compare: cr}
}

// fitResult trims a result's lists until its JSON fits
// wire.MaxCommandResult, marking it truncated.
func fitResult(res *wire.CommandResult) {
	for range 20 {
		b, err := json.Marshal(res)
		if err != nil || len(b) <= wire.MaxCommandResult {
			return
		}
		half := func(n int) int { return n / 2 }
		res.Failures = res.Failures[:half(len(res.Failures))]
		if res.Browse != nil {
			res.Browse.Entries = res.Browse.Entries[:half(len(res.Browse.Entries))]
			res.Browse.Truncated = true
		}
		if c := res.Compare; c != nil {
			c.Added, c.Changed, c.Removed = c.Added[:half(len(c.Added))], c.Changed[:half(len(c.Changed))], c.Removed[:half(len(c.Removed))]
			c.Truncated = true
		}
	}
}
