// Package jobs runs the vault's long work (verify, prune, garbage
// collection; later tape and replication) as background jobs: each has an
// id, a kind, progress (items, bytes, rate, ETA), a result and a cancel; at
// most one job of a kind runs at a time; and every job's record is kept in a
// History (the catalog), written when the job starts and when it ends, so a
// job that a crash cut short is found "running" at the next start and
// recorded as interrupted (Recover).
//
// A kind is registered with one call (Register); its function gets a
// context, cancelled by Cancel or Close, and a *Progress to report to.
package jobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"vaultnode/internal/clock"
)

// Errors of the runner.
var (
	ErrBusy        = errors.New("a job of this kind is already running")
	ErrUnknownKind = errors.New("unknown job kind")
	ErrNotFound    = errors.New("no such job")
	ErrClosed      = errors.New("the job runner is stopped")
)

// Kind names a kind of job.
type Kind string

// The kinds the vault registers ("collect" is registered by garbage
// collection).
const (
	KindVerify  Kind = "verify"
	KindPrune   Kind = "prune"
	KindCollect Kind = "collect"
)

// State is where a job is.
type State string

// States of a job. Every state but Running is final.
const (
	Running     State = "running"
	Done        State = "done"
	Failed      State = "failed"
	Canceled    State = "canceled"
	Interrupted State = "interrupted" // the vault stopped (or crashed) while it ran
)

// Counts are a job's progress: items and bytes done, and the totals when
// known (0: unknown).
type Counts struct {
	Items      int64 `json:"items"`
	Bytes      int64 `json:"bytes"`
	TotalItems int64 `json:"total_items,omitempty"`
	TotalBytes int64 `json:"total_bytes,omitempty"`
}

// Record is a job as its history keeps it.
type Record struct {
	ID       string          `json:"id"`
	Kind     Kind            `json:"kind"`
	State    State           `json:"state"`
	By       string          `json:"by"` // who started it: "admin socket", "schedule", ...
	Started  time.Time       `json:"started"`
	Ended    time.Time       `json:"ended,omitzero"`
	Progress Counts          `json:"progress"`
	Result   json.RawMessage `json:"result,omitempty"` // the kind's result, JSON
	Error    string          `json:"error,omitempty"`
}

// maxKept bounds the finished jobs a runner keeps in memory (Done, Get
// without reading the history); older ones are read from the history.
const maxKept = 256

// Limits of a record, so the history stays small.
const (
	MaxResult = 1 << 20
	MaxError  = 4 << 10
)

// View is a record with the rate and time left, computed when asked.
type View struct {
	Record
	BytesPerSecond float64       `json:"bytes_per_second"`
	ItemsPerSecond float64       `json:"items_per_second"`
	ETA            time.Duration `json:"eta,omitempty"` // 0: unknown or done
}

// History keeps job records (the catalog satisfies it through commands).
type History interface {
	// PutJob stores a job's record, replacing one with its id.
	PutJob(r Record) error
	// Jobs lists the records, oldest first.
	Jobs() ([]Record, error)
}

// Func does a job's work. It must return soon after ctx is cancelled
// (with ctx.Err() or an error wrapping it) and should report progress to p.
// Its result is stored as JSON.
type Func func(ctx context.Context, p *Progress) (result any, err error)

// Progress is what a running job reports; safe for concurrent use.
type Progress struct {
	mu sync.Mutex
	c  Counts
}

// Add counts items and bytes done.
func (p *Progress) Add(items, bytes int64) {
	p.mu.Lock()
	p.c.Items += items
	p.c.Bytes += bytes
	p.mu.Unlock()
}

// SetTotals sets the known totals (0: unknown).
func (p *Progress) SetTotals(items, bytes int64) {
	p.mu.Lock()
	p.c.TotalItems, p.c.TotalBytes = items, bytes
	p.mu.Unlock()
}

// Counts returns the progress so far.
func (p *Progress) Counts() Counts {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.c
}

type job struct {
	rec    Record
	prog   *Progress
	cancel context.CancelFunc
	done   chan struct{}
}

// Runner runs jobs.
type Runner struct {
	clk  clock.Clock
	hist History
	log  *zap.Logger
	m    *metrics

	mu      sync.Mutex
	kinds   map[Kind]Func
	running map[Kind]*job
	byID    map[string]*job // running and finished since start
	closed  bool
	wg      sync.WaitGroup
	ctx     context.Context // parent of every job: cancelled by Close
	stop    context.CancelFunc
}

