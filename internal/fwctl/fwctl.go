// Package fwctl talks to the appliance firmware's control socket: a Unix
// socket on which a client sends one command line and reads the answer
// until EOF. The firmware serves it (firmware/control); vaultctl and the
// firmware's own "init ctl" send to it.
package fwctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
)

// Path is where the firmware (PID 1) listens on the appliance.
const Path = "/run/vaultnode/control.sock"

// Sentinel errors.
var (
	// ErrNoFirmware: nothing listens at the socket (not an appliance, or
	// the firmware is not up).
	ErrNoFirmware = errors.New("no appliance firmware answers")
	// ErrFirmware: the firmware answered with an error.
	ErrFirmware = errors.New("the firmware refused")
	// ErrAnswer: the answer is not what the command promises.
	ErrAnswer = errors.New("unexpected answer from the firmware")
)

// Send sends cmd to the socket at path and copies the answer to w.
func Send(ctx context.Context, path, cmd string, w io.Writer) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("reach the firmware at %s: %w: %w", path, ErrNoFirmware, err)
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "%s\n", cmd); err != nil {
		return fmt.Errorf("send %q: %w", cmd, err)
	}
	if _, err := io.Copy(w, c); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("read answer to %q: %w", cmd, err)
	}
	return nil
}
