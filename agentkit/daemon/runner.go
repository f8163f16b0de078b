package daemon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime/debug"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"vaultnode/agentkit/backup"
	"vaultnode/agentkit/journal"
	schedgate "vaultnode/agentkit/schedule"
	"vaultnode/agentkit/source"
	"vaultnode/agentkit/state"
	"vaultnode/agentkit/watch"
	"vaultnode/internal/schedule"
	"vaultnode/internal/wire"
)

// runner keeps one configuration protected.
type runner struct {
	d        *daemon
	cfg      wire.Config
	chunkKey [32]byte
	gearKey  [32]byte
	log      *zap.Logger
	cancel   context.CancelFunc
	done     chan struct{}
	now      chan struct{}

	mu      sync.Mutex
	rep     wire.Report
	waiters []*syncWaiter // told of the next synchronization that starts (nextSync)
}

// syncOutcome is how a synchronization ended.
type syncOutcome struct {
	res *backup.Result
	err error
}

type syncWaiter struct {
	done     chan syncOutcome
	progress func(backup.Stats)
}

// nextSync returns a channel that receives the outcome of the next
// synchronization to start (not one already running), and has progress
// called with its counters meanwhile.
func (r *runner) nextSync(progress func(backup.Stats)) <-chan syncOutcome {
	w := &syncWaiter{done: make(chan syncOutcome, 1), progress: progress}
	r.mu.Lock()
	r.waiters = append(r.waiters, w)
	r.mu.Unlock()
	return w.done
}

func (r *runner) stop() {
	r.cancel()
	<-r.done
	r.mu.Lock()
	ws := r.waiters
	r.waiters = nil
	r.mu.Unlock()
	for _, w := range ws {
		w.done <- syncOutcome{err: errors.New("the configuration changed or was removed before its synchronization started: ask again")}
	}
}

func (r *runner) requestNow() {
	select {
	case r.now <- struct{}{}:
	default:
	}
}

func (r *runner) current() wire.Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rep
}

// report records and sends the configuration's state.
func (r *runner) report(ctx context.Context, state, reason string) {
	r.mu.Lock()
	r.rep.State, r.rep.Reason, r.rep.Time = state, reason, r.d.clk.Now()
	rep := r.rep
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := r.d.client.Report(ctx, rep); err != nil {
		r.log.Debug("cannot report state to the vault", zap.Error(err))
	}
}

func (r *runner) options() backup.Options {
	return backup.Options{Vault: r.d.client, Config: r.cfg, ChunkKey: r.chunkKey, GearKey: r.gearKey,
		State: r.d.o.State, Log: r.log}
}

func (r *runner) run(ctx context.Context) {
	sched, err := schedule.Parse(r.cfg.Schedule)
	if r.cfg.Schedule == "" {
		sched, err = schedule.Always24x7, nil
	}
	if err != nil {
		r.report(ctx, wire.AgentError, "bad schedule: "+err.Error())
		<-ctx.Done()
		return
	}
	gate := schedgate.NewGate(sched, r.d.clk)
	if r.cfg.Mode == wire.ModeContinuous {
		err := r.continuous(ctx, gate)
		if ctx.Err() != nil {
			return
		}
		r.log.Error("continuous capture unavailable; synchronizing on schedule instead", zap.Error(err))
		r.mu.Lock()
		r.rep.Capture = "none: " + err.Error()
		r.mu.Unlock()
	}
	r.scheduled(ctx, gate)
}

// last returns when the configuration's newest version finished.
func (r *runner) last(ctx context.Context) time.Time {
	ms, err := r.d.client.Versions(ctx, r.cfg.Name)
	if err != nil || len(ms) == 0 {
		return time.Time{}
	}
	return ms[len(ms)-1].Finished
}

