//go:build linux

package discover

import (
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/tape/scsi"
	"vaultnode/internal/clock"
)

// OpenSG opens /dev/sg* nodes for real: SG_IO through scsi.Device,
// wrapped in scsi.Retry so that units becoming ready are waited for.
// readyWait bounds that wait (0: scsi.Retry's default of 10 minutes).
func OpenSG(clk clock.Clock, log *zap.Logger, readyWait time.Duration) Opener {
	return func(path string) (Handle, func() error, error) {
		d, err := scsi.Open(path)
		if err != nil {
			return nil, nil, err
		}
		return &scsi.Retry{Next: d, Clock: clk, Log: log, ReadyWait: readyWait}, d.Close, nil
	}
}
