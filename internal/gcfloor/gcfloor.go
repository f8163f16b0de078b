// Package gcfloor sets the garbage collector's target as a percentage of
// the live heap, as GOGC does, but never less than a fixed number of bytes
// above it.
//
// A low percentage keeps a large heap near what is live, but on a small one
// it makes the collector run after every megabyte or two allocated:
// the agent's no-change backup of 150,000 small files (a live heap of 6-10
// MB at 25 %) ran 232 collections in 1.6 s, and every one emptied the
// sync.Pools whose buffers were then allocated, zeroed and faulted in again
// (docs/performance.md, "The collector's floor").
package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// minHeap is the runtime's least target at 100 %, which it scales by the
// percentage (the runtime's heapMinimum): a percentage raised for a small
// heap must not raise that least target past the floor.
const minHeap = 4 << 20

// The settings in force, and whether a sentinel is set; mu guards them.
var (
	mu      sync.Mutex
	armed   bool
	percent int
	floor   uint64
)

// Keep makes the collector's target percent of the live heap (with the
// runtime's usual share for stacks and globals), and at least floor bytes
// above the live heap: after every collection the percentage in force is
// raised for a heap too small to leave floor bytes. A negative percent
// turns the collector off, as GOGC=off does. Calling Keep again changes
// both for the collections that follow.
func Keep(pct int, fl uint64) {
	mu.Lock()
	defer mu.Unlock()
	percent, floor = pct, fl
	debug.SetGCPercent(pct)
	if !armed && pct >= 0 {
		armed = true
		arm()
	}
}

// sentinel is an object that only the next collection frees. It is 16
// bytes so that the runtime does not put it in a tiny block with other
// objects (under 16 bytes without pointers), which could keep it, and its
// finalizer, from ever being freed.
type sentinel struct{ _ [16]byte }

// arm sets the next sentinel; its finalizer, run after the collection that
// frees it, tunes the percentage and arms again.
func arm() {
	runtime.SetFinalizer(new(sentinel), func(*sentinel) {
		mu.Lock()
		defer mu.Unlock()
		if percent < 0 {
			armed = false
			return
		}
		tune()
		arm()
	})
}

var sample = []metrics.Sample{
	{Name: "/gc/heap/live:bytes"},
	{Name: "/gc/scan/stack:bytes"},
	{Name: "/gc/scan/globals:bytes"},
}

// tune sets the percentage for the next collection. The runtime's target
// is live + (live + stacks + globals) * percent / 100; mu is held.
func tune() {
	p, fl := percent, floor
	metrics.Read(sample)
	var base uint64
	for _, s := range sample {
		if s.Value.Kind() != metrics.KindUint64 {
			debug.SetGCPercent(p) // a runtime without these: plain GOGC
			return
		}
		base += s.Value.Uint64()
	}
	if want := int(fl * 100 / max(base, 1)); want > p {
		p = max(p, min(want, int(fl*100/minHeap)))
	}
	debug.SetGCPercent(p)
}
