// Package source decides where one synchronization reads from, before
// backup.Run: a system configuration gets its reports collected
// (agentkit/sysstate) and becomes a files configuration of the system paths
// plus sysstate.ReportRoot, read from the staging directory; a configuration
// with Snapshot gets its roots snapshotted (agentkit/snapshot) and read from
// there. Every caller of backup.Run (vault-agent backup, the daemon) calls
// Prepare first and the returned release after Run.
package source

import (
	"context"
	"fmt"
	"path/filepath"

	"go.uber.org/zap"

	"vaultnode/agentkit/backup"
	"vaultnode/agentkit/snapshot"
	"vaultnode/agentkit/sysstate"
	"vaultnode/internal/wire"
)

// StagingName is the directory, in the configuration's state directory,
// where a system configuration's reports are written.
const StagingName = "system-report"

// Prepare adjusts o (Config, SourceOf) for o.Config's kind and snapshot
// setting. release undoes what Prepare did (deletes snapshots); call it
// after backup.Run, also when Run failed. o.State and o.Log must be set.
func Prepare(ctx context.Context, o *backup.Options) (release func(), err error) {
	log := o.Log
	if log == nil {
		log = zap.NewNop()
	}
	cfg := o.Config
	var maps []func(string) (string, bool)
	var extra []string // roots that are not paths of this machine
	if cfg.Kind == wire.KindSystem {
		cdir, err := o.State.ConfigDir(cfg.Name)
		if err != nil {
			return nil, err
		}
		staging := filepath.Join(cdir, StagingName)
		col, err := sysstate.Collect(ctx, sysstate.Options{Staging: staging, Log: log.Named("sysstate")})
		if err != nil {
			return nil, fmt.Errorf("collect system state: %w", err)
		}
		for _, m := range col.Missing {
			log.Debug("system state: not recorded", zap.String("what", m))
		}
		cfg.Kind = wire.KindFiles
		cfg.Paths = col.Paths
		extra = append(extra, sysstate.ReportRoot)
		maps = append(maps, func(root string) (string, bool) {
			if root == sysstate.ReportRoot {
				return staging, true
			}
			return root, false
		})
	}
	release = func() {}
	if cfg.Snapshot != wire.SnapshotNone {
		set, err := snapshot.Take(cfg.Snapshot, cfg.Name, cfg.Paths, log.Named("snapshot"))
		if err != nil {
			return nil, fmt.Errorf("take snapshot: %w", err)
		}
		// a root holding its subvolume's top would see the snapshot
		// directories (empty in the snapshot, nested subvolumes live)
		cfg.Exclude = append(append([]string(nil), cfg.Exclude...), set.Excludes()...)
		maps = append(maps, func(root string) (string, bool) {
			src := set.SourceOf(root)
			return src, src != root
		})
		release = func() {
			if err := set.Release(); err != nil {
				log.Warn("snapshot not deleted; the next backup of this configuration deletes it", zap.Error(err))
			}
		}
	}
	cfg.Paths = append(append([]string(nil), cfg.Paths...), extra...)
	o.Config = cfg
	if len(maps) > 0 {
		o.SourceOf = func(root string) string {
			for _, m := range maps {
				if src, ok := m(root); ok {
					return src
				}
			}
			return root
		}
	}
	return release, nil
}
