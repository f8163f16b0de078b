// Package panel is the front panel of the appliance, without its USB
// transport: the bulk protocol's frames (docs/panel.md), the screens and the
// menu. firmware/cmd/panel moves frames over USB with gousb; everything here
// runs and is tested without hardware.
package panel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// USB identity of the panel (pid.codes test range).
const (
	VendorID    = 0x1209
	ProductID   = 0x0010
	IfaceClass  = 0xff
	IfaceSub    = 0x56
	IfaceProto  = 0x01
	Version     = 1 // highest protocol version this side speaks
	Cols, Rows  = 20, 4
	MaxPayload  = 250
	HeaderSize  = 6
	MaxFrame    = HeaderSize + MaxPayload
	MaxSerial   = 32
	MaxErrorTxt = 200
)

// Frame types.
const (
	THello      = 0x01
	TText       = 0x02
	TClear      = 0x03
	TLED        = 0x04
	TPing       = 0x05
	THelloReply = 0x81
	TKey        = 0x82
	TPong       = 0x85
	TError      = 0x8f
)

// Keys.
type Key uint8

const (
	KeyUp    Key = 1
	KeyDown  Key = 2
	KeyEnter Key = 3
	KeyBack  Key = 4
)

func (k Key) String() string {
	switch k {
	case KeyUp:
		return "up"
	case KeyDown:
		return "down"
	case KeyEnter:
		return "enter"
	case KeyBack:
		return "back"
	}
	return fmt.Sprintf("key(%d)", uint8(k))
}

