package panel

import (
	"bytes"
	"time"
)

// Backoff spaces out the scans for an absent panel: each scan opens a
// fresh libusb context, so a panel-less appliance should not make one
// every second forever. The first scan is due at once; each scan that
// found nothing waits Min, then twice as long, up to Max. Reset (the panel
// was lost, or a USB device was plugged in) makes the next scan due at
// once again.
type Backoff struct {
	Min, Max time.Duration
	delay    time.Duration
	next     time.Time
}

// Due reports whether a scan is due at now.
func (b *Backoff) Due(now time.Time) bool { return !now.Before(b.next) }

// Failed records a scan at now that found nothing and returns the wait
// until the next one.
func (b *Backoff) Failed(now time.Time) time.Duration {
	if b.delay == 0 {
		b.delay = b.Min
	} else {
		b.delay = min(2*b.delay, b.Max)
	}
	b.next = now.Add(b.delay)
	return b.delay
}

// Reset makes the next scan due at once and the wait after it Min.
func (b *Backoff) Reset() { b.delay, b.next = 0, time.Time{} }

// maxUevent bounds one kernel uevent message (the kernel's own limit is
// 2048 bytes of environment plus the header).
const maxUevent = 8192

// isUSBAdd reports whether a kernel uevent message ("ACTION@DEVPATH\0
// KEY=VALUE\0...") announces an added USB device.
func isUSBAdd(msg []byte) bool {
	if len(msg) > maxUevent {
		return false
	}
	fields := bytes.Split(msg, []byte{0})
	if !bytes.HasPrefix(fields[0], []byte("add@")) {
		return false
	}
	for _, f := range fields[1:] {
		if bytes.Equal(f, []byte("SUBSYSTEM=usb")) {
			return true
		}
	}
	return false
}
