// Package control is the firmware's local control socket: a Unix socket on
// which a client sends one command line and reads the answer until EOF.
// The firmware answers: status (the status screen), logs, poweroff, reboot.
package control

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"vaultnode/internal/fwctl"
)

// DefaultPath is where PID 1 listens.
const DefaultPath = fwctl.Path

// Handler answers one command; it writes the answer to w.
type Handler func(ctx context.Context, cmd string, w io.Writer) error

// Stream is what a Handler's writer also is: the whole connection, for a
// command that holds a conversation (the front panel's setup session). The
// connection's deadline is a minute unless the handler moves it.
type Stream interface {
	io.ReadWriter
	SetDeadline(t time.Time) error
}

type stream struct {
	r *bufio.Reader
	net.Conn
}

func (s stream) Read(p []byte) (int, error) { return s.r.Read(p) }

// Serve listens on path until ctx is done.
func Serve(ctx context.Context, log *zap.Logger, path string, h Handler) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // owned by Serve: closes the listener when ctx ends
		defer wg.Done()
		<-ctx.Done()
		l.Close()
	}()
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept on %s: %w", path, err)
		}
		wg.Add(1)
		go func() { // owned by Serve: bounded by the deadline
			defer wg.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Minute))
			br := bufio.NewReader(c)
			line, err := br.ReadString('\n')
			if err != nil && line == "" {
				return
			}
			cmd := strings.TrimSpace(line)
			if strings.HasPrefix(cmd, "status") { // polled every second by the front panel: keep the log for events
				log.Debug("control request", zap.String("command", cmd))
			} else if strings.HasPrefix(cmd, "pair join ") { // the join token is a secret
				log.Info("control request", zap.String("command", "pair join (token not logged)"))
			} else {
				log.Info("control request", zap.String("command", cmd))
			}
			if err := h(ctx, cmd, stream{br, c}); err != nil {
				fmt.Fprintf(c, "error: %v\n", err)
			}
		}()
	}
}

// Send sends cmd to the socket at path and copies the answer to w.
func Send(ctx context.Context, path, cmd string, w io.Writer) error {
	return fwctl.Send(ctx, path, cmd, w)
}
