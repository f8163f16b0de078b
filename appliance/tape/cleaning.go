package tape

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/tape/changer"
	"vaultnode/appliance/tape/scsi"
)

// Cleaning on TapeAlert (docs/tape.md, "Cleaning"). After each job the
// flags of every drive it used are read (also when the job failed); a
// drive asking for cleaning (20 "clean now", 21 "clean periodic", as
// Proxmox Backup Server's cleaning request) is cleaned with a cleaning
// cartridge from the library: moved into the drive, waited for until the
// drive has cleaned and ejected it, moved back to its slot, and only then
// counted on the cartridge (physical truth first: every move is confirmed
// by READ ELEMENT STATUS before the catalog hears of it).

// TapeAlert flags about cleaning.
const (
	AlertCleaningMedia   = 11 // data access was attempted with a cleaning cartridge in
	AlertCleanNow        = 20
	AlertCleanPeriodic   = 21
	AlertExpiredCleaning = 22
	AlertInvalidCleaning = 23
)

// Cleaning timing: how often the drive is asked whether it finished, and
// how long a cleaning may take before the vault gives up on it.
const (
	cleanPoll    = 5 * time.Second
	cleanTimeout = 15 * time.Minute
)

// ErrNoCleaningCartridge: no usable cleaning cartridge is in the library.
var ErrNoCleaningCartridge = errors.New("no usable cleaning cartridge in the library")

// needsCleaning reports whether the flags ask for a cleaning.
func needsCleaning(flags []scsi.TapeAlert) bool {
	return slices.ContainsFunc(flags, func(a scsi.TapeAlert) bool { return a.Flag == AlertCleanNow || a.Flag == AlertCleanPeriodic })
}

func hasFlag(flags []scsi.TapeAlert, n ...int) bool {
	return slices.ContainsFunc(flags, func(a scsi.TapeAlert) bool { return slices.Contains(n, a.Flag) })
}

// CleanResult is what a cleaning did.
type CleanResult struct {
	Drive     uint16   `json:"drive"`
	Cartridge string   `json:"cartridge"`
	Cleanings int      `json:"cleanings"` // the cartridge's uses, this one included
	Expired   bool     `json:"expired,omitempty"`
	Alerts    []string `json:"alerts,omitempty"` // the drive's flags after the cleaning
	Outcome   string   `json:"outcome"`
}

// Clean cleans drive addr with a cleaning cartridge (vaultctl tape clean).
func (s *Service) Clean(ctx context.Context, addr uint16) (*CleanResult, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	end := s.begin(fmt.Sprintf("clean drive %d", addr))
	res, err := s.clean(ctx, addr)
	end(err)
	return res, err
}

// afterAlerts acts on the flags read from drive addr after a job's writing
// (its cartridge unloaded): a cleaning when asked, and what the operator
// must hear of in res.Cleaning and the status.
func (s *Service) afterAlerts(ctx context.Context, addr uint16, flags []scsi.TapeAlert, res *JobResult) {
	var notes []string
	if hasFlag(flags, AlertExpiredCleaning, AlertInvalidCleaning) {
		notes = append(notes, fmt.Sprintf("drive %d: the last cleaning cartridge was expired or invalid: replace it", addr))
	}
	if needsCleaning(flags) {
		cr, err := s.clean(ctx, addr)
		switch {
		case err != nil:
			notes = append(notes, fmt.Sprintf("drive %d needs cleaning: %v", addr, err))
		default:
			notes = append(notes, cr.Outcome)
		}
	}
	if len(notes) == 0 {
		return
	}
	res.Cleaning = append(res.Cleaning, notes...)
	s.setStatus(func(st *Status) { st.Cleaning = append(st.Cleaning, notes...) })
}

// alertsAfterError reads every drive's TapeAlert flags after a restore or
// scan failed (the drive may be why) and cleans a drive that asks for it.
func (s *Service) alertsAfterError(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	for _, addr := range s.sortedDrives() {
		flags, _ := s.alerts(ctx, addr, s.lib.Drives[addr])
		s.afterAlerts(ctx, addr, flags, &JobResult{})
	}
}

// pickCleaning chooses the cleaning cartridge for drive addr: in a slot,
// not expired, not held by another drive, the least used first; reserved
// for addr.
func (s *Service) pickCleaning(addr uint16) (catalog.Cartridge, error) {
	carts, err := s.cat.Cartridges()
	if err != nil {
		return catalog.Cartridge{}, err
	}
	var expired []string
	slices.SortStableFunc(carts, func(a, b catalog.Cartridge) int { return a.Cleanings - b.Cleanings })
	for _, c := range carts {
		if c.State != catalog.CartCleaning || c.Where != catalog.WhereSlot {
			continue
		}
		if c.Expired {
			expired = append(expired, c.Barcode)
			continue
		}
		if s.reserve(c.Barcode, addr) {
			return c, nil
		}
	}
	if len(expired) > 0 {
		return catalog.Cartridge{}, fmt.Errorf("%w: %v expired: replace them with new cleaning cartridges (barcode CLN…) and `vaultctl tape import`",
			ErrNoCleaningCartridge, expired)
	}
	return catalog.Cartridge{}, fmt.Errorf("%w: put one (barcode CLN…) into the import/export slot and run `vaultctl tape import`, then `vaultctl tape clean %d`",
		ErrNoCleaningCartridge, addr)
}