// New makes a runner that records jobs in hist and registers its metrics
// with reg (nil: none).
func New(clk clock.Clock, hist History, log *zap.Logger, reg prometheus.Registerer) *Runner {
	if log == nil {
		log = zap.NewNop()
	}
	ctx, stop := context.WithCancel(context.Background())
	return &Runner{clk: clk, hist: hist, log: log, m: newMetrics(reg), kinds: map[Kind]Func{},
		running: map[Kind]*job{}, byID: map[string]*job{}, ctx: ctx, stop: stop}
}

// Register adds a kind of job. Registering a kind twice panics: a
// programming error.
func (r *Runner) Register(kind Kind, fn Func) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.kinds[kind]; ok {
		panic(fmt.Sprintf("jobs: kind %q registered twice", kind))
	}
	r.kinds[kind] = fn
	r.m.register(kind)
}

// Kinds lists the registered kinds.
func (r *Runner) Kinds() []Kind {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Kind
	for k := range r.kinds {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Recover records every job its history still shows running as
// interrupted: the vault stopped while it ran. Call it once at start,
// before Start.
func (r *Runner) Recover() (int, error) {
	recs, err := r.hist.Jobs()
	if err != nil {
		return 0, fmt.Errorf("read job history: %w", err)
	}
	n := 0
	now := r.clk.Now()
	for _, rec := range recs {
		if rec.State != Running {
			continue
		}
		rec.State, rec.Ended = Interrupted, now
		rec.Error = "the vault stopped while the job ran; run it again"
		if err := r.hist.PutJob(rec); err != nil {
			return n, fmt.Errorf("record job %s as interrupted: %w", rec.ID, err)
		}
		r.m.finished(rec)
		r.log.Warn("job interrupted by a stop of the vault", zap.String("job", rec.ID), zap.String("kind", string(rec.Kind)))
		n++
	}
	return n, nil
}

// Start starts a job of kind, recorded as started by by. With a job of that
// kind running it returns ErrBusy and the running job's record.
func (r *Runner) Start(kind Kind, by string) (Record, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return Record{}, ErrClosed
	}
	fn := r.kinds[kind]
	if fn == nil {
		return Record{}, fmt.Errorf("%w %q", ErrUnknownKind, kind)
	}
	if j := r.running[kind]; j != nil {
		return j.rec, fmt.Errorf("%w: %s (job %s, started %s)", ErrBusy, kind, j.rec.ID, j.rec.Started.Format(time.DateTime))
	}
	var b [6]byte
	rand.Read(b[:])
	rec := Record{ID: string(kind) + "-" + hex.EncodeToString(b[:]), Kind: kind, State: Running, By: by, Started: r.clk.Now()}
	if err := r.hist.PutJob(rec); err != nil {
		return Record{}, fmt.Errorf("record job: %w", err)
	}
	ctx, cancel := context.WithCancel(r.ctx)
	j := &job{rec: rec, prog: &Progress{}, cancel: cancel, done: make(chan struct{})}
	r.running[kind], r.byID[rec.ID] = j, j
	r.m.started(kind)
	r.log.Info("job started", zap.String("job", rec.ID), zap.String("by", by))
	r.wg.Add(1)
	go r.run(ctx, j, fn)
	return rec, nil
}

func (r *Runner) run(ctx context.Context, j *job, fn Func) {
	defer r.wg.Done()
	defer close(j.done)
	res, err := func() (res any, err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("job panicked: %v", p)
			}
		}()
		return fn(ctx, j.prog)
	}()
	rec := j.rec
	rec.Progress = j.prog.Counts()
	rec.Ended = r.clk.Now()
	switch {
	case err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled):
		rec.State = Canceled
		if r.ctx.Err() != nil {
			rec.State = Interrupted // the vault is stopping
		}
		rec.Error = err.Error()
	case err != nil:
		rec.State, rec.Error = Failed, err.Error()
	default:
		rec.State = Done
	}
	if len(rec.Error) > MaxError {
		rec.Error = rec.Error[:MaxError]
	}
	if res != nil {
		b, merr := json.Marshal(res)
		switch {
		case merr != nil:
			rec.Error = fmt.Sprintf("encode result: %v", merr)
		case len(b) > MaxResult:
			rec.Error = fmt.Sprintf("result of %d bytes over the %d-byte limit: left out", len(b), MaxResult)
		default:
			rec.Result = b
		}
	}
	if perr := r.hist.PutJob(rec); perr != nil {
		r.log.Error("record the end of a job", zap.String("job", rec.ID), zap.Error(perr))
	}
	r.mu.Lock()
	j.rec = rec
	delete(r.running, rec.Kind)
	if len(r.byID) > maxKept { // finished jobs are in the history too
		for id, o := range r.byID {
			if o != j && o.rec.State != Running {
				delete(r.byID, id)
			}
		}
	}
	r.mu.Unlock()
	j.cancel()
	r.m.finished(rec)
	r.log.Info("job ended", zap.String("job", rec.ID), zap.String("state", string(rec.State)), zap.String("error", rec.Error))
}

