package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/bandwidth"
	"vaultnode/internal/schedule"
	"vaultnode/internal/wire"
)

// Configurations and a computer's settings: what to back up, when, and how
// fast.

// PutConfig creates or replaces a configuration of the computer ref, after
// checking it (validateConfig); the vault bumps its revision.
func (v *Vault) PutConfig(ctx context.Context, p *Principal, ref string, cfg wire.Config) (wire.Config, error) {
	cp, err := v.computerFor(p, CapConfigure, ref)
	noteTarget(ctx, cp.Company, cp.ID)
	if err != nil {
		return cfg, err
	}
	if err := validateConfig(&cfg); err != nil {
		return cfg, fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
	}
	out, err := v.Catalog.PutConfig(cp.ID, cfg, v.clk.Now())
	if errors.Is(err, catalog.ErrInvalid) {
		return cfg, fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
	}
	return out, err
}

// DeleteConfig removes a configuration of the computer ref; its versions
// stay.
func (v *Vault) DeleteConfig(ctx context.Context, p *Principal, ref, name string) error {
	cp, err := v.computerFor(p, CapConfigure, ref)
	noteTarget(ctx, cp.Company, cp.ID)
	if err != nil {
		return err
	}
	err = v.Catalog.DeleteConfig(cp.ID, name)
	if errors.Is(err, catalog.ErrNotFound) {
		return fail(http.StatusNotFound, wire.CodeNotFound, "%v", err)
	}
	return err
}

// validateConfig checks a configuration and fills in its defaults: the
// kinds and what each needs (a system configuration chooses its own paths),
// snapshots, and timing.
func validateConfig(cfg *wire.Config) error {
	switch cfg.Kind {
	case "":
		cfg.Kind = wire.KindFiles
		fallthrough
	case wire.KindFiles:
		if len(cfg.Paths) == 0 {
			return errors.New("a files configuration needs at least one path")
		}
		for _, p := range cfg.Paths {
			if !strings.HasPrefix(p, "/") {
				return fmt.Errorf("path %q is not absolute", p)
			}
		}
	case wire.KindDatabase:
		if len(cfg.Command) == 0 {
			return errors.New("a database configuration needs a dump command")
		}
		if cfg.Snapshot != wire.SnapshotNone {
			return errors.New("a database configuration cannot use a filesystem snapshot: its dump command gives the consistent copy")
		}
	case wire.KindSystem:
		if len(cfg.Paths) > 0 || len(cfg.Command) > 0 {
			return errors.New("a system configuration chooses its own paths: give neither paths nor a command")
		}
	default:
		return fmt.Errorf("unknown configuration kind %q (want %q, %q or %q)", cfg.Kind, wire.KindFiles, wire.KindDatabase, wire.KindSystem)
	}
	switch cfg.Snapshot {
	case wire.SnapshotNone, wire.SnapshotBtrfs:
	default:
		return fmt.Errorf("unknown snapshot kind %q (want %q or none)", cfg.Snapshot, wire.SnapshotBtrfs)
	}
	return validateTiming(cfg)
}

// validateTiming checks a configuration's mode, schedule and interval.
func validateTiming(cfg *wire.Config) error {
	switch cfg.Mode {
	case "":
		cfg.Mode = wire.ModeScheduled
	case wire.ModeScheduled:
	case wire.ModeContinuous:
		if cfg.Kind != wire.KindFiles {
			return errors.New("only files configurations can be continuous")
		}
		if cfg.Snapshot != wire.SnapshotNone {
			return errors.New("a continuous configuration reads changes as they happen; a snapshot applies only to scheduled ones")
		}
	default:
		return fmt.Errorf("unknown mode %q (want %q or %q)", cfg.Mode, wire.ModeScheduled, wire.ModeContinuous)
	}
	if cfg.Schedule == "" {
		cfg.Schedule = "24x7"
	}
	if _, err := schedule.Parse(cfg.Schedule); err != nil {
		return err
	}
	if cfg.Interval != "" {
		if d, err := time.ParseDuration(cfg.Interval); err != nil || d < wire.MinInterval {
			return fmt.Errorf("interval %q: want a duration of at least %s such as 30m or 24h", cfg.Interval, wire.MinInterval)
		}
	}
	return nil
}

// SetBandwidth sets the bandwidth profile of the computer ref ("" for
// unlimited) and returns its settings.
func (v *Vault) SetBandwidth(ctx context.Context, p *Principal, ref, profile string) (wire.Settings, error) {
	cp, err := v.computerFor(p, CapConfigure, ref)
	noteTarget(ctx, cp.Company, cp.ID)
	if err != nil {
		return wire.Settings{}, err
	}
	if profile != "" {
		if _, err := bandwidth.ParseProfile(profile); err != nil {
			return wire.Settings{}, fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
		}
	}
	cp, err = v.Catalog.UpdateComputer(cp.ID, func(c *catalog.Computer) error {
		c.Settings.Bandwidth = profile
		return nil
	})
	return cp.Settings, err
}
