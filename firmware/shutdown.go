package firmware

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// ServiceStopDeadline bounds how long shutdown waits for every service.
const ServiceStopDeadline = 30 * time.Second

func (m *Machine) shutdownSteps() []step {
	return []step{
		{name: "stop services", run: m.stopServices},
		{name: "stop front panel", run: m.stopPanel},
		{name: "stop monitoring and control", run: m.stopBackground},
		{name: "close log file", run: func(context.Context) error { m.ring.Detach(); return nil }},
		{name: "sync", run: func(context.Context) error { unix.Sync(); return nil }},
		{name: "unmount data volume", run: m.unmountData},
		{name: "unmount system disk", run: func(context.Context) error { return unmount(PersistDir) }},
		{name: "final sync", run: func(context.Context) error { unix.Sync(); return nil }},
	}
}

func (m *Machine) stopServices(context.Context) error {
	m.svcMu.Lock()
	defer m.svcMu.Unlock()
	return m.stopServicesLocked()
}

func (m *Machine) stopServicesLocked() error {
	if m.svcStop == nil {
		return nil
	}
	m.svcStop()
	select {
	case <-m.svcDone:
		return nil
	case <-m.clk.After(ServiceStopDeadline):
		return fmt.Errorf("services still running after %s; going on", ServiceStopDeadline)
	}
}

func (m *Machine) stopBackground(ctx context.Context) error {
	var err error
	if m.httpSrv != nil {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = m.httpSrv.Shutdown(sctx)
		cancel()
	}
	m.bgCancel()
	done := make(chan struct{})
	go func() { m.bgWG.Wait(); close(done) }() // ends when the background goroutines end
	select {
	case <-done:
	case <-m.clk.After(10 * time.Second):
		err = errors.Join(err, errors.New("background tasks still running after 10s"))
	}
	return err
}

func (m *Machine) unmountData(ctx context.Context) error {
	if m.dataDev == "" {
		return nil
	}
	if err := unmount(DataDir); err != nil {
		return err
	}
	if c := m.raidController(); c != nil {
		// The reaper has stopped: the controller stops the array by ioctl.
		return c.Stop()
	}
	return nil
}

func unmount(dir string) error {
	var err error
	for i := 0; i < 10; i++ {
		if err = unix.Unmount(dir, 0); err == nil || errors.Is(err, unix.EINVAL) {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err2 := unix.Unmount(dir, unix.MNT_DETACH); err2 != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return fmt.Errorf("unmount %s: %w (detached it)", dir, err)
}
