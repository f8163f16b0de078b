// Package profile writes profiles for diagnosing the benchmark's figures:
// a CPU profile when VAULTNODE_CPUPROFILE names a file, and the heap at its
// largest when VAULTNODE_HEAPPROFILE does (tag appended to either name);
// and a CPU profile of one job at a time when VAULTNODE_JOB_CPUPROFILE
// does (Span: the job's kind appended); and an execution trace (go tool
// trace: which goroutine waited for what) when VAULTNODE_TRACE does.
package profile

import (
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"time"
)

// Start begins profiling if asked to and returns the function that stops it.
func Start(tag string) func() {
	var stops []func()
	if p := os.Getenv("VAULTNODE_CPUPROFILE"); p != "" {
		if f, err := os.Create(p + "." + tag); err == nil {
			if err := pprof.StartCPUProfile(f); err != nil {
				f.Close()
			} else {
				stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
			}
		}
	}
	if p := os.Getenv("VAULTNODE_TRACE"); p != "" {
		if f, err := os.Create(p + "." + tag); err == nil {
			if err := trace.Start(f); err != nil {
				f.Close()
			} else {
				stops = append(stops, func() { trace.Stop(); f.Close() })
			}
		}
	}
	if p := os.Getenv("VAULTNODE_HEAPPROFILE"); p != "" {
		stops = append(stops, peakHeap(p+"."+tag))
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}
}

// Span profiles the CPU from now until the returned function is called,
// into VAULTNODE_JOB_CPUPROFILE + "." + tag (overwritten by the next span
// of the same tag), when that variable is set: a long-running process
// (vaultd in the appliance) profiles just the job being measured. A span
// started while another profile runs (VAULTNODE_CPUPROFILE, or a span of
// another job) profiles nothing.
func Span(tag string) func() {
	p := os.Getenv("VAULTNODE_JOB_CPUPROFILE")
	if p == "" {
		return func() {}
	}
	f, err := os.Create(p + "." + tag)
	if err != nil {
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		os.Remove(f.Name())
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// peakHeap samples the heap every 100 ms and writes a heap profile each
// time the heap in use after the last collection is larger than before.
func peakHeap(path string) func() {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		var peak uint64
		var ms runtime.MemStats
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc <= peak+peak/20 {
				continue
			}
			peak = ms.HeapAlloc
			if f, err := os.Create(path); err == nil {
				pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
		}
	}()
	return func() { close(done); <-finished }
}
