package panel

import (
	"context"
	"fmt"
	"os"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// HotplugHints listens to the kernel's uevents (no udevd needed) and sends
// on the returned channel when a USB device is added, so that the driver
// looks for the panel at once instead of at its backed-off pace. The
// listener stops when ctx ends.
func HotplugHints(ctx context.Context, log *zap.Logger) (<-chan struct{}, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("open the kernel uevent socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen to kernel uevents: %w", err)
	}
	f := os.NewFile(uintptr(fd), "uevent") // non-blocking: Read goes through the poller, Close ends it
	out := make(chan struct{}, 1)
	go func() { // owned by ctx: ends when ctx ends (Close unblocks Read)
		<-ctx.Done()
		f.Close()
	}()
	go func() { // owned by ctx: ends when the socket is closed
		defer close(out)
		buf := make([]byte, maxUevent)
		for {
			n, err := f.Read(buf)
			if err != nil {
				if ctx.Err() == nil {
					log.Warn("kernel uevents stopped: scanning for the panel at the backed-off pace", zap.Error(err))
				}
				return
			}
			if isUSBAdd(buf[:n]) {
				select {
				case out <- struct{}{}:
				default: // one pending hint is enough
				}
			}
		}
	}()
	return out, nil
}
