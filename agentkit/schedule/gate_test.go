package schedule

import (
	"context"
	"testing"
	"time"

	"vaultnode/internal/clock"
	"vaultnode/internal/schedule"
)

// waitPermit runs g.Wait in a goroutine and returns a channel of its result.
func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("load %s (is tzdata installed?): %v", name, err)
	}
	return loc
}

func mustParse(t *testing.T, text string) schedule.Schedule {
	t.Helper()
	s, err := schedule.Parse(text)
	if err != nil {
		t.Fatalf("Parse(%q): %v", text, err)
	}
	return s
}

func waitPermit(ctx context.Context, g *Gate) <-chan *Permit {
	ch := make(chan *Permit, 1)
	go func() {
		p, err := g.Wait(ctx)
		if err != nil {
			p = nil
		}
		ch <- p
	}()
	return ch
}

// advanceUntil advances the fake clock in steps until ch yields, with a
// generous real-time bound.
func advanceUntil(t *testing.T, clk *clock.Fake, step time.Duration, limit time.Time, ch <-chan *Permit) *Permit {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case p := <-ch:
			return p
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no permit by %v (fake time %v)", limit, clk.Now())
		}
		if clk.Now().Before(limit) {
			clk.Advance(step)
		} else {
			time.Sleep(time.Millisecond)
		}
	}
}

func TestGateAcrossMidnightAndRunToCompletion(t *testing.T) {
	paris := mustLoc(t, "Europe/Paris")
	s := mustParse(t, "tz=Europe/Paris; fri 22:00-06:00 complete; sat 12:00-13:00")
	// Friday 2026-01-09 20:00 Paris.
	clk := clock.NewFake(time.Date(2026, 1, 9, 20, 0, 0, 0, paris))
	g := NewGate(s, clk)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	if _, ok := g.TryStart(); ok {
		t.Fatal("started outside the window")
	}
	if want := time.Date(2026, 1, 9, 22, 0, 0, 0, paris); !g.NextStart().Equal(want) {
		t.Fatalf("NextStart = %v, want %v", g.NextStart(), want)
	}
	ch := waitPermit(ctx, g)
	p := advanceUntil(t, clk, time.Minute, time.Date(2026, 1, 9, 22, 0, 0, 0, paris), ch)
	if p == nil {
		t.Fatal("Wait failed")
	}
	if got := clk.Now(); got.Before(time.Date(2026, 1, 9, 22, 0, 0, 0, paris)) {
		t.Fatalf("permit at %v, before the window", got)
	}
	if !p.RunToCompletion || p.Override {
		t.Fatalf("permit = %+v, want run to completion", p)
	}
	// Past midnight and past the end: the run may continue.
	clk.Set(time.Date(2026, 1, 10, 7, 0, 0, 0, paris))
	if p.MustStop() {
		t.Fatal("run-to-completion permit told to stop after the window")
	}
	if _, ok := g.TryStart(); ok {
		t.Fatal("new start allowed after the window")
	}

	// Saturday's window does not run to completion.
	clk.Set(time.Date(2026, 1, 10, 12, 30, 0, 0, paris))
	p2, ok := g.TryStart()
	if !ok || p2.RunToCompletion {
		t.Fatalf("Saturday start = %+v, %v", p2, ok)
	}
	if p2.MustStop() {
		t.Fatal("told to stop inside the window")
	}
	clk.Set(time.Date(2026, 1, 10, 13, 0, 0, 0, paris))
	if !p2.MustStop() {
		t.Fatal("not told to stop at the window's end")
	}
}

func TestGateOverrideIsOneShot(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 7, 12, 0, 0, 0, time.UTC)) // Wednesday
	g := NewGate(mustParse(t, "tz=UTC; sat 00:00-01:00"), clk)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	ch := waitPermit(ctx, g)
	select {
	case <-ch:
		t.Fatal("Wait returned outside the window")
	case <-time.After(50 * time.Millisecond):
	}
	g.RunNow()
	var p *Permit
	select {
	case p = <-ch:
	case <-ctx.Done():
		t.Fatal("RunNow did not wake Wait")
	}
	if p == nil || !p.Override {
		t.Fatalf("permit = %+v, want override", p)
	}
	clk.Advance(10 * time.Hour)
	if p.MustStop() {
		t.Fatal("override run told to stop")
	}
	if _, ok := g.TryStart(); ok {
		t.Fatal("override used twice")
	}
}

func TestGateScheduleChangeWakesWaiter(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 7, 12, 0, 0, 0, time.UTC))
	g := NewGate(schedule.Schedule{}, clk)
	if !g.NextStart().IsZero() {
		t.Fatalf("never schedule: NextStart = %v", g.NextStart())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ch := waitPermit(ctx, g)
	g.SetSchedule(schedule.Always24x7)
	select {
	case p := <-ch:
		if p == nil || p.Override || !p.End.IsZero() {
			t.Fatalf("permit = %+v", p)
		}
		if p.MustStop() {
			t.Fatal("24x7 run told to stop")
		}
	case <-ctx.Done():
		t.Fatal("SetSchedule did not wake Wait")
	}
	// A schedule that closes while a run is active stops it.
	p, _ := g.TryStart()
	g.SetSchedule(schedule.Schedule{})
	if !p.MustStop() {
		t.Fatal("run not stopped after the schedule closed")
	}
	cancel()
	if _, err := g.Wait(ctx); err == nil {
		t.Fatal("Wait with a cancelled context succeeded")
	}
}
