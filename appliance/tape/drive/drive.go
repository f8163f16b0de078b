// Package drive drives a sequential-access tape drive (SSC) over a SCSI
// handle: identity, readiness, variable-block mode, block reads and writes
// whose lengths come from the sense data (not from the transport's
// residue, which QEMU's scsi-generic path always reports as 0), filemarks,
// and SPACE/LOCATE/READ POSITION to reach a tape file without reading the
// tape from its start, and TapeAlert flags.
package drive

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"vaultnode/appliance/tape/scsi"
)

// Handle runs SCSI commands on the drive's /dev/sg* node (a *scsi.Device
// wrapped in scsi.Retry in the product, an emulated drive in tests).
type Handle interface {
	Exec(ctx context.Context, c scsi.Command) (scsi.Response, error)
}

// Sentinel errors.
var (
	// ErrFilemark: a READ met a filemark; the tape is now past it, at the
	// start of the next file. It ends a tape file, like io.EOF.
	ErrFilemark = errors.New("filemark")
	// ErrEndOfData: nothing is written past this point (BLANK CHECK).
	ErrEndOfData = errors.New("end of data")
	// ErrEarlyWarning: the block was written, and the cartridge is nearly
	// full: finish the file and continue on the next cartridge.
	ErrEarlyWarning = errors.New("end of medium early warning")
	// ErrEndOfMedium: the block was not written, the cartridge is full.
	ErrEndOfMedium = errors.New("end of medium")
	// ErrBlockTooLarge: the block on tape is larger than the buffer; the
	// rest of the block is lost and the tape is past it.
	ErrBlockTooLarge = errors.New("block larger than buffer")
	// ErrNotTape: the device is not a sequential-access device.
	ErrNotTape = errors.New("not a tape drive")
	// ErrUnsupported: the drive does not implement the command (ILLEGAL
	// REQUEST, invalid command operation code or an unsupported page).
	// LOCATE and TapeAlert are optional in practice: tgt's virtual drive
	// lacks both, and so do some older drives.
	ErrUnsupported = errors.New("not supported by this drive")
	// ErrPositionLost: a command at the current position (READ, WRITE,
	// WRITE FILEMARKS, SPACE) met a unit attention or "not ready": the
	// drive was reset or its cartridge changed, and may have lost its
	// position and block mode. It was not executed, and must not be
	// repeated before the tape is positioned again; a file being written
	// is torn (it never gets its filemark).
	ErrPositionLost = errors.New("tape position lost (the drive was reset or its cartridge changed)")
)

// unsupported says whether err is the drive refusing a command it does not
// implement: invalid command operation code (5/20/00), or for a page-based
// command an invalid field in the CDB (5/24/00).
func unsupported(err error, pageBased bool) bool {
	s, ok := scsi.AsSense(err)
	return ok && (s.Is(scsi.KeyIllegalRequest, 0x20, 0x00) || pageBased && s.Is(scsi.KeyIllegalRequest, 0x24, 0x00))
}

// Drive is one tape drive. Its methods must not run concurrently.
type Drive struct {
	h   Handle
	log *zap.Logger
}

// New returns a Drive over h.
func New(h Handle, log *zap.Logger) *Drive {
	if log == nil {
		log = zap.NewNop()
	}
	return &Drive{h: h, log: log}
}

func (d *Drive) run(ctx context.Context, c scsi.Command) (scsi.Response, error) {
	resp, err := d.h.Exec(ctx, c)
	if err != nil {
		return resp, fmt.Errorf("tape drive: %w", err)
	}
	return resp, respErr(c, resp)
}

// respErr is resp's error, ErrPositionLost added for a positional command
// that met a unit attention or "not ready".
func respErr(c scsi.Command, resp scsi.Response) error {
	err := resp.Err(c)
	if s, ok := scsi.AsSense(err); ok && c.LosesPosition(s) {
		return fmt.Errorf("%w: %w", ErrPositionLost, err)
	}
	return err
}

// Identity is what the drive says it is.
type Identity struct {
	scsi.InquiryData
	Serial string // VPD 80h: matched against the changer's DVCID
}

