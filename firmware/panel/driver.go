package panel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"go.uber.org/zap"

	"vaultnode/firmware/setup"
	"vaultnode/internal/clock"
)

// Conn is one open panel: its bulk OUT and IN endpoints.
type Conn interface {
	Write(ctx context.Context, p []byte) (int, error)
	// Read reads at most one max-size packet (len(p) is MaxPacket()).
	Read(ctx context.Context, p []byte) (int, error)
	MaxPacket() int
	Close() error
}

// Opener finds the panel and opens it; it returns ErrNoPanel while none
// is plugged in.
type Opener interface {
	Open(ctx context.Context) (Conn, error)
}

// ErrNoPanel means no panel is plugged in.
var ErrNoPanel = errors.New("no front panel found")

// Backend is PID 1, reached through the control socket.
type Backend interface {
	Status(ctx context.Context) (Status, error)
	PowerOff(ctx context.Context) error
	Candidates(ctx context.Context) ([]Candidate, error)
	Replace(ctx context.Context, disk string, erase bool) (string, error)
	// Setup opens a first-boot setup session (setup.WireMsg lines).
	Setup(ctx context.Context) (io.ReadWriteCloser, error)
}

// Timing of the driver.
const (
	ScanPeriod   = time.Second      // look for an absent panel: first after a loss or a hot-plug hint,
	ScanMax      = 30 * time.Second // doubling up to this while none is found
	StatusPeriod = time.Second      // ask PID 1 for its status
	PingPeriod   = 2 * time.Second  // liveness of an open panel
	MaxPingsLost = 3
	HelloTimeout = 3 * time.Second
)

// Driver runs the panel: it keeps the panel open (finding it again after
// an unplug), shows the Menu on it and carries out the menu's requests.
type Driver struct {
	Log     *zap.Logger
	Clock   clock.Clock
	Open    Opener
	Backend Backend
	// Hints, when set, says a USB device may have been plugged in (the
	// kernel's uevents, HotplugHints): the next scan comes at once.
	Hints <-chan struct{}

	menu *Menu
	wg   sync.WaitGroup
	ev   chan event

	conn      Conn
	gen       int
	connStop  context.CancelFunc
	ver       uint8 // 0 until HELLO-REPLY
	helloAt   time.Time
	serial    string
	shown     [Rows]string
	shownLED  LED
	ledSent   bool
	pingsLost int
	pingSeq   uint32
	scan      Backoff

	session io.ReadWriteCloser
}

type event struct {
	kind    string // frame, connerr, status, setupmsg, setupend, cands, result
	gen     int
	frame   Frame
	err     error
	status  Status
	msg     setup.WireMsg
	cands   []Candidate
	text    string
	session io.ReadWriteCloser
}

// Run drives the panel until ctx ends.
func (d *Driver) Run(ctx context.Context) error {
	d.menu = NewMenu(d.Clock.Now())
	d.ev = make(chan event, 64)
	ctx, cancel := context.WithCancel(ctx)
	defer d.wg.Wait()
	defer cancel()

	d.wg.Add(1)
	go func() { // owned by Run: polls PID 1
		defer d.wg.Done()
		for {
			s, err := d.Backend.Status(ctx)
			if !d.send(ctx, event{kind: "status", status: s, err: err}) {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-d.Clock.After(StatusPeriod):
			}
		}
	}()

	tick := d.Clock.NewTimer(0)
	defer tick.Stop()
	d.scan = Backoff{Min: ScanPeriod, Max: ScanMax}
	lastPing, hints := d.Clock.Now(), d.Hints
	for {
		select {
		case <-ctx.Done():
			d.goodbye()
			if d.session != nil {
				d.session.Close()
			}
			return nil
		case <-tick.C():
			now := d.Clock.Now()
			tick.Reset(250 * time.Millisecond)
			d.menu.Tick(now)
			if d.conn == nil && d.scan.Due(now) {
				if d.connect(ctx); d.conn == nil {
					d.scan.Failed(now)
				}
			}
			if d.conn != nil && d.ver == 0 && now.Sub(d.helloAt) > HelloTimeout {
				d.drop(errors.New("no HELLO-REPLY within " + HelloTimeout.String()))
			}
			if d.conn != nil && d.ver != 0 && now.Sub(lastPing) >= PingPeriod {
				lastPing = now
				if d.pingsLost >= MaxPingsLost {
					d.drop(fmt.Errorf("%d pings unanswered", d.pingsLost))
				} else {
					d.pingsLost++
					d.pingSeq++
					d.write(Ping(d.ver, d.pingSeq))
				}
			}
		case _, ok := <-hints: // nil when unset: never ready
			if !ok {
				hints = nil // the listener stopped: the backed-off pace only
			} else if d.conn == nil {
				d.scan.Reset()
			}
		case e := <-d.ev:
			d.handle(ctx, e)
		}
		d.render()
	}
}