// sleep waits d, or until a back-up-now request (true) or ctx ends.
func (r *runner) sleep(ctx context.Context, d time.Duration) (now bool, err error) {
	if d <= 0 {
		return false, ctx.Err()
	}
	t := r.d.clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false, ctx.Err()
	case <-t.C():
		return false, nil
	case <-r.now:
		return true, nil
	}
}

// scheduled synchronizes at the scheduled times: once per interval while
// the schedule is open, stopping at a window's end unless it runs to
// completion; a back-up-now request runs once at once.
func (r *runner) scheduled(ctx context.Context, gate *schedgate.Gate) {
	last := r.last(ctx)
	retry := r.d.o.Retry
	asked := false // a back-up-now request came while waiting to retry
	for ctx.Err() == nil {
		due := last.Add(r.cfg.SyncInterval())
		if last.IsZero() {
			due = r.d.clk.Now()
		}
		if !gate.Schedule().Open(r.d.clk.Now()) {
			r.report(ctx, wire.AgentWaiting, "outside the schedule; next window opens "+gate.NextStart().Format(time.RFC3339))
		}
		now := asked
		asked = false
		if !now {
			var err error
			if now, err = r.sleep(ctx, due.Sub(r.d.clk.Now())); err != nil {
				return
			}
		}
		if now {
			gate.RunNow()
		}
		permit, err := r.waitGate(ctx, gate)
		if err != nil {
			return
		}
		res, stopped, err := r.sync(ctx, permit)
		switch {
		case ctx.Err() != nil:
			return
		case stopped:
			r.report(ctx, wire.AgentWaiting, "the window closed during a synchronization; it resumes at the next window without re-sending what was sent")
		case errors.Is(err, state.ErrBusy):
			// `vault-agent backup` runs it now: not a failure.
			r.log.Info("synchronization deferred", zap.Error(err))
			r.report(ctx, wire.AgentWaiting, err.Error()+"; trying again in "+retry.String())
			if asked, err = r.sleep(ctx, retry); err != nil {
				return
			}
			// The other process's version counts: the schedule goes on
			// from the newest one.
			last = r.last(ctx)
			continue
		case err != nil:
			r.log.Error("synchronization failed", zap.Error(err))
			r.report(ctx, wire.AgentError, err.Error())
			if asked, err = r.sleep(ctx, retry); err != nil {
				return
			}
			retry = min(2*retry, 15*time.Minute)
			continue
		default:
			retry = r.d.o.Retry
			last = r.d.clk.Now()
			reason := fmt.Sprintf("version %d: %d files, %d bytes sent", res.Seq, res.Stats.Files, res.Stats.BytesSent)
			if len(res.Problems) > 0 {
				reason += fmt.Sprintf("; %d files could not be read", len(res.Problems))
			}
			r.report(ctx, wire.AgentIdle, reason)
		}
	}
}

// waitGate waits for the schedule, letting a back-up-now request through.
func (r *runner) waitGate(ctx context.Context, gate *schedgate.Gate) (*schedgate.Permit, error) {
	for {
		if p, ok := gate.TryStart(); ok {
			return p, nil
		}
		wctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-r.now:
				gate.RunNow()
			case <-wctx.Done():
			}
		}()
		p, err := gate.Wait(wctx)
		cancel()
		if err != nil {
			return nil, err
		}
		return p, nil
	}
}