// Identify reads INQUIRY and the unit serial number.
func (d *Drive) Identify(ctx context.Context) (Identity, error) {
	c := scsi.Inquiry(96)
	r, err := d.run(ctx, c)
	if err != nil {
		return Identity{}, fmt.Errorf("identify drive: %w", err)
	}
	inq, err := scsi.ParseInquiry(c.Data[:min(r.Transferred, len(c.Data))])
	if err != nil {
		return Identity{}, fmt.Errorf("identify drive: %w", err)
	}
	if inq.PeripheralType != scsi.TypeSequential {
		return Identity{}, fmt.Errorf("identify drive: peripheral type %d: %w", inq.PeripheralType, ErrNotTape)
	}
	c = scsi.InquiryVPD(scsi.VPDSerial, 255)
	r, err = d.run(ctx, c)
	if err != nil {
		return Identity{}, fmt.Errorf("read drive serial: %w", err)
	}
	sn, err := scsi.ParseSerialVPD(c.Data[:min(r.Transferred, len(c.Data))])
	if err != nil {
		return Identity{}, fmt.Errorf("read drive serial: %w", err)
	}
	return Identity{InquiryData: inq, Serial: sn}, nil
}

// Ready waits (through the handle's retries) until a cartridge is ready.
func (d *Drive) Ready(ctx context.Context) error {
	if _, err := d.run(ctx, scsi.TestUnitReady()); err != nil {
		return fmt.Errorf("wait for drive ready: %w", err)
	}
	return nil
}

// Mode returns the block descriptor (block length 0 = variable mode).
func (d *Drive) Mode(ctx context.Context) (scsi.BlockDescriptor, error) {
	c := scsi.ModeSense10(0x00, 64)
	r, err := d.run(ctx, c)
	if err != nil {
		return scsi.BlockDescriptor{}, fmt.Errorf("read drive mode: %w", err)
	}
	bd, err := scsi.ParseModeSense10(c.Data[:min(r.Transferred, len(c.Data))])
	if err != nil {
		return scsi.BlockDescriptor{}, fmt.Errorf("read drive mode: %w", err)
	}
	return bd, nil
}

