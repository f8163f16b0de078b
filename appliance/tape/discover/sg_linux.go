//go:build linux

package discover

import (
	"sync"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/tape/scsi"
	"vaultnode/internal/clock"
)

// OpenSG opens /dev/sg* nodes for real: SG_IO through scsi.Device,
// wrapped in scsi.Retry so that units becoming ready are waited for.
// readyWait bounds that wait (0: scsi.Retry's default of 10 minutes).
//
// It turns on the sg driver's direct I/O once (scsi.AllowDirectIO): a
// drive's queued WRITEs (drive.BlockQueue) then go from the job's buffers
// to the device without a copy. Where that fails they are copied, which
// is slower, and a warning says so.
func OpenSG(clk clock.Clock, log *zap.Logger, readyWait time.Duration) Opener {
	if log == nil {
		log = zap.NewNop()
	}
	var once sync.Once
	return func(path string) (Handle, func() error, error) {
		once.Do(func() {
			if err := scsi.AllowDirectIO(); err != nil {
				log.Warn("tape writes will be copied through the kernel (slower)", zap.Error(err))
			}
		})
		d, err := scsi.Open(path)
		if err != nil {
			return nil, nil, err
		}
		return &scsi.Retry{Next: d, Clock: clk, Log: log, ReadyWait: readyWait}, d.Close, nil
	}
}
