//go:build linux

package scsi

import (
	"context"
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sgIO is the SG_IO ioctl request number (include/scsi/sg.h).
const sgIO = 0x2285

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
	fd   int
	path string
}

// Open opens a SCSI generic device node read-write.
func Open(path string) (*Device, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open SCSI device %s: %w", path, err)
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

// Exec issues c with SG_IO and waits for it. The ioctl cannot be
// interrupted; ctx is checked before the command starts, and c.Timeout is
// enforced by the kernel.
func (d *Device) Exec(ctx context.Context, c Command) (Response, error) {
	if err := ctx.Err(); err != nil {
		return Response{}, fmt.Errorf("issue %s on %s: %w", c.Name(), d.path, err)
	}
	hdr, sense, err := buildHdr(c)
	if err != nil {
		return Response{}, fmt.Errorf("issue %s on %s: %w", c.Name(), d.path, err)
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), sgIO, uintptr(unsafe.Pointer(hdr)))
	runtime.KeepAlive(c.CDB)
	runtime.KeepAlive(c.Data)
	runtime.KeepAlive(sense)
	runtime.KeepAlive(hdr)
	if errno != 0 {
		return Response{}, fmt.Errorf("issue %s on %s: %w: %w", c.Name(), d.path, ErrTransport, errno)
	}
	return hdrResponse(c, hdr, sense, d.path)
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
