package main

import (
	"context"

	"vaultnode/agentkit/backup"
	"vaultnode/agentkit/source"
)

// prepare readies one synchronization before backup.Run (snapshots,
// system state): see source.Prepare.
func (a *app) prepare(ctx context.Context, o *backup.Options) (release func(), err error) {
	return source.Prepare(ctx, o)
}
