package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

var sink []byte

// churn allocates n bytes of garbage in 64 KiB pieces and returns the
// collections run meanwhile.
func churn(n int) uint32 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.NumGC
	for range n / (64 << 10) {
		sink = make([]byte, 64<<10)
		sink[0] = 1
	}
	runtime.ReadMemStats(&ms)
	return ms.NumGC - before
}

func readUint(t *testing.T, name string) uint64 {
	t.Helper()
	s := []metrics.Sample{{Name: name}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		t.Fatalf("metric %s: kind %v", name, s[0].Value.Kind())
	}
	return s[0].Value.Uint64()
}

// settle runs collections until the tuner has set a percentage other than
// from (its finalizer runs after a collection, on its own goroutine).
func settle(t *testing.T, from uint64) uint64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(time.Millisecond)
		if p := readUint(t, "/gc/gogc:percent"); p != from {
			return p
		}
	}
	t.Fatalf("the percentage stayed %d", from)
	return 0
}

func TestFloorOnSmallHeap(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	live := make([]byte, 1<<20)
	defer runtime.KeepAlive(live)

	Keep(25, 0) // no floor: what GOGC=25 does
	settle(t, 100)
	plain := churn(256 << 20)

	Keep(25, 16<<20)
	p := settle(t, 25)
	floored := churn(256 << 20)
	goal := readUint(t, "/gc/heap/goal:bytes")
	t.Logf("256 MiB of garbage over a heap of about 1 MiB: %d collections at 25 %%, %d with a 16 MiB floor (percentage %d, target %d bytes)",
		plain, floored, p, goal)
	// Above 400 % the runtime's least target (4 MiB at 100 %) passes the
	// floor: a first version made the second collection's target 94 MB.
	// The target itself is not checked: the runtime counts what is
	// allocated during a mark as live, so under load a collection may
	// find several megabytes live and aim at several times that.
	if p > 400 {
		t.Errorf("percentage %d over a heap of about 1 MiB; want at most 400", p)
	}
	if floored > 256/16*2 {
		t.Errorf("%d collections for 256 MiB with a 16 MiB floor; want at most %d", floored, 256/16*2)
	}
	if floored*4 > plain {
		t.Errorf("%d collections with the floor against %d without: want a quarter or fewer", floored, plain)
	}
}

func TestPercentOnLargeHeap(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	Keep(25, 0)
	settle(t, 100)
	live := make([]byte, 128<<20) // a quarter of it is twice the floor
	for i := range live {
		live[i] = byte(i)
	}
	Keep(25, 16<<20)
	// The tuner keeps 25 % here: nothing to wait for but its next run.
	for range 3 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if p := readUint(t, "/gc/gogc:percent"); p != 25 {
		t.Errorf("percentage %d over a live heap of 128 MiB; want 25", p)
	}
	runtime.KeepAlive(live)
	live = nil
	runtime.GC()
	if p := settle(t, 25); p <= 25 {
		t.Errorf("percentage %d once the heap is small again; want it raised", p)
	}
}