// send delivers an event unless ctx ended.
func (d *Driver) send(ctx context.Context, e event) bool {
	select {
	case d.ev <- e:
		return true
	case <-ctx.Done():
		return false
	}
}

func (d *Driver) handle(ctx context.Context, e event) {
	switch e.kind {
	case "frame":
		if e.gen == d.gen {
			d.frame(ctx, e.frame)
		}
	case "connerr":
		if e.gen == d.gen && d.conn != nil {
			d.drop(e.err)
		}
	case "status":
		if e.err != nil {
			d.Log.Debug("ask status", zap.Error(e.err))
			return
		}
		d.menu.SetStatus(e.status)
		if e.status.Setup && d.session == nil {
			d.session = startingSession
			d.startSetup(ctx)
		}
	case "setupstart":
		d.session = e.session
		if e.session == nil {
			d.Log.Info("setup session refused", zap.Error(e.err))
		}
	case "setupmsg":
		d.menu.SetupMsg(e.msg)
	case "setupend":
		d.menu.SetupEnded()
		if d.session != nil && d.session != startingSession {
			d.session.Close()
		}
		d.session = nil
	case "cands":
		d.menu.SetCandidates(e.cands, e.err)
	case "result":
		if e.err != nil {
			d.menu.Message(e.err.Error())
		} else if e.text != "" {
			d.menu.Message(e.text)
		}
	}
}

// startingSession marks a session being opened.
var startingSession io.ReadWriteCloser = nopSession{}

type nopSession struct{}

func (nopSession) Read([]byte) (int, error)  { return 0, io.EOF }
func (nopSession) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }
func (nopSession) Close() error              { return nil }

func (d *Driver) startSetup(ctx context.Context) {
	d.wg.Add(1)
	go func() { // owned by Run: ends with the session or ctx
		defer d.wg.Done()
		s, err := d.Backend.Setup(ctx)
		if !d.send(ctx, event{kind: "setupstart", session: s, err: err}) || err != nil {
			if s != nil {
				s.Close()
			}
			d.send(ctx, event{kind: "setupend"})
			return
		}
		stop := context.AfterFunc(ctx, func() { s.Close() })
		defer stop()
		r := setup.NewWireReader(s)
		for {
			m, err := r.Read()
			if err != nil {
				d.send(ctx, event{kind: "setupend", err: err})
				return
			}
			if !d.send(ctx, event{kind: "setupmsg", msg: m}) {
				return
			}
		}
	}()
}

func (d *Driver) frame(ctx context.Context, f Frame) {
	switch f.Type {
	case THelloReply:
		r, err := ParseHelloReply(f.Payload)
		if err == nil && (r.Version == 0 || r.Version > Version) {
			err = fmt.Errorf("hello reply: version %d: %w (this driver speaks 1 to %d)", r.Version, ErrBadPayload, Version)
		}
		if err != nil {
			d.drop(err)
			return
		}
		d.ver, d.serial, d.pingsLost = r.Version, r.Serial, 0
		d.shown, d.ledSent = [Rows]string{}, false
		d.Log.Info("front panel ready", zap.String("serial", r.Serial), zap.Uint8("version", r.Version))
	case TKey:
		k, err := ParseKeyFrame(f.Payload)
		if err != nil {
			d.Log.Warn("front panel sent a bad key", zap.Error(err))
			return
		}
		d.do(ctx, d.menu.Key(k, d.Clock.Now()))
	case TPong:
		d.pingsLost = 0
	case TError:
		d.Log.Warn("front panel refused a frame", zap.ByteString("error", f.Payload))
	default:
		d.Log.Info("front panel sent an unknown frame type; ignored", zap.Uint8("type", f.Type))
	}
}

