package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"vaultnode/internal/fwctl"
)

// qosCmd shows the uplink's traffic classes and their counters, read
// from the appliance firmware's control socket (the shaping is the
// firmware's, not the vault's).
func qosCmd(ctx context.Context, a []string, stdout io.Writer) error {
	asJSON := len(a) == 1 && a[0] == "-json"
	if len(a) > 0 && !asJSON {
		return errors.New("usage: vaultctl qos [-json]")
	}
	st, err := fwctl.QoS(ctx, fwSocket)
	switch {
	case errors.Is(err, fwctl.ErrNoFirmware):
		return fmt.Errorf("vaultctl qos: %w\n  the traffic shaping is the appliance firmware's: run vaultctl qos in the appliance's support shell; "+
			"a developer machine has no shaping to show (the namespace tests in firmware/qos exercise it: go test ./firmware/qos/)", err)
	case err != nil:
		return fmt.Errorf("vaultctl qos: %w", err)
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	if st.Error != "" {
		fmt.Fprintf(stdout, "%s\n", st.Error)
	}
	if len(st.Classes) == 0 {
		fmt.Fprintln(stdout, "no traffic classes: the uplink is not shaped")
		return nil
	}
	const mbit = 1e6 // HTB rates are bits per second
	fmt.Fprintf(stdout, "%-8s %-8s %-6s %-22s %10s %10s %14s %10s %8s %10s\n", "dir", "device", "class", "name", "rate Mbit", "ceil Mbit", "bytes", "packets", "drops", "overlimits")
	for _, c := range st.Classes {
		fmt.Fprintf(stdout, "%-8s %-8s %-6s %-22s %10.2f %10.2f %14d %10d %8d %10d\n", c.Direction, c.Device, c.Handle, c.Name,
			float64(c.Rate)/mbit, float64(c.Ceil)/mbit, c.Bytes, c.Packets, c.Drops, c.Overlimits)
	}
	return nil
}
