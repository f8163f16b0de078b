package fwctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// QoSClass is one traffic class of the uplink's shaping as the kernel
// reports it (firmware/qos.ClassStatus is this type). Rates are bits per second.
type QoSClass struct {
	Device     string `json:"device"`
	Direction  string `json:"direction"` // egress (uplink) or ingress (ifb)
	Handle     string `json:"handle"`
	Name       string `json:"name"`
	Rate       uint64 `json:"rate_bits"`
	Ceil       uint64 `json:"ceil_bits"`
	Bytes      uint64 `json:"bytes"`
	Packets    uint64 `json:"packets"`
	Drops      uint64 `json:"drops"`
	Overlimits uint64 `json:"overlimits"`
}

// QoSStatus is the firmware's answer to "qos json".
type QoSStatus struct {
	// Error says why the uplink is not shaped as configured ("" when it is).
	Error   string     `json:"error,omitempty"`
	Classes []QoSClass `json:"classes"`
}

// MaxQoSJSON bounds the answer to "qos json" (a few hundred classes).
const MaxQoSJSON = 1 << 20

// QoS asks the firmware at path for the uplink's classes and counters.
func QoS(ctx context.Context, path string) (QoSStatus, error) {
	var b limitedBuffer
	b.max = MaxQoSJSON
	err := Send(ctx, path, "qos json", &b)
	if b.over {
		return QoSStatus{}, fmt.Errorf("read qos json: %w: the answer exceeds %d bytes", ErrAnswer, MaxQoSJSON)
	}
	if err != nil {
		return QoSStatus{}, err
	}
	out := b.buf.Bytes()
	if msg, ok := bytes.CutPrefix(out, []byte("error: ")); ok {
		return QoSStatus{}, fmt.Errorf("%w: %s", ErrFirmware, strings.TrimSpace(string(msg)))
	}
	var st QoSStatus
	if err := json.Unmarshal(out, &st); err != nil {
		return QoSStatus{}, fmt.Errorf("decode qos json: %w: %w", ErrAnswer, err)
	}
	return st, nil
}

// limitedBuffer keeps at most max bytes and notes whether more came. The
// buffer is a field, not embedded: io.Copy would use bytes.Buffer's
// ReadFrom and bypass the limit.
type limitedBuffer struct {
	buf  bytes.Buffer
	max  int
	over bool
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if l.buf.Len()+len(p) > l.max {
		l.over = true
		return 0, io.ErrShortWrite
	}
	return l.buf.Write(p)
}