// Cancel asks a running job to stop; it ends as canceled. Cancelling a
// finished job changes nothing.
func (r *Runner) Cancel(id string) (Record, error) {
	r.mu.Lock()
	j := r.byID[id]
	r.mu.Unlock()
	if j == nil {
		v, err := r.Get(id)
		return v.Record, err
	}
	j.cancel()
	return r.snapshot(j).Record, nil
}

// Done returns a channel closed when the job ends; for a job this runner
// is not running (ended long ago, or unknown), one already closed.
func (r *Runner) Done(id string) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if j := r.byID[id]; j != nil {
		return j.done
	}
	c := make(chan struct{})
	close(c)
	return c
}

func (r *Runner) snapshot(j *job) View {
	r.mu.Lock()
	rec := j.rec
	r.mu.Unlock()
	if rec.State == Running {
		rec.Progress = j.prog.Counts()
	}
	return r.view(rec)
}

func (r *Runner) view(rec Record) View {
	v := View{Record: rec}
	end := rec.Ended
	if end.IsZero() {
		end = r.clk.Now()
	}
	secs := end.Sub(rec.Started).Seconds()
	if secs <= 0 {
		return v
	}
	c := rec.Progress
	v.BytesPerSecond = float64(c.Bytes) / secs
	v.ItemsPerSecond = float64(c.Items) / secs
	if rec.State != Running {
		return v
	}
	switch {
	case c.TotalBytes > 0 && c.Bytes > 0:
		v.ETA = time.Duration(float64(c.TotalBytes-c.Bytes) / v.BytesPerSecond * float64(time.Second))
	case c.TotalItems > 0 && c.Items > 0:
		v.ETA = time.Duration(float64(c.TotalItems-c.Items) / v.ItemsPerSecond * float64(time.Second))
	}
	if v.ETA < 0 {
		v.ETA = 0
	}
	return v
}

// Get returns a job: live progress for a running one, else its record
// from the history.
func (r *Runner) Get(id string) (View, error) {
	r.mu.Lock()
	j := r.byID[id]
	r.mu.Unlock()
	if j != nil {
		return r.snapshot(j), nil
	}
	recs, err := r.hist.Jobs()
	if err != nil {
		return View{}, err
	}
	for _, rec := range recs {
		if rec.ID == id {
			return r.view(rec), nil
		}
	}
	return View{}, fmt.Errorf("job %q: %w", id, ErrNotFound)
}

// List returns every job in the history, oldest first, with live progress
// for the running ones.
func (r *Runner) List() ([]View, error) {
	recs, err := r.hist.Jobs()
	if err != nil {
		return nil, err
	}
	out := make([]View, 0, len(recs))
	for _, rec := range recs {
		r.mu.Lock()
		j := r.byID[rec.ID]
		r.mu.Unlock()
		if j != nil {
			out = append(out, r.snapshot(j))
		} else {
			out = append(out, r.view(rec))
		}
	}
	return out, nil
}

// Last returns the newest record of kind in the history (ok false if none).
func (r *Runner) Last(kind Kind) (Record, bool, error) {
	recs, err := r.hist.Jobs()
	if err != nil {
		return Record{}, false, err
	}
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].Kind == kind {
			return recs[i], true, nil
		}
	}
	return Record{}, false, nil
}

// Close cancels every running job, waits for them (they end as
// interrupted) and refuses new ones.
func (r *Runner) Close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.stop()
	r.wg.Wait()
}