// clean runs one cleaning of drive addr.
func (s *Service) clean(ctx context.Context, addr uint16) (*CleanResult, error) {
	d := s.lib.Drives[addr]
	if d == nil {
		return nil, fmt.Errorf("clean drive %d: %w", addr, changer.ErrNoSuchElement)
	}
	res := &CleanResult{Drive: addr}
	if _, err := s.lib.Changer.Sync(ctx, s.rec()); err != nil {
		return res, fmt.Errorf("read the library: %w", err)
	}
	cc, err := s.pickCleaning(addr)
	if err != nil {
		return res, err
	}
	res.Cartridge = cc.Barcode
	defer s.unreserve(cc.Barcode)
	if err := s.cleanWith(ctx, addr, d, cc.Barcode); err != nil {
		return res, fmt.Errorf("clean drive %d with %s: %w", addr, cc.Barcode, err)
	}
	// Back in its slot (the library said so): what did the drive make of it?
	flags, _ := s.alerts(ctx, addr, d)
	for _, f := range flags {
		res.Alerts = append(res.Alerts, f.String())
	}
	res.Expired = hasFlag(flags, AlertExpiredCleaning, AlertInvalidCleaning)
	if err := s.cat.Tape(catalog.KindTapeCleaned, catalog.TapeCleanedCmd{Barcode: cc.Barcode, Drive: addr, When: s.clk.Now().UTC(), Expired: res.Expired}); err != nil {
		return res, err
	}
	if cr, err := s.cat.Cartridge(cc.Barcode); err == nil {
		res.Cleanings = cr.Cleanings
	}
	switch {
	case res.Expired:
		res.Outcome = fmt.Sprintf("drive %d not cleaned: cleaning cartridge %s is expired (replace it; it is not used again)", addr, cc.Barcode)
	case needsCleaning(flags):
		res.Outcome = fmt.Sprintf("drive %d cleaned with %s (use %d), but it still asks for cleaning: call for service if it stays", addr, cc.Barcode, res.Cleanings)
	default:
		res.Outcome = fmt.Sprintf("drive %d cleaned with %s (use %d)", addr, cc.Barcode, res.Cleanings)
	}
	s.log.Info("drive cleaning", zap.Uint16("drive", addr), zap.String("cartridge", cc.Barcode), zap.String("outcome", res.Outcome))
	return res, nil
}

// cleanWith moves the cleaning cartridge into the (emptied) drive, waits
// until the drive ejected it and moves it back to a slot. Every move is the
// changer's, confirmed by READ ELEMENT STATUS.
func (s *Service) cleanWith(ctx context.Context, addr uint16, d Drive, barcode string) error {
	s.seq.Lock()
	inv, err := s.lib.Changer.Sync(ctx, s.rec())
	if err == nil {
		if de, _ := inv.At(addr); de.Full {
			_, err = s.unloadLocked(ctx, addr)
		}
	}
	if err == nil {
		_, err = s.lib.Changer.Load(ctx, barcode, addr, s.rec())
	}
	s.seq.Unlock()
	if err != nil {
		return err
	}
	s.driveStatus(addr, func(ds *DriveStatus) { ds.Barcode = barcode })
	deadline := s.clk.Now().Add(cleanTimeout)
	for {
		rerr := d.Ready(ctx)
		sn, isSense := scsi.AsSense(rerr)
		cleaning := isSense && sn.Key == scsi.KeyNotReady && (sn.ASC == 0x30 && sn.ASCQ == 0x03 || sn.ASC == 0x04)
		if !cleaning || !s.clk.Now().Before(deadline) {
			if rerr != nil && !(isSense && sn.ASC == 0x3A) {
				s.log.Warn("drive cleaning: the drive answers", zap.Uint16("drive", addr), zap.Error(rerr))
			}
			// Ejected (3A), ready, failed or too long: take it out. A
			// drive still holding it is told to unload first.
			if isSense && sn.ASC != 0x3A || rerr == nil {
				if uerr := d.Unload(ctx); uerr != nil && !notReady(uerr) {
					s.log.Warn("unload the cleaning cartridge", zap.Uint16("drive", addr), zap.Error(uerr))
				}
			}
			s.seq.Lock()
			_, err := s.lib.Changer.Unload(ctx, addr, s.rec())
			s.seq.Unlock()
			if err == nil {
				s.driveStatus(addr, func(ds *DriveStatus) { ds.Barcode = "" })
				if cleaning {
					return fmt.Errorf("the drive was still cleaning after %s; the cartridge is back in its slot", cleanTimeout)
				}
				if isSense && sn.ASC == 0x30 && sn.ASCQ == 0x07 {
					return fmt.Errorf("the drive reports a cleaning failure: %w", rerr)
				}
				return nil
			}
			var me *changer.MoveError
			if !errors.As(err, &me) || !s.clk.Now().Before(deadline) {
				return fmt.Errorf("move the cleaning cartridge back: %w", err)
			}
			// The drive has not let go yet: ask again.
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.clk.After(cleanPoll):
		}
	}
}

func (s *Service) unreserve(barcode string) {
	s.rmu.Lock()
	delete(s.reserved, barcode)
	s.rmu.Unlock()
}
