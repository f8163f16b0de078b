package panel

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
)

// MaxAnswer bounds an answer read from the control socket.
const MaxAnswer = 1 << 20

// ErrFirmware is an "error: ..." answer from PID 1.
var ErrFirmware = errors.New("the firmware refused")

// Control is the Backend over PID 1's control socket.
type Control struct{ Path string }

func (c Control) dial(ctx context.Context, cmd string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Path)
	if err != nil {
		return nil, fmt.Errorf("reach the firmware at %s: %w", c.Path, err)
	}
	if _, err := fmt.Fprintf(conn, "%s\n", cmd); err != nil {
		conn.Close()
		return nil, fmt.Errorf("send %q: %w", cmd, err)
	}
	return conn, nil
}

// call sends cmd and returns the whole answer.
func (c Control) call(ctx context.Context, cmd string) ([]byte, error) {
	conn, err := c.dial(ctx, cmd)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	b, err := io.ReadAll(io.LimitReader(conn, MaxAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("read answer to %q: %w", cmd, err)
	}
	if len(b) > MaxAnswer {
		return nil, fmt.Errorf("answer to %q: longer than %d bytes", cmd, MaxAnswer)
	}
	if msg, ok := bytes.CutPrefix(b, []byte("error: ")); ok {
		return nil, fmt.Errorf("%s: %w: %s", cmd, ErrFirmware, strings.TrimSpace(string(msg)))
	}
	return b, nil
}

// Status asks "status json".
func (c Control) Status(ctx context.Context) (Status, error) {
	var s Status
	b, err := c.call(ctx, "status json")
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("decode status: %w", err)
	}
	return s, nil
}

// PowerOff asks for a clean shutdown.
func (c Control) PowerOff(ctx context.Context) error {
	_, err := c.call(ctx, "poweroff")
	return err
}

// Candidates asks which blank disks can replace a missing array member.
func (c Control) Candidates(ctx context.Context) ([]Candidate, error) {
	b, err := c.call(ctx, "disk candidates")
	if err != nil {
		return nil, err
	}
	var out []Candidate
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("decode disk candidates: %w", err)
	}
	if out == nil {
		out = []Candidate{}
	}
	return out, nil
}

// Replace starts the rebuild onto disk; erase confirms wiping a disk that
// holds data. It returns PID 1's answer.
func (c Control) Replace(ctx context.Context, disk string, erase bool) (string, error) {
	cmd := "disk replace " + disk
	if erase {
		cmd += " erase"
	}
	b, err := c.call(ctx, cmd)
	return strings.TrimSpace(string(b)), err
}

// Setup opens a setup session. The first line says whether PID 1 took it.
func (c Control) Setup(ctx context.Context) (io.ReadWriteCloser, error) {
	conn, err := c.dial(ctx, "setup")
	if err != nil {
		return nil, err
	}
	br := bufio.NewReader(conn)
	peek, err := br.Peek(7)
	if err == nil && string(peek) == "error: " {
		line, _ := br.ReadString('\n')
		conn.Close()
		return nil, fmt.Errorf("setup: %w: %s", ErrFirmware, strings.TrimSpace(strings.TrimPrefix(line, "error: ")))
	}
	if err != nil && len(peek) == 0 {
		conn.Close()
		return nil, fmt.Errorf("open setup session: %w", err)
	}
	return struct {
		io.Reader
		io.Writer
		io.Closer
	}{br, conn, conn}, nil
}
