package bwlimit

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"vaultnode/internal/bandwidth"
	"vaultnode/internal/clock"
)

// The limiter on the wall clock, over real loopback connections: `make
// bench` runs these (go test -run '^$' -bench Loopback -benchtime 1x) and
// reports the rate received as a percentage of the limit; the target is
// within 10 % of it (15 % per stream for the fair share). Tests use a fake
// clock instead, so that a busy machine cannot fail them.

// measure counts the bytes each receiver gets over about three seconds of
// wall time, after a warm-up that fills the socket buffers.
func measure(rs ...*receiver) (got []float64, secs float64) {
	time.Sleep(500 * time.Millisecond)
	t0 := time.Now()
	var c0 []int64
	for _, r := range rs {
		c0 = append(c0, r.count.Load())
	}
	time.Sleep(3 * time.Second)
	secs = time.Since(t0).Seconds()
	for i, r := range rs {
		got = append(got, float64(r.count.Load()-c0[i])/secs)
	}
	return got, secs
}

func BenchmarkLoopbackRate(b *testing.B) {
	const n = 250000 // 2 Mbit/s
	l := New(bandwidth.Fixed(n), clock.Real{})
	r := listen(b)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	send(b, ctx, &wg, l, r)
	got, secs := measure(r)
	cancel()
	wg.Wait()
	b.ReportMetric(100*got[0]/n, "%limit")
	b.Logf("limit %d B/s: received %.0f B/s over %.2f s (%.2f%% of the limit)", n, got[0], secs, 100*got[0]/n)
	if math.Abs(got[0]-n) > 0.10*n {
		b.Errorf("received %.0f B/s, target within 10%% of %d (is the machine busy?)", got[0], n)
	}
}

func BenchmarkLoopbackFairShare(b *testing.B) {
	const n = 1000000
	l := New(bandwidth.Fixed(n), clock.Real{})
	r1, r2 := listen(b), listen(b)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	send(b, ctx, &wg, l, r1)
	send(b, ctx, &wg, l, r2)
	got, secs := measure(r1, r2)
	cancel()
	wg.Wait()
	b.ReportMetric(100*got[0]/(n/2), "%half-1")
	b.ReportMetric(100*got[1]/(n/2), "%half-2")
	b.ReportMetric(100*(got[0]+got[1])/n, "%limit")
	b.Logf("limit %d B/s over %.2f s: stream 1 %.0f B/s, stream 2 %.0f B/s, total %.0f B/s", n, secs, got[0], got[1], got[0]+got[1])
	for i, g := range got {
		if math.Abs(g-n/2) > 0.15*n/2 {
			b.Errorf("stream %d: %.0f B/s, target within 15%% of %d", i+1, g, n/2)
		}
	}
	if total := got[0] + got[1]; math.Abs(total-n) > 0.10*n {
		b.Errorf("total %.0f B/s, target within 10%% of %d", total, n)
	}
}
