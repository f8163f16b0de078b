package schedule

import (
	"context"
	"sync"
	"time"

	"vaultnode/internal/clock"
	"vaultnode/internal/schedule"
)

// Gate is what a runner asks before and during a synchronization: may I start
// now, and must I stop now. It holds the current schedule (replaceable while
// running) and a one-shot override ("back up now").
type Gate struct {
	clk clock.Clock

	mu       sync.Mutex
	sched    schedule.Schedule
	override bool
	changed  chan struct{} // closed and replaced on every change
}

// NewGate returns a gate over s.
func NewGate(s schedule.Schedule, clk clock.Clock) *Gate {
	return &Gate{clk: clk, sched: s, changed: make(chan struct{})}
}

// Permit is held by one synchronization started through the gate.
type Permit struct {
	g *Gate
	// Started is when the gate let the synchronization start.
	Started time.Time
	// Override is true when it started through RunNow outside the schedule
	// (or during it, consuming the override).
	Override bool
	// RunToCompletion is true when the window it started in lets it finish.
	RunToCompletion bool
	// End is the end of the window it started in (zero: none, e.g. 24x7 or
	// an override).
	End time.Time
}

// MustStop reports whether the synchronization must stop now: the schedule is
// closed, the window it started in does not run to completion, and it was not
// started by an override.
func (p *Permit) MustStop() bool {
	if p.Override || p.RunToCompletion {
		return false
	}
	p.g.mu.Lock()
	s := p.g.sched
	p.g.mu.Unlock()
	return !s.Open(p.g.clk.Now())
}

func (g *Gate) notifyLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// SetSchedule replaces the schedule; waiters re-evaluate at once.
func (g *Gate) SetSchedule(s schedule.Schedule) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sched = s
	g.notifyLocked()
}

// Schedule returns the current schedule.
func (g *Gate) Schedule() schedule.Schedule {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.sched
}

// RunNow arms the one-shot override: the next TryStart or Wait succeeds even
// outside the schedule, and that synchronization is not stopped by it.
func (g *Gate) RunNow() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.override = true
	g.notifyLocked()
}

// TryStart returns a permit if a synchronization may start now (the schedule
// is open or an override is armed; an armed override is consumed).
func (g *Gate) TryStart() (*Permit, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p, ok, _ := g.tryLocked()
	return p, ok
}

func (g *Gate) tryLocked() (p *Permit, ok bool, next time.Time) {
	now := g.clk.Now()
	if g.override {
		g.override = false
		return &Permit{g: g, Started: now, Override: true}, true, time.Time{}
	}
	iv, found := g.sched.At(now)
	if !found {
		return nil, false, time.Time{}
	}
	if iv.Contains(now) {
		return &Permit{g: g, Started: now, RunToCompletion: iv.RunToCompletion, End: iv.End}, true, time.Time{}
	}
	return nil, false, iv.Start
}

// NextStart returns when a synchronization may next start: now if it may
// start now, zero if never (until the schedule changes or RunNow is called).
func (g *Gate) NextStart() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.clk.Now()
	if g.override {
		return now
	}
	iv, ok := g.sched.At(now)
	if !ok {
		return time.Time{}
	}
	if iv.Contains(now) {
		return now
	}
	return iv.Start
}

// Wait blocks until a synchronization may start and returns its permit, or
// returns ctx's error.
func (g *Gate) Wait(ctx context.Context) (*Permit, error) {
	for {
		g.mu.Lock()
		p, ok, next := g.tryLocked()
		changed := g.changed
		g.mu.Unlock()
		if ok {
			return p, nil
		}
		var fire <-chan time.Time
		var t clock.Timer
		if !next.IsZero() {
			t = g.clk.NewTimerAt(next)
			fire = t.C()
		}
		select {
		case <-ctx.Done():
			if t != nil {
				t.Stop()
			}
			return nil, ctx.Err()
		case <-changed:
		case <-fire:
		}
		if t != nil {
			t.Stop()
		}
	}
}
