//go:build linux

package scsi

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl request numbers of the sg driver (include/scsi/sg.h).
const (
	sgGetVersionNum  = 0x2282 // SG_GET_VERSION_NUM: answered only by an sg node
	sgSetForcePackID = 0x227b // SG_SET_FORCE_PACK_ID: read() returns the request named by pack_id
)

// sgIoHdr is struct sg_io_hdr from include/scsi/sg.h (88 bytes on 64-bit).
type sgIoHdr struct {
	InterfaceID    int32
	DxferDirection int32
	CmdLen         uint8
	MxSbLen        uint8
	IovecCount     uint16
	DxferLen       uint32
	Dxferp         uintptr
	Cmdp           uintptr
	Sbp            uintptr
	Timeout        uint32 // milliseconds
	Flags          uint32
	PackID         int32
	UsrPtr         uintptr
	Status         uint8
	MaskedStatus   uint8
	MsgStatus      uint8
	SbLenWr        uint8
	HostStatus     uint16
	DriverStatus   uint16
	Resid          int32
	Duration       uint32
	Info           uint32
}

const (
	sgDxferNone     = -1
	sgDxferToDev    = -2
	sgDxferFromDev  = -3
	sgInfoOkMask    = 0x1
	driverSenseMask = 0x08 // DRIVER_SENSE: sense buffer valid
	didTimeOut      = 0x03 // host status DID_TIME_OUT
)

// Device is an open /dev/sg* node. Exec is safe for one goroutine at a
// time; the owner serializes commands (a tape drive runs one at a time).
type Device struct {
	fd     int
	path   string
	packID int32 // of the last command submitted

	direct bool      // Exec asks for direct I/O (SetDirectIO)
	queue  []*queued // started with Start, not yet collected, oldest first
}

// Open opens a SCSI generic device node read-write. A node that is not
// SCSI generic is refused before anything is written to it (Exec submits
// commands with write(2), which on another node would write the header as
// data).
func Open(path string) (*Device, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open SCSI device %s: %w", path, err)
	}
	if _, err := unix.IoctlGetInt(fd, sgGetVersionNum); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open SCSI device %s: not a SCSI generic (sg) node: %w: %w", path, ErrTransport, err)
	}
	if err := unix.IoctlSetPointerInt(fd, sgSetForcePackID, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open SCSI device %s: SG_SET_FORCE_PACK_ID: %w: %w", path, ErrTransport, err)
	}
	return &Device{fd: fd, path: path}, nil
}

// Close closes the node.
func (d *Device) Close() error {
	if err := unix.Close(d.fd); err != nil {
		return fmt.Errorf("close SCSI device %s: %w", d.path, err)
	}
	return nil
}

// Exec issues c and waits for it. The wait cannot be cancelled; ctx is
// checked before the command starts, and c.Timeout is enforced by the
// kernel.
//
// A command runs exactly once, whatever signals arrive while it is in
// flight. That is why Exec does not use the SG_IO ioctl: when a signal
// interrupts SG_IO's wait, the sg driver leaves the command running
// (orphaned) and returns ERESTARTSYS, and since Go installs its signal
// handlers with SA_RESTART the kernel then issues the whole ioctl again —
// the same command a second time. Go's runtime sends such signals on its
// own (SIGURG for preemption, at every garbage collection), so a WRITE
// reached the tape twice (a block written twice) and a READ or SPACE moved
// twice (a block skipped), now and then, in the tape lab (docs/tape.md).
// Here the command is submitted with write(2), which returns once it is
// queued, and collected with read(2) by its pack id (SG_SET_FORCE_PACK_ID);
// a read interrupted by a signal is restarted and waits for the same
// command again, never submitting anything.
func (d *Device) Exec(ctx context.Context, c Command) (Response, error) {
	if err := ctx.Err(); err != nil {
		return Response{}, fmt.Errorf("issue %s on %s: %w", c.Name(), d.path, err)
	}
	hdr, sense, err := buildHdr(c)
	if err != nil {
		return Response{}, fmt.Errorf("issue %s on %s: %w", c.Name(), d.path, err)
	}
	if len(d.queue) > 0 {
		return Response{}, fmt.Errorf("issue %s on %s: %d queued commands not collected: %w", c.Name(), d.path, len(d.queue), ErrTransport)
	}
	if d.direct {
		hdr.Flags |= sgFlagDirectIO
	}
	hdr.PackID = d.nextPackID()
	raw := unsafe.Slice((*byte)(unsafe.Pointer(hdr)), unsafe.Sizeof(*hdr))
	err = retryEINTR(func() (int, error) { return unix.Write(d.fd, raw) })
	if err == nil {
		// Collect it: read(2) takes the pack id from the header and fills
		// the header in with the outcome.
		err = retryEINTR(func() (int, error) { return unix.Read(d.fd, raw) })
	}
	runtime.KeepAlive(c.CDB)
	runtime.KeepAlive(c.Data)
	runtime.KeepAlive(sense)
	runtime.KeepAlive(hdr)
	if err != nil {
		return Response{}, fmt.Errorf("issue %s on %s: %w: %w", c.Name(), d.path, ErrTransport, err)
	}
	if hdr.PackID != d.packID {
		return Response{}, fmt.Errorf("issue %s on %s: the driver returned command %d, not %d: %w", c.Name(), d.path, hdr.PackID, d.packID, ErrTransport)
	}
	r, err := hdrResponse(c, hdr, sense, d.path)
	r.Direct = hdr.Info&sgInfoIOMask == sgInfoDirectIO
	return r, err
}

