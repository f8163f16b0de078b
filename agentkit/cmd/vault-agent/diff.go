package main

import (
	"context"
	"errors"

	"vaultnode/agentkit/client"
	"vaultnode/internal/wire"
)

// runDiff compares a version with a directory.
func runDiff(ctx context.Context, a *app, c *client.Client, key [32]byte, m wire.Manifest, prefix []byte, dir string) error {
	return errors.New("diff is not available in this build yet")
}
