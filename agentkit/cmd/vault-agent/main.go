// Command vault-agent protects this computer: it enrols with a vault, backs
// up the configurations the vault holds for it, and restores any version.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"vaultnode/internal/gcfloor"
	"vaultnode/internal/profile"
)

func main() {
	if os.Getenv("GOGC") == "" {
		// The agent runs beside the computer's real work: keep the heap
		// near what a synchronization's pipeline holds (about 50 MiB,
		// nearly all of it byte buffers the collector need not scan, so
		// collecting often is cheap) instead of letting it double, but
		// let a small heap grow by gcFloor before each collection. `run`
		// uses a target of its own (see daemonMemory).
		gcfloor.Keep(commandGC, gcFloor)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfile := profile.Start("agent")
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stopProfile()
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// commandGC is the collector's target of one-shot commands: collect when
// the heap is 1.25x what is live. A backup's live heap is about 50 MiB
// (the readers' buffers, 16 MiB of chunks in flight, the listing, the
// compressors) plus the chunk ids queued in this run; a target relative to
// it never makes the collector run without pause, as a fixed limit would
// once the live heap reached it.
const commandGC = 25

// gcFloor is the least growth of the heap between two collections. At 25 %
// of a small live heap (a no-change backup holds 6-10 MB) the collector ran
// after every 1.5-2.5 MB allocated: 232 times in a 1.6 s no-change backup of
// 150,000 small files, 1.2 s with this floor (docs/performance.md, "The
// collector's floor").
const gcFloor = 16 << 20

// daemonMemory sets the collector's target of `run`, whose live heap also
// holds what it watches and journals (structures with pointers, costlier to
// scan): collect at 1.5x, with the same floor, unless GOGC says otherwise.
func daemonMemory() {
	if os.Getenv("GOGC") == "" {
		gcfloor.Keep(50, gcFloor)
	}
}

// Exit codes, documented in the help text.
const (
	exitOK         = 0
	exitFailure    = 1 // the command failed; nothing was committed or restored
	exitUsage      = 2
	exitIncomplete = 3 // done, but some files could not be backed up or restored
)

type incomplete struct{ msg string }

func (e incomplete) Error() string { return e.msg }

func exitCode(err error, stderr io.Writer) int {
	var inc incomplete
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitUsage
	case errors.As(err, &inc):
		fmt.Fprintln(stderr, "vault-agent:", inc.msg)
		return exitIncomplete
	case errors.As(err, new(usageError)):
		fmt.Fprintln(stderr, "vault-agent:", err)
		return exitUsage
	}
	fmt.Fprintln(stderr, "vault-agent:", err)
	return exitFailure
}
