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
	"runtime/debug"
	"syscall"

	"vaultnode/internal/profile"
)

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		// The agent runs beside the computer's real work: keep the heap
		// near what the pipelines hold instead of letting it double.
		debug.SetMemoryLimit(80 << 20)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfile := profile.Start("agent")
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stopProfile()
	stop()
	os.Exit(exitCode(err, os.Stderr))
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