// sync runs one full synchronization under a permit; it is cancelled when
// the window closes and the permit must stop.
func (r *runner) sync(ctx context.Context, permit *schedgate.Permit) (res *backup.Result, stopped bool, err error) {
	r.mu.Lock()
	ws := r.waiters
	r.waiters = nil
	r.mu.Unlock()
	defer func() {
		out := syncOutcome{res: res, err: err}
		switch {
		case stopped:
			out.err = errors.New("the schedule's window closed during the synchronization; it resumes at the next window")
		case err == nil && res == nil:
			out.err = errors.New("the synchronization did not finish")
		}
		for _, w := range ws {
			w.done <- out
		}
	}()
	r.report(ctx, wire.AgentRunning, "")
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopCh := make(chan struct{})
	go func() {
		for {
			select {
			case <-sctx.Done():
				return
			case <-r.d.clk.After(time.Second):
				if permit.MustStop() {
					close(stopCh)
					cancel()
					return
				}
			}
		}
	}()
	o := r.options()
	if len(ws) > 0 {
		o.Interval = ProgressEvery
		o.Progress = func(s *backup.Stats) {
			snap := s.Snapshot()
			for _, w := range ws {
				if w.progress != nil {
					w.progress(snap)
				}
			}
		}
	}
	// The lock first: the source's snapshots and staging are the
	// configuration's, as its cache is.
	if o.Lock, err = r.d.o.State.Lock(r.cfg.Name); err != nil {
		return nil, false, err
	}
	defer o.Lock.Release()
	release, err := source.Prepare(sctx, &o) // snapshots, system state
	if err != nil {
		return nil, false, err
	}
	res, err = backup.Run(sctx, o)
	release()
	// The daemon idles for hours between synchronizations: give the memory
	// of this one's pipeline (and of its set of queued chunk ids, 50 MB per
	// million new chunks) back to the system now rather than holding it.
	debug.FreeOSMemory()
	select {
	case <-stopCh:
		return nil, true, nil
	default:
	}
	return res, false, err
}