// nextPackID numbers the next command.
func (d *Device) nextPackID() int32 {
	d.packID++
	if d.packID <= 0 {
		d.packID = 1
	}
	return d.packID
}

// retryEINTR runs a read or write of a whole sg header until it is not
// interrupted; a short transfer is an error.
func retryEINTR(f func() (int, error)) error {
	for {
		n, err := f()
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n != int(unsafe.Sizeof(sgIoHdr{})) {
			return fmt.Errorf("transferred %d bytes of the %d-byte sg header", n, unsafe.Sizeof(sgIoHdr{}))
		}
		return nil
	}
}

func buildHdr(c Command) (*sgIoHdr, []byte, error) {
	if len(c.CDB) == 0 || len(c.CDB) > 16 {
		return nil, nil, fmt.Errorf("CDB of %d bytes: %w", len(c.CDB), ErrMalformed)
	}
	sense := make([]byte, MaxSense)
	t := c.Timeout
	if t <= 0 {
		t = TimeoutShort
	}
	if t > time.Duration(1<<32-1)*time.Millisecond {
		t = time.Duration(1<<32-1) * time.Millisecond
	}
	h := &sgIoHdr{
		InterfaceID: 'S',
		CmdLen:      uint8(len(c.CDB)),
		MxSbLen:     uint8(len(sense)),
		Cmdp:        uintptr(unsafe.Pointer(&c.CDB[0])),
		Sbp:         uintptr(unsafe.Pointer(&sense[0])),
		Timeout:     uint32(t / time.Millisecond),
	}
	switch {
	case c.Dir == DirNone || len(c.Data) == 0:
		h.DxferDirection = sgDxferNone
	case c.Dir == DirToDevice:
		h.DxferDirection = sgDxferToDev
	default:
		h.DxferDirection = sgDxferFromDev
	}
	if h.DxferDirection != sgDxferNone {
		if uint64(len(c.Data)) > 1<<32-1 {
			return nil, nil, fmt.Errorf("data buffer of %d bytes: %w", len(c.Data), ErrMalformed)
		}
		h.DxferLen = uint32(len(c.Data))
		h.Dxferp = uintptr(unsafe.Pointer(&c.Data[0]))
	}
	return h, sense, nil
}

func hdrResponse(c Command, h *sgIoHdr, sense []byte, path string) (Response, error) {
	if h.HostStatus == didTimeOut {
		return Response{}, fmt.Errorf("issue %s on %s: timed out after %d ms; check the device and its cabling: %w", c.Name(), path, h.Timeout, ErrTransport)
	}
	if h.HostStatus != 0 || (h.DriverStatus&^driverSenseMask) != 0 && h.Status == 0 {
		return Response{}, fmt.Errorf("issue %s on %s: host status 0x%x driver status 0x%x: %w", c.Name(), path, h.HostStatus, h.DriverStatus, ErrTransport)
	}
	r := Response{Status: h.Status}
	if h.SbLenWr > 0 {
		r.Sense = sense[:min(int(h.SbLenWr), len(sense))]
	}
	if h.DxferDirection != sgDxferNone {
		r.Transferred = int(h.DxferLen) - int(max(h.Resid, 0))
		r.Transferred = max(min(r.Transferred, len(c.Data)), 0)
	}
	return r, nil
}
