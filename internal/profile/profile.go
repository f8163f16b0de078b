// Package profile writes a CPU profile when VAULTNODE_CPUPROFILE names a
// file, for diagnosing the benchmark's figures.
package profile

import (
	"os"
	"runtime/pprof"
)

// Start begins profiling if asked to and returns the function that stops it.
func Start(tag string) func() {
	p := os.Getenv("VAULTNODE_CPUPROFILE")
	if p == "" {
		return func() {}
	}
	f, err := os.Create(p + "." + tag)
	if err != nil {
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}
