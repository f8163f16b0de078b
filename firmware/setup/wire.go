package setup

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// MaxWireLine bounds one line of a setup session (docs/panel.md).
const MaxWireLine = 4096

// ErrWireLine is a session line over MaxWireLine or not a message.
var ErrWireLine = errors.New("bad setup session line")

// WireMsg is one line of a setup session over the control socket: PID 1
// sends Say, Ask, Done or Error; the client answers each Ask with Answer.
type WireMsg struct {
	Say    string    `json:"say,omitempty"`
	Ask    *Question `json:"ask,omitempty"`
	Answer *string   `json:"answer,omitempty"`
	Done   bool      `json:"done,omitempty"`
	Error  string    `json:"error,omitempty"`
}

// WireReader reads session lines, each at most MaxWireLine bytes.
type WireReader struct{ r *bufio.Reader }

// NewWireReader reads session lines from r.
func NewWireReader(r io.Reader) *WireReader {
	return &WireReader{r: bufio.NewReaderSize(r, MaxWireLine)}
}

// Read returns the next message.
func (w *WireReader) Read() (WireMsg, error) {
	line, err := w.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return WireMsg{}, fmt.Errorf("read setup session: %w: longer than %d bytes", ErrWireLine, MaxWireLine)
	}
	if err != nil {
		return WireMsg{}, fmt.Errorf("read setup session: %w", err)
	}
	var m WireMsg
	if err := json.Unmarshal(line, &m); err != nil {
		return WireMsg{}, fmt.Errorf("read setup session: %w: %v", ErrWireLine, err)
	}
	return m, nil
}

// WriteWire writes one message as a line.
func WriteWire(w io.Writer, m WireMsg) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode setup message: %w", err)
	}
	if len(b)+1 > MaxWireLine {
		return fmt.Errorf("write setup session: %w: message of %d bytes over %d", ErrWireLine, len(b)+1, MaxWireLine)
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("write setup session: %w", err)
	}
	return nil
}

// WireUI is the dialog's UI on the far side of a connection (the front
// panel): questions and messages go out as lines, answers come back.
type WireUI struct {
	mu  sync.Mutex
	w   io.Writer
	r   *WireReader
	err error // first write error; Ask reports it
}

// NewWireUI runs the dialog over rw.
func NewWireUI(r io.Reader, w io.Writer) *WireUI { return &WireUI{w: w, r: NewWireReader(r)} }

// Say sends a message.
func (u *WireUI) Say(msg string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.err == nil {
		u.err = WriteWire(u.w, WireMsg{Say: msg})
	}
}

// Ask sends the question and waits for its answer.
func (u *WireUI) Ask(ctx context.Context, q Question) (string, error) {
	u.mu.Lock()
	if u.err == nil {
		u.err = WriteWire(u.w, WireMsg{Ask: &q})
	}
	err := u.err
	u.mu.Unlock()
	if err != nil {
		return "", err
	}
	for {
		m, err := u.r.Read()
		if err != nil {
			return "", err
		}
		if m.Answer != nil {
			return *m.Answer, nil
		}
	}
}

// Finish tells the far side how setup ended.
func (u *WireUI) Finish(err error) error {
	m := WireMsg{Done: true}
	if err != nil {
		m = WireMsg{Error: err.Error()}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return WriteWire(u.w, m)
}