// SetVariable puts the drive in variable-block mode and checks it took. A
// drive already in variable mode is left alone; one that lacks MODE
// SELECT(10) is asked with MODE SELECT(6).
func (d *Drive) SetVariable(ctx context.Context) error {
	if bd, err := d.Mode(ctx); err == nil && bd.BlockLength == 0 {
		return nil
	}
	c, err := scsi.ModeSelectBlockSize(0)
	if err != nil {
		return err
	}
	if _, err := d.run(ctx, c); unsupported(err, false) {
		d.log.Info("drive lacks MODE SELECT(10), using MODE SELECT(6)")
		c, _ = scsi.ModeSelect6BlockSize(0)
		_, err = d.run(ctx, c)
		if err != nil {
			return fmt.Errorf("set variable-block mode: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("set variable-block mode: %w", err)
	}
	bd, err := d.Mode(ctx)
	if err != nil {
		return fmt.Errorf("set variable-block mode: %w", err)
	}
	if bd.BlockLength != 0 {
		return fmt.Errorf("set variable-block mode: drive kept block length %d", bd.BlockLength)
	}
	return nil
}

// WriteBlock writes p as one block. ErrEarlyWarning means it was written
// and the cartridge is nearly full; ErrEndOfMedium that it was not.
func (d *Drive) WriteBlock(ctx context.Context, p []byte) error {
	c, err := scsi.Write6(p)
	if err != nil {
		return err
	}
	_, err = d.run(ctx, c)
	return writeResult(err)
}

// writeResult classifies a WRITE's outcome.
func writeResult(err error) error {
	// Early warning is EOM with NO SENSE (00/02); some drives send the
	// ASCQ without the EOM bit.
	if s, ok := scsi.AsSense(err); ok && (s.EOM || s.Is(scsi.KeyNoSense, 0, 0x02)) {
		if s.Key == scsi.KeyNoSense || s.Key == scsi.KeyRecoveredError {
			return fmt.Errorf("write block: %w", ErrEarlyWarning)
		}
		return fmt.Errorf("write block: %w: %w", ErrEndOfMedium, err)
	}
	if err != nil {
		return fmt.Errorf("write block: %w", err)
	}
	return nil
}

// ReadBlock reads the next block into buf and returns its length. It asks
// with SILI=0, so that every short block is reported with its residue in
// the sense INFORMATION field: that is the one length source that holds on
// every transport (tgt reports only there, QEMU's path zeroes the residue).
func (d *Drive) ReadBlock(ctx context.Context, buf []byte) (int, error) {
	c, err := scsi.Read6(buf, false)
	if err != nil {
		return 0, err
	}
	r, err := d.run(ctx, c)
	if err == nil {
		return min(r.Transferred, len(buf)), nil
	}
	s, ok := scsi.AsSense(err)
	switch {
	case !ok:
		return 0, fmt.Errorf("read block: %w", err)
	case s.Filemark:
		return 0, ErrFilemark
	case s.Is(scsi.KeyBlankCheck, 0x00, 0x05) || s.Key == scsi.KeyBlankCheck:
		return 0, ErrEndOfData
	case s.ILI && (s.Key == scsi.KeyNoSense || s.Key == scsi.KeyRecoveredError):
		res, ok := s.Residue()
		if !ok {
			return 0, fmt.Errorf("read block: incorrect length without a residue: %w", err)
		}
		if res < 0 {
			return len(buf), fmt.Errorf("read block: %d bytes more than the %d-byte buffer: %w", -res, len(buf), ErrBlockTooLarge)
		}
		if res > int64(len(buf)) {
			return 0, fmt.Errorf("read block: residue %d beyond the %d-byte buffer: %w", res, len(buf), scsi.ErrMalformed)
		}
		return len(buf) - int(res), nil
	}
	return 0, fmt.Errorf("read block: %w", err)
}

// WriteFilemarks writes n filemarks, which also flushes the drive buffer:
// when it returns, everything before is on tape.
func (d *Drive) WriteFilemarks(ctx context.Context, n uint32) error {
	c, err := scsi.WriteFilemarks(n)
	if err != nil {
		return err
	}
	if _, err := d.run(ctx, c); err != nil {
		if s, ok := scsi.AsSense(err); ok && s.Key == scsi.KeyNoSense && (s.EOM || s.ASCQ == 0x02) {
			return fmt.Errorf("write filemark: %w", ErrEarlyWarning)
		}
		return fmt.Errorf("write filemark: %w", err)
	}
	return nil
}

// Rewind rewinds to the beginning of the tape.
func (d *Drive) Rewind(ctx context.Context) error {
	if _, err := d.run(ctx, scsi.Rewind()); err != nil {
		return fmt.Errorf("rewind: %w", err)
	}
	return nil
}

// SpaceFiles moves over n filemarks (negative: backwards, ending before
// the filemark). Running into end of data gives ErrEndOfData.
func (d *Drive) SpaceFiles(ctx context.Context, n int32) error {
	return d.space(ctx, scsi.SpaceFilemarks, n)
}

// SpaceBlocks moves over n blocks; a filemark on the way stops it with
// ErrFilemark.
func (d *Drive) SpaceBlocks(ctx context.Context, n int32) error {
	return d.space(ctx, scsi.SpaceBlocks, n)
}

// SpaceEOD moves to the end of data, where the next file is appended.
func (d *Drive) SpaceEOD(ctx context.Context) error { return d.space(ctx, scsi.SpaceEOD, 0) }

func (d *Drive) space(ctx context.Context, code scsi.SpaceCode, n int32) error {
	c, err := scsi.Space(code, n)
	if err != nil {
		return err
	}
	if _, err := d.run(ctx, c); err != nil {
		s, _ := scsi.AsSense(err)
		switch {
		case s.Key == scsi.KeyBlankCheck:
			return fmt.Errorf("space: %w", ErrEndOfData)
		case s.Filemark:
			return fmt.Errorf("space: %w", ErrFilemark)
		}
		return fmt.Errorf("space: %w", err)
	}
	return nil
}

// Locate positions the tape at a logical object (block or filemark)
// number, as READ POSITION reported it while writing.
func (d *Drive) Locate(ctx context.Context, obj uint64) error {
	c := scsi.Locate16(obj)
	if obj <= 0xFFFFFFFF {
		c = scsi.Locate10(uint32(obj))
	}
	if _, err := d.run(ctx, c); err != nil {
		if s, ok := scsi.AsSense(err); ok && s.Key == scsi.KeyBlankCheck {
			return fmt.Errorf("locate %d: %w", obj, ErrEndOfData)
		}
		if unsupported(err, false) {
			return fmt.Errorf("locate %d: %w: %w", obj, ErrUnsupported, err)
		}
		return fmt.Errorf("locate %d: %w", obj, err)
	}
	return nil
}

// Mark is where a tape file starts: its file number (filemarks before it,
// always known to the writer) and, when the drive reported it with READ
// POSITION, its logical object number.
type Mark struct {
	File       uint64
	Block      uint64
	BlockKnown bool
}

// SeekFile positions the tape at the start of tape file m: LOCATE to its
// logical object number when known (a direct seek), else REWIND and SPACE
// over m.File filemarks, which every drive implements (tgt, and drives
// whose READ POSITION is unknown or that lack LOCATE).
func (d *Drive) SeekFile(ctx context.Context, m Mark) error {
	if m.BlockKnown {
		err := d.Locate(ctx, m.Block)
		if err == nil || !errors.Is(err, ErrUnsupported) {
			return err
		}
		d.log.Info("drive lacks LOCATE, spacing over filemarks", zap.Uint64("file", m.File))
	}
	if err := d.Rewind(ctx); err != nil {
		return fmt.Errorf("seek tape file %d: %w", m.File, err)
	}
	if m.File == 0 {
		return nil
	}
	if m.File > 1<<23-1 {
		return fmt.Errorf("seek tape file %d: beyond SPACE's 24-bit count", m.File)
	}
	if err := d.SpaceFiles(ctx, int32(m.File)); err != nil {
		return fmt.Errorf("seek tape file %d: %w", m.File, err)
	}
	return nil
}

// MarkHere returns the Mark of the tape file that starts at the current
// position, the file number given by the caller (who counts the filemarks
// it wrote or spaced over). The logical object number is taken from READ
// POSITION when the drive knows it.
func (d *Drive) MarkHere(ctx context.Context, file uint64) (Mark, error) {
	m := Mark{File: file}
	p, err := d.Position(ctx)
	switch {
	case err == nil:
		m.Block, m.BlockKnown = p.Block, true
	case errors.Is(err, scsi.ErrPositionUnknown) || unsupported(err, false):
		// Reached by spacing over filemarks instead.
	default:
		return Mark{}, err
	}
	return m, nil
}

// Position reads the logical position (long form). A drive that does not
// know it (or tgt's stub) gives scsi.ErrPositionUnknown.
func (d *Drive) Position(ctx context.Context) (scsi.Position, error) {
	c := scsi.ReadPositionLong()
	r, err := d.run(ctx, c)
	if err != nil {
		return scsi.Position{}, fmt.Errorf("read position: %w", err)
	}
	p, err := scsi.ParsePosition(c.Data[:min(r.Transferred, len(c.Data))])
	if err != nil {
		return scsi.Position{}, fmt.Errorf("read position: %w", err)
	}
	return p, nil
}

// Load threads the cartridge; Unload rewinds and ejects it so the changer
// can take it (before MOVE MEDIUM from the drive).
func (d *Drive) Load(ctx context.Context) error {
	if _, err := d.run(ctx, scsi.LoadUnload(true)); err != nil {
		return fmt.Errorf("load cartridge: %w", err)
	}
	return nil
}

// Unload rewinds and ejects the cartridge.
func (d *Drive) Unload(ctx context.Context) error {
	if _, err := d.run(ctx, scsi.LoadUnload(false)); err != nil {
		return fmt.Errorf("unload cartridge: %w", err)
	}
	return nil
}

// TapeAlerts reads the TapeAlert flags that are set (read after each job
// and reported to the operator). A drive without the TapeAlert log page
// gives ErrUnsupported: report "no TapeAlert" rather than fail the job.
func (d *Drive) TapeAlerts(ctx context.Context) ([]scsi.TapeAlert, error) {
	c := scsi.LogSense(scsi.PageTapeAlert, 4+64*5)
	r, err := d.run(ctx, c)
	if unsupported(err, true) {
		return nil, fmt.Errorf("read TapeAlert flags: %w: %w", ErrUnsupported, err)
	}
	if err != nil {
		return nil, fmt.Errorf("read TapeAlert flags: %w", err)
	}
	a, err := scsi.ParseTapeAlert(c.Data[:min(r.Transferred, len(c.Data))])
	if err != nil {
		return nil, fmt.Errorf("read TapeAlert flags: %w", err)
	}
	return a, nil
}
