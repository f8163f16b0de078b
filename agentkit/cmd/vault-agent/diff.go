package main

import (
	"context"
	"fmt"

	"vaultnode/agentkit/client"
	"vaultnode/agentkit/compare"
	"vaultnode/agentkit/treediff"
)

// runDiff compares a version (or the part under prefix) with dir: where it
// was restored (paths under dir as under "/"), or the original place of the
// version's root or of prefix (compare.Run).
func runDiff(ctx context.Context, a *app, c *client.Client, key [32]byte, m point, prefix []byte, dir string) error {
	total, err := compare.Run(ctx, c, key, m.m, m.journal, prefix, dir, treediff.Options{}, func(d treediff.Difference) {
		fmt.Fprintf(a.stdout, "%s\n", d)
	})
	if err != nil {
		return err
	}
	if total > 0 {
		return incomplete{fmt.Sprintf("%d difference(s) between %s and %s", total, m, dir)}
	}
	fmt.Fprintf(a.stdout, "no difference between %s and %s\n", m, dir)
	return nil
}