// do carries out a menu request.
func (d *Driver) do(ctx context.Context, r Request) {
	switch r.Kind {
	case ReqNone:
	case ReqAnswer:
		if d.session == nil || d.session == startingSession {
			return
		}
		ans := r.Arg
		if err := setup.WriteWire(d.session, setup.WireMsg{Answer: &ans}); err != nil {
			d.Log.Warn("answer setup", zap.Error(err))
		}
	case ReqPowerOff:
		d.async(ctx, func() event { return event{kind: "result", err: d.Backend.PowerOff(ctx)} })
	case ReqCandidates:
		d.async(ctx, func() event {
			c, err := d.Backend.Candidates(ctx)
			return event{kind: "cands", cands: c, err: err}
		})
	case ReqReplace:
		d.async(ctx, func() event {
			t, err := d.Backend.Replace(ctx, r.Arg, r.Erase)
			return event{kind: "result", text: t, err: err}
		})
	}
}

func (d *Driver) async(ctx context.Context, f func() event) {
	d.wg.Add(1)
	go func() { // owned by Run
		defer d.wg.Done()
		d.send(ctx, f())
	}()
}

func (d *Driver) connect(ctx context.Context) {
	c, err := d.Open.Open(ctx)
	if err != nil {
		if !errors.Is(err, ErrNoPanel) {
			d.Log.Warn("open front panel", zap.Error(err))
		}
		return
	}
	d.gen++
	d.conn, d.ver, d.helloAt, d.pingsLost = c, 0, d.Clock.Now(), 0
	cctx, cancel := context.WithCancel(ctx)
	d.connStop = cancel
	gen := d.gen
	d.wg.Add(1)
	go func() { // owned by the connection: ends on cancel or error
		defer d.wg.Done()
		var dec Decoder
		buf := make([]byte, c.MaxPacket())
		for {
			n, err := c.Read(cctx, buf)
			if cctx.Err() != nil {
				return
			}
			if err != nil {
				d.send(cctx, event{kind: "connerr", gen: gen, err: fmt.Errorf("read from front panel: %w", err)})
				return
			}
			dec.Feed(buf[:n])
			for {
				f, ok, err := dec.Next()
				if err != nil {
					d.send(cctx, event{kind: "connerr", gen: gen, err: err})
					return
				}
				if !ok {
					break
				}
				if !d.send(cctx, event{kind: "frame", gen: gen, frame: f}) {
					return
				}
			}
		}
	}()
	d.write(Hello())
}

// drop closes the panel; the next scan looks for it again.
func (d *Driver) drop(err error) {
	if d.conn == nil {
		return
	}
	d.Log.Warn("front panel lost; looking for it again", zap.Error(err))
	d.connStop()
	d.conn.Close()
	d.conn, d.ver = nil, 0
	d.gen++
	d.scan.Reset()
}

func (d *Driver) write(f Frame) {
	if d.conn == nil {
		return
	}
	b, err := f.Encode()
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err = d.conn.Write(ctx, b)
		cancel()
	}
	if err != nil {
		d.drop(fmt.Errorf("write to front panel: %w", err))
	}
}

// render sends the lines and LED that changed.
func (d *Driver) render() {
	if d.conn == nil || d.ver == 0 {
		return
	}
	scr := d.menu.Screen()
	for i, l := range scr {
		if l != d.shown[i] && d.conn != nil {
			d.write(Text(d.ver, i, 0, l))
			d.shown[i] = l
		}
	}
	if led := d.menu.LED(); (!d.ledSent || led != d.shownLED) && d.conn != nil {
		d.write(LEDFrame(d.ver, led))
		d.shownLED, d.ledSent = led, true
	}
}

// goodbye leaves a last word on the panel when the driver stops.
func (d *Driver) goodbye() {
	if d.conn == nil {
		return
	}
	if d.ver != 0 {
		for i, l := range [Rows]string{"vaultnode", "panel driver", "stopped", ""} {
			d.write(Text(d.ver, i, 0, pad(l)))
		}
		d.write(LEDFrame(d.ver, LED{Colour: Red}))
	}
	if d.conn != nil {
		d.connStop()
		d.conn.Close()
	}
}
