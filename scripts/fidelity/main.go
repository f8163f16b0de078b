// Command fidelity prints the fidelity table of the benchmark (issue 3): it
// generates an internal/testtree tree with every case, backs it up and
// restores it with vaultnode (the bin/ binaries, its own vaultd in a
// temporary directory) and with restic (Debian's package, installed with
// apt-get when missing), compares each restore with a pristine copy of the
// tree through agentkit/treediff, and says for each property whether each
// tool kept it. The table goes to stdout, the details to a JSON file.
//
//	go run ./scripts/fidelity [-bin bin] [-out out/bench/fidelity.json] [-restic restic] [-keep]
//
// Run it as root: the privileged cases (owners, device nodes, immutable
// files, trusted and security xattrs) cannot be made otherwise, and are
// then reported as "not tested".
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fidelity:", err)
		os.Exit(1)
	}
}
