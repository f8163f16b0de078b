package jobs

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"vaultnode/internal/clock"
)

// memHistory is a History in memory (the catalog's is tested in
// appliance/catalog and appliance/vault).
type memHistory struct {
	mu   sync.Mutex
	recs []Record
}

func (h *memHistory) PutJob(r Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.recs {
		if h.recs[i].ID == r.ID {
			h.recs[i] = r
			return nil
		}
	}
	h.recs = append(h.recs, r)
	return nil
}

func (h *memHistory) Jobs() ([]Record, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.recs), nil
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// blocker is a job that reports progress, tells when it started, and runs
// until released or cancelled.
func blocker(started chan<- struct{}, release <-chan struct{}) Func {
	return func(ctx context.Context, p *Progress) (any, error) {
		p.SetTotals(10, 1000)
		p.Add(2, 200)
		started <- struct{}{}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-release:
			p.Add(8, 800)
			return map[string]int{"checked": 10}, nil
		}
	}
}

func TestOneOfAKindProgressAndResult(t *testing.T) {
	clk := clock.NewFake(t0)
	h := &memHistory{}
	reg := prometheus.NewRegistry()
	r := New(clk, h, nil, reg)
	defer r.Close()
	started, release := make(chan struct{}, 1), make(chan struct{})
	r.Register(KindVerify, blocker(started, release))
	r.Register(KindPrune, func(ctx context.Context, p *Progress) (any, error) { return nil, errors.New("boom") })

	rec, err := r.Start(KindVerify, "test")
	if err != nil {
		t.Fatal(err)
	}
	<-started
	if busy, err := r.Start(KindVerify, "test"); !errors.Is(err, ErrBusy) || busy.ID != rec.ID {
		t.Fatalf("second verify: %v (%s), want ErrBusy naming %s", err, busy.ID, rec.ID)
	}
	if testutil.ToFloat64(r.m.running.WithLabelValues("verify")) != 1 {
		t.Error("vaultnode_job_running{kind=verify} is not 1 while it runs")
	}
	clk.Advance(10 * time.Second)
	v, err := r.Get(rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	// 200 bytes in 10 s: 20 B/s, 800 left: 40 s.
	if v.State != Running || v.Progress.Bytes != 200 || v.BytesPerSecond != 20 || v.ETA != 40*time.Second {
		t.Fatalf("running view %+v", v)
	}
	// Another kind runs beside it, and its failure is recorded.
	p, err := r.Start(KindPrune, "test")
	if err != nil {
		t.Fatal(err)
	}
	<-r.Done(p.ID)
	if v, _ := r.Get(p.ID); v.State != Failed || v.Error != "boom" {
		t.Fatalf("failed prune: %+v", v)
	}
	close(release)
	<-r.Done(rec.ID)
	v, _ = r.Get(rec.ID)
	if v.State != Done || string(v.Result) != `{"checked":10}` || v.Progress.Items != 10 || v.ETA != 0 {
		t.Fatalf("done view %+v", v)
	}
	hist, _ := h.Jobs()
	if len(hist) != 2 || hist[0].ID != rec.ID || hist[0].State != Done || hist[1].State != Failed {
		t.Fatalf("history %+v", hist)
	}
	if got := testutil.ToFloat64(r.m.runs.WithLabelValues("verify", "done")); got != 1 {
		t.Errorf("vaultnode_job_runs_total{verify,done} = %v", got)
	}
	if got := testutil.ToFloat64(r.m.success.WithLabelValues("verify")); got != float64(t0.Add(10*time.Second).Unix()) {
		t.Errorf("last success %v", got)
	}
	// Once it ended, a new one of the kind may start.
	if _, err := r.Start(KindVerify, "test"); err != nil {
		t.Fatal(err)
	}
	<-started
}

func TestCancelAndClose(t *testing.T) {
	h := &memHistory{}
	r := New(clock.NewFake(t0), h, nil, nil)
	started := make(chan struct{}, 2)
	r.Register(KindVerify, blocker(started, nil))
	r.Register(KindPrune, blocker(started, nil))
	a, _ := r.Start(KindVerify, "test")
	b, _ := r.Start(KindPrune, "test")
	<-started
	<-started
	if _, err := r.Cancel(a.ID); err != nil {
		t.Fatal(err)
	}
	<-r.Done(a.ID)
	if v, _ := r.Get(a.ID); v.State != Canceled || v.Progress.Items != 2 {
		t.Fatalf("cancelled job: %+v", v)
	}
	r.Close() // the vault stops: the prune is interrupted
	hist, _ := h.Jobs()
	if hist[1].ID != b.ID || hist[1].State != Interrupted {
		t.Fatalf("after Close: %+v", hist[1])
	}
	if _, err := r.Start(KindVerify, "test"); !errors.Is(err, ErrClosed) {
		t.Fatalf("start after close: %v", err)
	}
	if _, err := r.Cancel("verify-nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cancel unknown: %v", err)
	}
}

func TestRecoverMarksRunningAsInterrupted(t *testing.T) {
	h := &memHistory{recs: []Record{
		{ID: "verify-1", Kind: KindVerify, State: Done, Started: t0, Ended: t0.Add(time.Minute)},
		{ID: "prune-1", Kind: KindPrune, State: Running, Started: t0}, // a crash cut it short
	}}
	clk := clock.NewFake(t0.Add(time.Hour))
	r := New(clk, h, nil, nil)
	defer r.Close()
	n, err := r.Recover()
	if err != nil || n != 1 {
		t.Fatalf("Recover = %d, %v", n, err)
	}
	v, err := r.Get("prune-1")
	if err != nil || v.State != Interrupted || !v.Ended.Equal(clk.Now()) || !strings.Contains(v.Error, "run it again") {
		t.Fatalf("recovered record %+v, %v", v, err)
	}
	if v, _ := r.Get("verify-1"); v.State != Done {
		t.Fatalf("a finished job changed: %+v", v)
	}
	if _, err := r.Start(KindPrune, "x"); !errors.Is(err, ErrUnknownKind) {
		t.Fatalf("unregistered kind: %v", err)
	}
}

func TestPanickingJobFails(t *testing.T) {
	r := New(clock.NewFake(t0), &memHistory{}, nil, nil)
	defer r.Close()
	r.Register(KindVerify, func(context.Context, *Progress) (any, error) { panic("oops") })
	rec, _ := r.Start(KindVerify, "test")
	<-r.Done(rec.ID)
	if v, _ := r.Get(rec.ID); v.State != Failed || !strings.Contains(v.Error, "oops") {
		t.Fatalf("%+v", v)
	}
}

// TestFinishedJobsLeaveMemory: a runner keeps a bounded number of finished
// jobs in memory; older ones are still found in the history, and Done on
// them does not block.
func TestFinishedJobsLeaveMemory(t *testing.T) {
	h := &memHistory{}
	clk := clock.NewFake(t0)
	r := New(clk, h, nil, nil)
	defer r.Close()
	r.Register(KindPrune, func(context.Context, *Progress) (any, error) { return nil, nil })
	var first string
	for i := 0; i < maxKept+10; i++ {
		rec, err := r.Start(KindPrune, "test")
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = rec.ID
		}
		<-r.Done(rec.ID)
		clk.Advance(time.Second)
	}
	r.mu.Lock()
	n := len(r.byID)
	r.mu.Unlock()
	if n > maxKept+1 {
		t.Fatalf("%d jobs in memory, want at most %d", n, maxKept+1)
	}
	<-r.Done(first) // must not block
	if v, err := r.Get(first); err != nil || v.State != Done {
		t.Fatalf("the first job from the history: %+v, %v", v, err)
	}
}
