//go:build linux

package scsi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sg driver ioctls and flags (include/scsi/sg.h).
const (
	sgSetReservedSz = 0x2275
	sgFlagDirectIO  = 0x01
	sgFlagQAtTail   = 0x10
	sgInfoDirectIO  = 0x02 // info & SG_INFO_DIRECT_IO_MASK (0x06)
	sgInfoIOMask    = 0x06
	// sgMaxQueue is SG_MAX_QUEUE: the commands one open sg node may have
	// outstanding.
	sgMaxQueue = 16
)

// ErrQueueFull: Start was called with MaxQueued commands outstanding.
var ErrQueueFull = errors.New("SCSI command queue full")

// MaxQueued is how many commands may be outstanding on one Device.
const MaxQueued = sgMaxQueue

// queued is one command started with Start: everything the kernel holds a
// pointer to stays referenced here until Finish collected it (the data
// buffer in particular, which direct I/O reads while the command runs).
type queued struct {
	c     Command
	hdr   *sgIoHdr
	sense []byte
	id    int32
}

// allowDIO is the sg driver's switch for direct I/O (0 by default).
const allowDIO = "/sys/module/sg/parameters/allow_dio"

// AllowDirectIO turns on the sg driver's direct I/O (its allow_dio
// parameter), which every open node shares. Without it a command that
// asks for direct I/O is served by copying its data through a kernel
// buffer, which is correct but slower.
func AllowDirectIO() error {
	b, err := os.ReadFile(allowDIO)
	if err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	if err := os.WriteFile(allowDIO, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("allow direct I/O in the sg driver: %w", err)
	}
	return nil
}

// SetDirectIO makes Exec ask the sg driver to transfer data straight from
// and to the caller's buffers (SG_FLAG_DIRECT_IO) instead of copying them
// through a kernel buffer; Start always asks. The driver does it only when
// allowed (AllowDirectIO) and copies silently otherwise; Response.Direct
// says which happened.
func (d *Device) SetDirectIO(on bool) { d.direct = on }

// SetReserved sets the sg driver's reserved buffer of the node (used by
// one command at a time without allocating).
func (d *Device) SetReserved(n int) error {
	v := int32(n)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), sgSetReservedSz, uintptr(unsafe.Pointer(&v))); errno != 0 {
		return fmt.Errorf("set the reserved buffer of %s: %w", d.path, errno)
	}
	return nil
}

// Start issues c through the sg driver's asynchronous interface (write(2)
// of an sg_io_hdr) and returns without waiting: several commands can be
// outstanding, each collected by Finish in the order they were started.
// The kernel queues them at the tail of the device's queue
// (SG_FLAG_Q_AT_TAIL: sg puts them at its head otherwise, which would
// reverse them), so they reach the device in the order of Start; a tape
// drive runs them in that order. c.Data must not change until Finish has
// returned c's result.
func (d *Device) Start(ctx context.Context, c Command) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("issue %s on %s: %w", c.Name(), d.path, err)
	}
	if len(d.queue) >= sgMaxQueue {
		return fmt.Errorf("issue %s on %s: %w (%d outstanding)", c.Name(), d.path, ErrQueueFull, len(d.queue))
	}
	hdr, sense, err := buildHdr(c)
	if err != nil {
		return fmt.Errorf("issue %s on %s: %w", c.Name(), d.path, err)
	}
	hdr.PackID = d.nextPackID()
	// Direct I/O when the driver allows it (AllowDirectIO): the buffer
	// is the caller's until Finish anyway, so the device may read it in
	// place instead of through a kernel copy.
	hdr.Flags |= sgFlagQAtTail | sgFlagDirectIO
	b := unsafe.Slice((*byte)(unsafe.Pointer(hdr)), unsafe.Sizeof(*hdr))
	err = retryEINTR(func() (int, error) { return unix.Write(d.fd, b) })
	runtime.KeepAlive(hdr)
	if err != nil {
		return fmt.Errorf("issue %s on %s: %w: %w", c.Name(), d.path, ErrTransport, err)
	}
	d.queue = append(d.queue, &queued{c: c, hdr: hdr, sense: sense, id: hdr.PackID})
	return nil
}

// Queued is how many started commands Finish has not collected yet.
func (d *Device) Queued() int { return len(d.queue) }

// Finish waits for the oldest command started with Start (read(2) of its
// pack id) and returns its result as Exec would. The wait cannot be
// interrupted: the command's own timeout bounds it.
func (d *Device) Finish(ctx context.Context) (Response, error) {
	if len(d.queue) == 0 {
		return Response{}, fmt.Errorf("collect a command on %s: none outstanding", d.path)
	}
	q := d.queue[0]
	d.queue[0] = nil
	d.queue = d.queue[1:]
	h := &sgIoHdr{InterfaceID: 'S', DxferDirection: sgDxferNone, PackID: q.id}
	b := unsafe.Slice((*byte)(unsafe.Pointer(h)), unsafe.Sizeof(*h))
	err := retryEINTR(func() (int, error) { return unix.Read(d.fd, b) })
	runtime.KeepAlive(q)
	if err != nil {
		return Response{}, fmt.Errorf("collect %s on %s: %w: %w", q.c.Name(), d.path, ErrTransport, err)
	}
	if h.PackID != q.id {
		return Response{}, fmt.Errorf("collect %s on %s: got command %d, want %d: %w", q.c.Name(), d.path, h.PackID, q.id, ErrTransport)
	}
	r, err := hdrResponse(q.c, h, q.sense, d.path)
	r.Direct = h.Info&sgInfoIOMask == sgInfoDirectIO
	return r, err
}