// continuous captures changes as they are made and records them as journal
// entries within seconds, with a checkpoint (a full synchronization, which
// also catches anything the kernel dropped) every interval and at quiet
// moments. It returns only when change capture cannot run.
func (r *runner) continuous(ctx context.Context, gate *schedgate.Gate) error {
	wo := r.d.o.Watch
	wo.Exclude = append(append([]string{}, wo.Exclude...), r.d.o.State.Path) // our own journal and caches
	w, err := watch.New(r.cfg.Paths, wo, r.log, r.d.clk)
	if err != nil {
		return err
	}
	lim := w.Limits()
	capture := lim.Backend
	if lim.Reason != "" {
		capture += " (" + lim.Reason + ")"
	}
	if lim.Degraded != "" {
		capture += "; degraded: " + lim.Degraded
	}
	r.mu.Lock()
	r.rep.Capture = capture
	r.mu.Unlock()
	r.log.Info("continuous capture", zap.String("backend", lim.Backend), zap.String("reason", lim.Reason))
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	werr := make(chan error, 1)
	go func() { werr <- w.Run(wctx) }()

	// Pending changes are journaled on disk before they are handled, so a
	// restart loses none of them (the journal degrades to a rescan marker
	// when its space cap is reached, never to silent loss).
	cdir, err := r.d.o.State.ConfigDir(r.cfg.Name)
	if err != nil {
		return err
	}
	jr, err := journal.Open(filepath.Join(cdir, "pending.journal"), journal.Options{}, r.log.Named("journal"))
	if err != nil {
		return err
	}
	defer jr.Close()
	pending := map[string]bool{}
	rescan := map[string]bool{}
	for _, e := range jr.Pending() {
		rescan[e.Path] = true // replayed as rescans: a directory among them is read whole
	}
	if rs, ok := jr.PendingRescan(); ok {
		r.log.Warn("a full rescan is pending from before the restart", zap.String("reason", rs.Reason))
	}
	replay := len(rescan) > 0 && !r.last(ctx).IsZero() // a journal record needs a version to stand on
	if replay {
		r.log.Info("replaying changes journaled before the restart", zap.Int("paths", len(rescan)))
	}
	full := true // the first checkpoint catches what changed while the agent was down
	records := 0
	retry := r.d.o.Retry
	var retryAt time.Time
	var checkpointAt time.Time
	const maxPending = 100000
	quiet := 30 * time.Second

	flush := func() error {
		now := r.d.clk.Now()
		if now.Before(retryAt) || !gate.Schedule().Open(now) {
			return nil
		}
		var err error
		upto := jr.LastSeq()
		switch {
		case full && replay:
			// First replay what was journaled before a restart, quickly;
			// the checkpoint follows at the next turn.
			ch := backup.Changes{Rescan: keys(rescan)}
			if _, err = backup.Delta(ctx, r.options(), r.d.client, ch, now); err == nil {
				clear(rescan)
				replay = false
				records++
			}
		case full:
			var permit *schedgate.Permit
			permit, _ = gate.TryStart()
			if permit == nil {
				return nil
			}
			var res *backup.Result
			var stopped bool
			res, stopped, err = r.sync(ctx, permit)
			if err == nil && !stopped {
				full, records = false, 0
				clear(pending)
				clear(rescan)
				checkpointAt = r.d.clk.Now()
				err = jr.Ack(upto)
				r.report(ctx, wire.AgentIdle, fmt.Sprintf("checkpoint: version %d", res.Seq))
			}
		case len(pending) > 0 || len(rescan) > 0:
			ch := backup.Changes{Paths: keys(pending), Rescan: keys(rescan)}
			var res *backup.DeltaResult
			res, err = backup.Delta(ctx, r.options(), r.d.client, ch, now)
			if err == nil {
				clear(pending)
				clear(rescan)
				err = jr.Ack(upto)
				if res.Journal != nil {
					records++
					r.log.Debug("journal record", zap.Uint64("base", res.Journal.Base), zap.Uint64("n", res.Journal.N),
						zap.Int("paths", len(ch.Paths)), zap.Int("rescans", len(ch.Rescan)), zap.Duration("took", res.Duration))
					r.report(ctx, wire.AgentIdle, fmt.Sprintf("journal record %d on version %d", res.Journal.N, res.Journal.Base))
				}
			}
		}
		if errors.Is(err, state.ErrBusy) && ctx.Err() == nil {
			r.log.Info("checkpoint deferred", zap.Error(err))
			r.report(ctx, wire.AgentWaiting, err.Error()+"; trying again in "+retry.String())
			retryAt = r.d.clk.Now().Add(retry)
			return nil
		}
		if err != nil && ctx.Err() == nil {
			r.log.Error("continuous synchronization failed; retrying", zap.Error(err))
			r.report(ctx, wire.AgentError, err.Error())
			retryAt = r.d.clk.Now().Add(retry)
			retry = min(2*retry, 15*time.Minute)
			return nil
		}
		retry = r.d.o.Retry
		return ctx.Err()
	}
	tick := r.d.clk.NewTimer(time.Second)
	defer tick.Stop()
	lastEvent := r.d.clk.Now()
	for {
		if err := flush(); err != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-werr:
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				err = errors.New("change capture stopped")
			}
			return err
		case b, ok := <-w.Batches():
			if !ok {
				continue
			}
			lastEvent = r.d.clk.Now()
			if b.Full {
				full = true
				if _, err := jr.RequestRescan("kernel queue overflow or periodic rescan"); err != nil {
					r.log.Error("cannot journal a rescan request", zap.Error(err))
				}
				continue
			}
			if _, err := jr.Add(append(append([]string{}, b.Paths...), b.Rescan...)); err != nil {
				r.log.Error("cannot journal pending changes; a full rescan will cover them", zap.Error(err))
				full = true
			}
			for _, p := range b.Paths {
				pending[p] = true
			}
			for _, p := range b.Rescan {
				rescan[p] = true
			}
			if len(pending)+len(rescan) > maxPending {
				full = true
			}
		case <-r.now:
			full = true
			gate.RunNow()
		case <-tick.C():
			tick.Reset(time.Second)
			now := r.d.clk.Now()
			if records > 0 && (now.Sub(checkpointAt) >= r.cfg.SyncInterval() || now.Sub(lastEvent) >= quiet) {
				full = true
			}
		}
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