// ParseKey reads a key name.
func ParseKey(s string) (Key, error) {
	for k := KeyUp; k <= KeyBack; k++ {
		if k.String() == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("%q: %w (up, down, enter or back)", s, ErrUnknownKey)
}

// Colour of the LED.
type Colour uint8

const (
	Off   Colour = 0
	Green Colour = 1
	Amber Colour = 2
	Red   Colour = 3
)

func (c Colour) String() string {
	switch c {
	case Off:
		return "off"
	case Green:
		return "green"
	case Amber:
		return "amber"
	case Red:
		return "red"
	}
	return fmt.Sprintf("colour(%d)", uint8(c))
}

// LED is the status LED's state.
type LED struct {
	Colour Colour
	Blink  bool
}

func (l LED) String() string {
	if l.Blink {
		return l.Colour.String() + " blinking"
	}
	return l.Colour.String()
}

// Error codes of ERROR frames.
const (
	ErrCodeVersion  = 1
	ErrCodeType     = 2
	ErrCodeFrame    = 3
	ErrCodeArgument = 4
)

// Sentinel errors.
var (
	ErrBadMagic   = errors.New("bad frame magic")
	ErrTooLong    = errors.New("frame too long")
	ErrBadPayload = errors.New("bad frame payload")
	ErrUnknownKey = errors.New("unknown key")
)

// Frame is one protocol frame.
type Frame struct {
	Version uint8
	Type    uint8
	Payload []byte
}

// Encode returns the frame's bytes; it refuses a payload over MaxPayload.
func (f Frame) Encode() ([]byte, error) {
	if len(f.Payload) > MaxPayload {
		return nil, fmt.Errorf("encode frame type %#x: payload %d bytes: %w (limit %d)", f.Type, len(f.Payload), ErrTooLong, MaxPayload)
	}
	b := make([]byte, HeaderSize+len(f.Payload))
	b[0], b[1], b[2], b[3] = 'V', 'P', f.Version, f.Type
	binary.LittleEndian.PutUint16(b[4:], uint16(len(f.Payload)))
	copy(b[HeaderSize:], f.Payload)
	return b, nil
}

// Decoder takes frames out of a byte stream fed in chunks of any size.
type Decoder struct{ buf []byte }

// Feed adds received bytes.
func (d *Decoder) Feed(b []byte) { d.buf = append(d.buf, b...) }

// Reset drops buffered input.
func (d *Decoder) Reset() { d.buf = d.buf[:0] }

// Next returns the next complete frame, ok=false when more bytes are
// needed, or an error naming the broken limit (the stream is then
// unusable: reset it).
func (d *Decoder) Next() (Frame, bool, error) {
	if len(d.buf) >= 2 && (d.buf[0] != 'V' || d.buf[1] != 'P') {
		return Frame{}, false, fmt.Errorf("decode frame: %w %#02x %#02x (want 'V' 'P')", ErrBadMagic, d.buf[0], d.buf[1])
	}
	if len(d.buf) < HeaderSize {
		return Frame{}, false, nil
	}
	n := int(binary.LittleEndian.Uint16(d.buf[4:]))
	if n > MaxPayload {
		return Frame{}, false, fmt.Errorf("decode frame type %#x: payload length %d: %w (limit %d)", d.buf[3], n, ErrTooLong, MaxPayload)
	}
	if len(d.buf) < HeaderSize+n {
		return Frame{}, false, nil
	}
	f := Frame{Version: d.buf[2], Type: d.buf[3], Payload: bytes.Clone(d.buf[HeaderSize : HeaderSize+n])}
	d.buf = append(d.buf[:0], d.buf[HeaderSize+n:]...)
	return f, true, nil
}

// Hello is the host's greeting.
func Hello() Frame { return Frame{Version: Version, Type: THello, Payload: []byte{Version}} }

// HelloReply is the device's answer.
type HelloReply struct {
	Version    uint8
	Cols, Rows uint8
	Serial     string
}

// Frame encodes r.
func (r HelloReply) Frame() Frame {
	p := []byte{r.Version, r.Cols, r.Rows, byte(len(r.Serial))}
	return Frame{Version: r.Version, Type: THelloReply, Payload: append(p, r.Serial...)}
}

// ParseHelloReply checks a HELLO-REPLY payload.
func ParseHelloReply(p []byte) (HelloReply, error) {
	if len(p) < 4 {
		return HelloReply{}, fmt.Errorf("hello reply of %d bytes: %w (at least 4)", len(p), ErrBadPayload)
	}
	r := HelloReply{Version: p[0], Cols: p[1], Rows: p[2]}
	n := int(p[3])
	if n < 1 || n > MaxSerial || 4+n > len(p) {
		return HelloReply{}, fmt.Errorf("hello reply serial length %d in %d bytes: %w (1 to %d)", n, len(p), ErrBadPayload, MaxSerial)
	}
	r.Serial = string(p[4 : 4+n])
	if !printable(r.Serial) {
		return HelloReply{}, fmt.Errorf("hello reply serial %q: %w (printable ASCII only)", r.Serial, ErrBadPayload)
	}
	if r.Cols < Cols || r.Rows < Rows {
		return HelloReply{}, fmt.Errorf("hello reply: display %dx%d: %w (need %dx%d)", r.Cols, r.Rows, ErrBadPayload, Cols, Rows)
	}
	return r, nil
}

// Text writes s at row, col.
func Text(v uint8, row, col int, s string) Frame {
	return Frame{Version: v, Type: TText, Payload: append([]byte{byte(row), byte(col)}, Printable(s)...)}
}

// ParseText checks a TEXT payload.
func ParseText(p []byte) (row, col int, s string, err error) {
	if len(p) < 3 {
		return 0, 0, "", fmt.Errorf("text of %d bytes: %w (at least row, column and one character)", len(p), ErrBadPayload)
	}
	row, col, s = int(p[0]), int(p[1]), string(p[2:])
	switch {
	case row >= Rows:
		return 0, 0, "", fmt.Errorf("text row %d: %w (0 to %d)", row, ErrBadPayload, Rows-1)
	case col+len(s) > Cols:
		return 0, 0, "", fmt.Errorf("text at column %d, %d characters: %w (line is %d)", col, len(s), ErrBadPayload, Cols)
	case !printable(s):
		return 0, 0, "", fmt.Errorf("text %q: %w (printable ASCII only)", s, ErrBadPayload)
	}
	return row, col, s, nil
}

// LEDFrame sets the LED.
func LEDFrame(v uint8, l LED) Frame {
	b := byte(0)
	if l.Blink {
		b = 1
	}
	return Frame{Version: v, Type: TLED, Payload: []byte{byte(l.Colour), b}}
}

// ParseLED checks an LED payload.
func ParseLED(p []byte) (LED, error) {
	if len(p) < 2 || p[0] > byte(Red) || p[1] > 1 {
		return LED{}, fmt.Errorf("led payload % x: %w (colour 0-3, blink 0-1)", p, ErrBadPayload)
	}
	return LED{Colour: Colour(p[0]), Blink: p[1] == 1}, nil
}

// KeyFrame is a key press.
func KeyFrame(v uint8, k Key) Frame { return Frame{Version: v, Type: TKey, Payload: []byte{byte(k)}} }

// ParseKeyFrame checks a KEY payload.
func ParseKeyFrame(p []byte) (Key, error) {
	if len(p) < 1 || p[0] < byte(KeyUp) || p[0] > byte(KeyBack) {
		return 0, fmt.Errorf("key payload % x: %w", p, ErrUnknownKey)
	}
	return Key(p[0]), nil
}

// Ping and Pong carry a sequence number.
func Ping(v uint8, seq uint32) Frame {
	return Frame{Version: v, Type: TPing, Payload: binary.LittleEndian.AppendUint32(nil, seq)}
}

// Pong answers a ping.
func Pong(v uint8, seq uint32) Frame {
	return Frame{Version: v, Type: TPong, Payload: binary.LittleEndian.AppendUint32(nil, seq)}
}

// ParseSeq reads a PING or PONG payload.
func ParseSeq(p []byte) (uint32, error) {
	if len(p) < 4 {
		return 0, fmt.Errorf("ping/pong of %d bytes: %w (4)", len(p), ErrBadPayload)
	}
	return binary.LittleEndian.Uint32(p), nil
}

// ErrorFrame reports a refused frame.
func ErrorFrame(v uint8, code uint8, msg string) Frame {
	if len(msg) > MaxErrorTxt {
		msg = msg[:MaxErrorTxt]
	}
	return Frame{Version: v, Type: TError, Payload: append([]byte{code}, Printable(msg)...)}
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// Printable replaces what the LCD cannot show with '?'.
func Printable(s string) []byte {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return b
}
