package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/tape"
	"vaultnode/appliance/tape/discover"
	"vaultnode/appliance/vault"
	"vaultnode/internal/clock"
)

// openTape finds the tape library (docs/tape.md): the SCSI generic nodes
// under dev ("auto": /dev) are asked what they are, drives are matched to
// the changer's drive elements by serial number, and the first library
// found goes into opts with the recovery program. No changer: no library,
// said in the log; the tape commands then say so too.
func openTape(ctx context.Context, log *zap.Logger, opts *vault.Options, dev, recoverPath string) (func() error, error) {
	none := func() error { return nil }
	if dev == "auto" {
		dev = "/dev"
	}
	nodes, err := discover.Nodes(dev)
	if err != nil || len(nodes) == 0 {
		log.Info("no SCSI generic devices: no tape library", zap.String("dir", dev), zap.Error(err))
		return none, nil
	}
	open := discover.OpenSG(clock.Real{}, log, 2*time.Minute)
	res, err := discover.Scan(ctx, log, open, nodes)
	for _, p := range res.Problems {
		log.Warn("tape discovery", zap.String("problem", p))
	}
	if errors.Is(err, discover.ErrNoLibrary) {
		log.Info("no tape library among the SCSI devices", zap.Int("devices", len(nodes)))
		return none, nil
	}
	if err != nil {
		return none, fmt.Errorf("find the tape library: %w", err)
	}
	found := res.Libraries[0]
	for _, u := range found.Unmatched {
		log.Warn("tape drive element without a device", zap.Uint16("element", u.Element), zap.String("serial", u.Serial), zap.String("reason", u.Reason))
	}
	lib, closeLib, err := tape.OpenLibrary(found, open, log)
	if err != nil {
		return none, err
	}
	if recoverPath == "" {
		if exe, err := os.Executable(); err == nil {
			recoverPath = filepath.Join(filepath.Dir(exe), "vault-tape-recover")
		}
	}
	if prog, err := os.ReadFile(recoverPath); err == nil {
		opts.TapeRecovery = prog
	} else {
		log.Warn("the recovery program is missing: cartridges are labelled without it (build it with make build)", zap.String("path", recoverPath), zap.Error(err))
	}
	opts.Tape = &lib
	log.Info("tape library found", zap.String("changer", found.Changer.String()), zap.Int("drives", len(lib.Drives)))
	return closeLib, nil
}
