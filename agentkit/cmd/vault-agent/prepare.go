package main

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

// prepare readies one synchronization before backup.Run: a system
// configuration gets its reports collected and becomes a files
// configuration of the system paths plus sysstate.ReportRoot (read from
// the staging directory); a configuration with Snapshot gets its roots
// snapshotted and read from there. release undoes what prepare did; call
// it after backup.Run, also when Run failed.
func (a *app) prepare(ctx context.Context, o *backup.Options) (release func(), err error) {
	cfg := o.Config
	var maps []func(string) (string, bool)
	var extra []string // roots not on this machine's filesystems
	if cfg.Kind == wire.KindSystem {
		cdir, err := a.st.ConfigDir(cfg.Name)
		if err != nil {
			return nil, err
		}
		staging := filepath.Join(cdir, "system-report")
		col, err := sysstate.Collect(ctx, sysstate.Options{Staging: staging, Log: a.log.Named("sysstate")})
		if err != nil {
			return nil, fmt.Errorf("collect system state: %w", err)
		}
		for _, m := range col.Missing {
			a.log.Debug("system state: not recorded", zap.String("what", m))
		}
		cfg.Kind = wire.KindFiles
		cfg.Paths = col.Paths
		maps = append(maps, func(root string) (string, bool) {
			if root == sysstate.ReportRoot {
				return staging, true
			}
			return root, false
		})
		extra = append(extra, sysstate.ReportRoot)
	}
	release = func() {}
	if cfg.Snapshot != wire.SnapshotNone {
		set, err := snapshot.Take(cfg.Snapshot, cfg.Name, cfg.Paths, a.log.Named("snapshot"))
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
				a.log.Warn("snapshot not deleted; the next backup of this configuration deletes it", zap.Error(err))
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
