//go:build cgo

// Command panel drives the appliance's USB front panel (docs/panel.md). It
// is the image's only cgo program: gousb over libusb-1.0 moves the bulk
// frames; the protocol, screens and menu are firmware/panel, and everything
// it shows and does goes through PID 1's control socket. PID 1 runs it as
// the supervised service "panel".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/google/gousb"
	"go.uber.org/zap"

	"vaultnode/firmware/control"
	"vaultnode/firmware/panel"
	"vaultnode/internal/clock"
)

func main() {
	sock := flag.String("control", control.DefaultPath, "PID 1's control socket")
	debug := flag.Int("usb-debug", 0, "libusb debug level (0-4)")
	flag.Parse()
	log, err := zap.NewProduction()
	if err != nil {
		fmt.Fprintln(os.Stderr, "panel:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	d := &panel.Driver{Log: log.Named("panel"), Clock: clock.Real{}, Open: &usbOpener{log: log, debug: *debug},
		Backend: panel.Control{Path: *sock}}
	if hints, err := panel.HotplugHints(ctx, log); err != nil {
		log.Warn("no hot-plug hints: a panel plugged in is found at the backed-off scan pace (at most 30 s)", zap.Error(err))
	} else {
		d.Hints = hints
	}
	log.Info("front panel driver started", zap.String("control", *sock),
		zap.String("usb_id", fmt.Sprintf("%04x:%04x", panel.VendorID, panel.ProductID)))
	if err := d.Run(ctx); err != nil {
		log.Error("front panel driver stopped", zap.Error(err))
		os.Exit(1)
	}
}

// usbOpener finds the panel with a fresh libusb context on each scan:
// without udevd, libusb's device list is never told of a device plugged in
// after the context was made. The driver backs its scans off while no
// panel is there (1 s doubling to 30 s) and scans at once on a kernel
// uevent announcing a USB device.
type usbOpener struct {
	log   *zap.Logger
	debug int
}

func newContext() (c *gousb.Context, err error) {
	defer func() { // gousb panics when libusb_init fails
		if r := recover(); r != nil {
			err = fmt.Errorf("init libusb: %v", r)
		}
	}()
	return gousb.NewContext(), nil
}

func (o *usbOpener) Open(ctx context.Context) (panel.Conn, error) {
	uc, err := newContext()
	if err != nil {
		return nil, err
	}
	uc.Debug(o.debug)
	devs, err := uc.OpenDevices(func(d *gousb.DeviceDesc) bool {
		return d.Vendor == panel.VendorID && d.Product == panel.ProductID
	})
	if len(devs) == 0 {
		uc.Close()
		if err != nil {
			return nil, fmt.Errorf("list USB devices: %w", err)
		}
		return nil, panel.ErrNoPanel
	}
	for _, d := range devs[1:] {
		o.log.Warn("more than one front panel; using the first", zap.String("ignored", d.String()))
		d.Close()
	}
	c, err := open(devs[0])
	if err != nil {
		devs[0].Close()
		uc.Close()
		return nil, err
	}
	c.uc = uc
	serial, _ := devs[0].SerialNumber()
	o.log.Info("front panel found", zap.String("device", devs[0].String()), zap.String("serial", serial),
		zap.Int("max_packet", c.MaxPacket()))
	return c, nil
}

// usbConn is an open panel: its vendor interface's two bulk endpoints.
type usbConn struct {
	uc   *gousb.Context
	dev  *gousb.Device
	cfg  *gousb.Config
	intf *gousb.Interface
	in   *gousb.InEndpoint
	out  *gousb.OutEndpoint
	max  int
}

var errNotPanel = errors.New("no vendor interface with a bulk IN and a bulk OUT endpoint")

func open(dev *gousb.Device) (*usbConn, error) {
	_ = dev.SetAutoDetach(true)
	num, err := dev.ActiveConfigNum()
	if err != nil {
		return nil, fmt.Errorf("read the panel's configuration: %w", err)
	}
	cfg, err := dev.Config(num)
	if err != nil {
		return nil, fmt.Errorf("select the panel's configuration %d: %w", num, err)
	}
	for _, id := range cfg.Desc.Interfaces {
		if len(id.AltSettings) == 0 {
			continue
		}
		s := id.AltSettings[0]
		if s.Class != panel.IfaceClass || s.SubClass != panel.IfaceSub || s.Protocol != panel.IfaceProto {
			continue
		}
		var in, out *gousb.EndpointDesc
		for _, e := range s.Endpoints {
			e := e
			if e.TransferType != gousb.TransferTypeBulk {
				continue
			}
			if e.Direction == gousb.EndpointDirectionIn && in == nil {
				in = &e
			} else if e.Direction == gousb.EndpointDirectionOut && out == nil {
				out = &e
			}
		}
		if in == nil || out == nil {
			continue
		}
		intf, err := cfg.Interface(s.Number, 0)
		if err != nil {
			cfg.Close()
			return nil, fmt.Errorf("claim the panel's interface %d: %w", s.Number, err)
		}
		ie, err1 := intf.InEndpoint(in.Number)
		oe, err2 := intf.OutEndpoint(out.Number)
		if err := errors.Join(err1, err2); err != nil {
			intf.Close()
			cfg.Close()
			return nil, fmt.Errorf("open the panel's endpoints: %w", err)
		}
		return &usbConn{dev: dev, cfg: cfg, intf: intf, in: ie, out: oe, max: in.MaxPacketSize}, nil
	}
	cfg.Close()
	return nil, fmt.Errorf("%s: %w", dev, errNotPanel)
}

func (c *usbConn) MaxPacket() int { return c.max }

func (c *usbConn) Read(ctx context.Context, p []byte) (int, error) { return c.in.ReadContext(ctx, p) }

func (c *usbConn) Write(ctx context.Context, p []byte) (int, error) {
	return c.out.WriteContext(ctx, p)
}

func (c *usbConn) Close() error {
	c.intf.Close()
	err := errors.Join(c.cfg.Close(), c.dev.Close())
	if c.uc != nil {
		err = errors.Join(err, c.uc.Close())
	}
	return err
}
