package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"vaultnode/appliance/vault"
	"vaultnode/internal/fwctl"
)

// DataEnv names the vault's data directory when -data is not given; the
// appliance's firmware sets it for its support shell.
const DataEnv = "VAULTCTL_DATA"

// fwSocket is the firmware's control socket (a variable for tests).
var fwSocket = fwctl.Path

// diskCmd asks the appliance firmware's array controller (the disk array
// is the firmware's, not the vault's).
func diskCmd(ctx context.Context, a []string, stdout io.Writer) error {
	var cmd string
	switch {
	case len(a) == 0 || len(a) == 1 && a[0] == "status":
		cmd = "raid status"
	case len(a) == 1 && a[0] == "scrub":
		cmd = "raid scrub"
	case len(a) >= 1 && a[0] == "schedule":
		cmd = strings.Join(append([]string{"raid"}, a...), " ")
	case len(a) == 2 && a[0] == "replace":
		cmd = "raid replace " + a[1]
	case len(a) == 3 && a[0] == "replace" && a[2] == "-erase":
		cmd = "raid replace " + a[1] + " erase"
	default:
		return errors.New("usage: vaultctl disk [status] | disk replace DISK [-erase] | disk scrub | disk schedule [SCHEDULE]")
	}
	var b strings.Builder
	if err := fwctl.Send(ctx, fwSocket, cmd, &b); err != nil {
		return fmt.Errorf("%w (vaultctl disk works on the appliance only)", err)
	}
	out := b.String()
	io.WriteString(stdout, out)
	if strings.HasPrefix(out, "error: ") {
		return errors.New(strings.TrimSpace(strings.TrimPrefix(out, "error: ")))
	}
	return nil
}

// printStorage is the storage line of vaultctl status.
func printStorage(w io.Writer, si vault.StorageInfo) {
	switch {
	case si.Known && si.Stale:
		fmt.Fprintf(w, "STORAGE %s (report from %s, not updated since: is the firmware's monitor stuck?): %s\n",
			strings.ToUpper(si.Report.State), si.Report.Updated.Local().Format("2006-01-02 15:04:05"), si.Report.Detail)
	case si.Known:
		fmt.Fprintf(w, "STORAGE %s: %s\n", strings.ToUpper(si.Report.State), si.Report.Detail)
		if si.Report.State == "failed" {
			fmt.Fprintln(w, "  the vault refuses backups and restores (storage_failed) until the array is repaired")
		}
	case si.Error != "":
		fmt.Fprintf(w, "STORAGE UNKNOWN: %s\n", si.Error)
	}
}
