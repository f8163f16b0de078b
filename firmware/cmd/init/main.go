// Command init is PID 1 of the vaultnode appliance image; see package firmware.
package main

import (
	"context"
	"fmt"
	"os"

	"vaultnode/firmware"
)

func main() {
	if err := firmware.Run(context.Background(), os.Args, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "init:", err)
		os.Exit(1)
	}
}
