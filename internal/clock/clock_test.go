package clock

import (
	"testing"
	"time"
)

func TestFakeFiresInOrder(t *testing.T) {
	start := time.Date(2026, 3, 29, 0, 30, 0, 0, time.UTC)
	f := NewFake(start)
	a := f.NewTimer(time.Minute)
	b := f.NewTimer(time.Hour)
	f.Advance(30 * time.Second)
	select {
	case <-a.C():
		t.Fatal("timer fired early")
	default:
	}
	f.Advance(31 * time.Second)
	select {
	case got := <-a.C():
		if want := start.Add(61 * time.Second); !got.Equal(want) {
			t.Fatalf("fired at %v, want %v", got, want)
		}
	default:
		t.Fatal("timer did not fire")
	}
	if !b.Stop() {
		t.Fatal("Stop of an active timer returned false")
	}
	f.Advance(2 * time.Hour)
	select {
	case <-b.C():
		t.Fatal("stopped timer fired")
	default:
	}
	if b.Reset(time.Second) {
		t.Fatal("Reset of a stopped timer returned true")
	}
	f.Advance(time.Second)
	select {
	case <-b.C():
	default:
		t.Fatal("reset timer did not fire")
	}
}

// TestFakeTimerAt: a timer for an instant fires when the clock reaches it,
// not before, and at once when the clock is already past it.
func TestFakeTimerAt(t *testing.T) {
	start := time.Date(2026, 1, 5, 12, 0, 0, 0, time.UTC)
	f := NewFake(start)
	tm := f.NewTimerAt(start.Add(time.Second))
	f.Advance(999 * time.Millisecond)
	select {
	case <-tm.C():
		t.Fatal("fired before its instant")
	default:
	}
	f.Advance(time.Millisecond)
	select {
	case at := <-tm.C():
		if !at.Equal(start.Add(time.Second)) {
			t.Fatalf("fired at %v", at)
		}
	default:
		t.Fatal("did not fire at its instant")
	}
	select {
	case <-f.NewTimerAt(start).C():
	default:
		t.Fatal("a timer for a past instant did not fire at once")
	}
}

// TestTimerAtOnItsOwnClock: Real and Skewed timers for an instant count to
// it on their own clock. A Skewed clock an hour ahead, given an instant just
// after its own now, fires in milliseconds (a timer counting on the wall
// clock would wait an hour), and an instant already past fires at once.
func TestTimerAtOnItsOwnClock(t *testing.T) {
	for _, c := range []Clock{Real{}, Skewed{Offset: time.Hour}, Skewed{Offset: -time.Hour}} {
		for _, ahead := range []time.Duration{20 * time.Millisecond, -time.Minute} {
			at := c.Now().Add(ahead)
			tm := c.NewTimerAt(at)
			select {
			case <-tm.C():
				if now := c.Now(); now.Before(at) {
					t.Fatalf("%#v: fired at %v, before %v", c, now, at)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%#v: timer for %v ahead did not fire", c, ahead)
			}
		}
	}
}
