package watch

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestAggregatorPerPathTiming(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	quiet, maxDelay, slack := 200*time.Millisecond, 2*time.Second, 50*time.Millisecond
	a := newAggregator([]string{"/r"}, 100)
	if ok, wait := a.due(t0, quiet, maxDelay); ok || wait != 0 {
		t.Fatalf("empty: due %v, wait %v", ok, wait)
	}
	if !a.add(event{path: "/r/hot"}, t0) {
		t.Fatal("first event did not wake the runner")
	}
	if a.add(event{path: "/r/once"}, ms(50)) {
		t.Fatal("second event woke the runner")
	}
	// /r/hot is written every 100 ms for 3 s; /r/once only at 50 ms.
	var batches []Batch
	for n := 100; n <= 3000; n += 10 {
		now := ms(n)
		if n%100 == 0 {
			a.add(event{path: "/r/hot"}, now)
		}
		if ok, _ := a.due(now, quiet, maxDelay); ok {
			b := a.take(now, quiet, maxDelay, slack)
			b.Rescan = []string{now.Sub(t0).String()} // when, for the comparison
			batches = append(batches, b)
		}
	}
	want := []Batch{
		{Paths: []string{"/r/once"}, Rescan: []string{"250ms"}}, // quiet since 50 ms
		{Paths: []string{"/r/hot"}, Rescan: []string{"2s"}},     // max delay since 0
	}
	if diff := cmp.Diff(want, batches); diff != "" {
		t.Fatalf("batches (-want +got):\n%s", diff)
	}
	if ok, wait := a.due(ms(3000), quiet, maxDelay); ok || wait != quiet {
		t.Fatalf("hot file pending again: due %v, wait %v; want quiet after its last write", ok, wait)
	}
	if !a.add(event{kind: kindOverflow}, ms(3000)) {
		t.Fatal("overflow did not wake")
	}
	if ok, _ := a.due(ms(3000), quiet, maxDelay); !ok {
		t.Fatal("overflow not due at once")
	}
	if b := a.take(ms(3000), quiet, maxDelay, slack); !b.Full || len(b.Paths) != 0 {
		t.Fatalf("overflow batch = %+v", b)
	}
}

func TestAggregatorBatches(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		roots  []string
		max    int
		events []event
		want   Batch
	}{
		{"paths deduplicated and sorted", []string{"/r"}, 100,
			[]event{{path: "/r/b"}, {path: "/r/a"}, {path: "/r/b"}},
			Batch{Paths: []string{"/r/a", "/r/b"}}},
		{"new directory covers what is inside", []string{"/r"}, 100,
			[]event{{path: "/r/d/x"}, {path: "/r/d", kind: kindNewDir}, {path: "/r/d/e", kind: kindNewDir}, {path: "/r/d/e/f"}, {path: "/r/g"}},
			Batch{Paths: []string{"/r/g"}, Rescan: []string{"/r/d"}}},
		{"over the limit: directories", []string{"/r"}, 4,
			[]event{{path: "/r/a/1"}, {path: "/r/a/2"}, {path: "/r/b/1"}, {path: "/r/b/2"}, {path: "/r/a/3"}},
			Batch{Rescan: []string{"/r/a", "/r/b"}}},
		{"over the limit: parents of directories", []string{"/r"}, 4,
			[]event{{path: "/r/x/a/1"}, {path: "/r/x/b/1"}, {path: "/r/x/c/1"}, {path: "/r/y/d/1"}, {path: "/r/y/e/1"}},
			Batch{Rescan: []string{"/r/x", "/r/y"}}},
		{"over the limit: up to the root", []string{"/r"}, 2,
			[]event{{path: "/r/a/1"}, {path: "/r/b/1"}, {path: "/r/c/1"}},
			Batch{Rescan: []string{"/r"}}},
		{"too many roots to list: full", []string{"/r1", "/r2", "/r3"}, 2,
			[]event{{path: "/r1/a"}, {path: "/r2/a"}, {path: "/r3/a"}},
			Batch{Full: true}},
		{"overflow drops the rest", []string{"/r"}, 100,
			[]event{{path: "/r/a"}, {kind: kindOverflow}, {path: "/r/b"}},
			Batch{Full: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAggregator(tt.roots, tt.max)
			for _, ev := range tt.events {
				a.add(ev, now)
				if n := len(a.paths) + len(a.rescan); n > tt.max {
					t.Fatalf("%d entries pending, limit %d", n, tt.max)
				}
			}
			later := now.Add(time.Hour)
			if diff := cmp.Diff(tt.want, a.take(later, time.Second, time.Second, 0), cmpopts.EquateEmpty()); diff != "" {
				t.Fatalf("batch (-want +got):\n%s", diff)
			}
			if b := a.take(later, time.Second, time.Second, 0); b.Full || len(b.Paths)+len(b.Rescan) != 0 {
				t.Fatalf("second take not empty: %+v", b)
			}
		})
	}
}

// Bounded memory under a flood of distinct paths in many directories.
func TestAggregatorBoundedUnderFlood(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := newAggregator([]string{"/r"}, 1000)
	for i := 0; i < 200000; i++ {
		a.add(event{path: fmt.Sprintf("/r/d%03d/e%03d/f%d", i%500, i%700, i)}, now)
		if n := len(a.paths) + len(a.rescan); n > 1000 {
			t.Fatalf("after %d events: %d pending", i, n)
		}
	}
	b := a.take(now.Add(time.Hour), time.Second, time.Second, 0)
	if len(b.Paths) != 0 || (len(b.Rescan) == 0 && !b.Full) {
		t.Fatalf("flood batch: %d paths, %d rescans, full %v", len(b.Paths), len(b.Rescan), b.Full)
	}
	t.Logf("200000 paths in up to 350000 directories collapsed to %d rescans (full %v), %d collapses", len(b.Rescan), b.Full, a.collapses)
}

func BenchmarkAggregatorAdd(b *testing.B) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := newAggregator([]string{"/r"}, 10000)
	paths := make([]string, 4096)
	for i := range paths {
		paths[i] = fmt.Sprintf("/r/dir%02d/file%04d", i%50, i)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a.add(event{path: paths[i%len(paths)]}, now)
	}
}
