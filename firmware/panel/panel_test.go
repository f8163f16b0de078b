package panel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"vaultnode/firmware/config"
	"vaultnode/firmware/setup"
	"vaultnode/internal/clock"
)

func TestFrames(t *testing.T) {
	var stream []byte
	frames := []Frame{Hello(), Text(1, 2, 3, "hello"), LEDFrame(1, LED{Colour: Amber, Blink: true}), Ping(1, 7),
		HelloReply{Version: 1, Cols: 20, Rows: 4, Serial: "VN-0001"}.Frame(), KeyFrame(1, KeyEnter)}
	for _, f := range frames {
		b, err := f.Encode()
		if err != nil {
			t.Fatal(err)
		}
		stream = append(stream, b...)
	}
	var d Decoder
	var got []Frame
	for _, c := range stream { // one byte at a time: transfer boundaries do not matter
		d.Feed([]byte{c})
		for {
			f, ok, err := d.Next()
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			got = append(got, f)
		}
	}
	if len(got) != len(frames) {
		t.Fatalf("decoded %d frames, want %d", len(got), len(frames))
	}
	for i := range frames {
		if got[i].Type != frames[i].Type || !bytes.Equal(got[i].Payload, frames[i].Payload) {
			t.Errorf("frame %d: %+v, want %+v", i, got[i], frames[i])
		}
	}
	if r, err := ParseHelloReply(got[4].Payload); err != nil || r.Serial != "VN-0001" {
		t.Errorf("hello reply %+v, %v", r, err)
	}
	if row, col, s, err := ParseText(got[1].Payload); err != nil || row != 2 || col != 3 || s != "hello" {
		t.Errorf("text %d %d %q %v", row, col, s, err)
	}
}

func TestHostileFrames(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"magic", []byte("XX\x01\x02\x00\x00"), ErrBadMagic},
		{"length", []byte("VP\x01\x02\xfb\x00"), ErrTooLong},
		{"length max", []byte("VP\x01\x02\xff\xff"), ErrTooLong},
	} {
		var d Decoder
		d.Feed(tc.in)
		if _, _, err := d.Next(); !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "") {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := (Frame{Type: TText, Payload: make([]byte, 251)}).Encode(); !errors.Is(err, ErrTooLong) {
		t.Errorf("encode 251 bytes: %v", err)
	}
	bad := [][]byte{{4, 0, 'x'}, {0, 19, 'a', 'b'}, {0, 0, 0x07}, {0}}
	for _, p := range bad {
		if _, _, _, err := ParseText(p); !errors.Is(err, ErrBadPayload) {
			t.Errorf("text % x accepted: %v", p, err)
		}
	}
	for _, p := range [][]byte{{1, 20, 4, 0}, {1, 20, 4, 33}, {1, 20, 4, 5, 'a'}, {1, 16, 2, 1, 'a'}, {1, 20, 4, 1, 0x01}} {
		if _, err := ParseHelloReply(p); !errors.Is(err, ErrBadPayload) {
			t.Errorf("hello reply % x accepted: %v", p, err)
		}
	}
	if _, err := ParseKeyFrame([]byte{9}); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("key 9: %v", err)
	}
	if _, err := ParseLED([]byte{4, 0}); !errors.Is(err, ErrBadPayload) {
		t.Errorf("led colour 4: %v", err)
	}
}

// lcd is the text of a screen.
func lcd(s [Rows]string) string { return strings.Join(s[:], "|") }

// TestSetupFromKeys runs the real setup dialog over the wire UI and answers
// it with key presses on the menu only, reading the screen back.
func TestSetupFromKeys(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, cli := net.Pipe()
	disks := []setup.Disk{{Name: "vdb", ID: "data1", Size: 1 << 30, Blank: true}, {Name: "vdc", ID: "data2", Size: 1 << 30, Blank: true}}
	type result struct {
		cfg config.Config
		err error
	}
	done := make(chan result, 1)
	go func() {
		ui := setup.NewWireUI(srv, srv)
		cfg, err := (&setup.Dialog{UI: ui, Disks: disks}).Run(ctx)
		ui.Finish(err)
		srv.Close()
		done <- result{cfg, err}
	}()
	m := NewMenu(time.Unix(0, 0))
	m.SetStatus(Status{Hostname: "vaultnode", Setup: true})
	r := setup.NewWireReader(cli)
	next := func() { // read until the next question (or the end)
		t.Helper()
		for {
			w, err := r.Read()
			if err != nil {
				t.Fatalf("read setup: %v", err)
			}
			m.SetupMsg(w)
			if w.Ask != nil || w.Done || w.Error != "" {
				return
			}
		}
	}
	press := func(keys ...Key) {
		t.Helper()
		for _, k := range keys {
			if req := m.Key(k, time.Unix(0, 0)); req.Kind == ReqAnswer {
				a := req.Arg
				if err := setup.WriteWire(cli, setup.WireMsg{Answer: &a}); err != nil {
					t.Fatal(err)
				}
				next()
			}
		}
	}
	typ := func(s string) {
		t.Helper()
		keys, err := Presses(s)
		if err != nil {
			t.Fatal(err)
		}
		press(keys...)
	}
	expect := func(want string) {
		t.Helper()
		if got := lcd(m.Screen()); !strings.Contains(got, want) {
			t.Fatalf("screen %q lacks %q", got, want)
		}
	}
	next()
	expect("Hostname [vaultnode]")
	if m.LED() != (LED{Colour: Green, Blink: true}) {
		t.Errorf("LED during setup: %v", m.LED())
	}
	typ("bad_host")
	expect("only let")
	typ("panel-1")
	expect("Network [dhcp]")
	expect("< dhcp >")
	press(KeyEnter)
	expect("< standalone >")
	press(KeyEnter)
	expect("Admin password")
	typ("short")
	expect("password is too")
	press(KeyUp, KeyUp, KeyEnter, KeyBack) // 'b' typed then deleted
	expect("> #")
	typ("abcdefgh")
	expect("Password again")
	press(KeyUp, KeyEnter, KeyUp)
	expect("> *a") // a taken character shows as '*'
	press(KeyBack, KeyBack)
	typ("abcdefgh")
	expect("Time zone [UTC]")
	press(KeyEnter) // the default
	expect("NTP server")
	press(KeyEnter)
	expect("Data disks")
	expect("< vdb vdc >") // the default: every blank disk (a mirror of two)
	press(KeyUp)
	expect("< vdc >")
	press(KeyDown)
	expect("< vdb vdc >")
	press(KeyEnter)
	expect("Apply and format?")
	press(KeyEnter)
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	c := res.cfg
	if c.Hostname != "panel-1" || !c.Network.DHCP || c.TimeZone != "UTC" || c.NTP != "pool.ntp.org" ||
		c.Data.Level != "raid1" || strings.Join(c.Data.Disks, " ") != "data1 data2" || !config.CheckPassword(c.Password, "abcdefgh") {
		t.Errorf("config from the panel: %+v", c)
	}
	expect("Setup complete.")
}

func TestMenuPowerOffNeedsConfirmation(t *testing.T) {
	now := time.Unix(0, 0)
	m := NewMenu(now)
	m.SetStatus(Status{Hostname: "vault-a", Version: "1.0", Addresses: []string{"eth0 10.0.2.15/24"}, Vault: "healthy",
		Arrays: []Array{{Name: "md0", Level: "raid1", State: "clean", Active: 2, Total: 2}}})
	if s := lcd(m.Screen()); !strings.HasPrefix(s, "vault-a") || m.LED() != (LED{Colour: Green}) {
		t.Fatalf("first page %q, LED %v", s, m.LED())
	}
	var seen []string
	for i := 0; i < 5; i++ {
		now = now.Add(CyclePeriod)
		m.Tick(now)
		seen = append(seen, lcd(m.Screen()))
	}
	all := strings.Join(seen, "\n")
	for _, want := range []string{"eth0 10.0.2.15/24", "healthy", "md0 raid1 2/2       |clean", "no alerts", "vault-a"} {
		if !strings.Contains(all, want) {
			t.Errorf("the cycle never showed %q:\n%s", want, all)
		}
	}
	steps := []struct {
		k    Key
		want ReqKind
		scr  string
	}{
		{KeyEnter, ReqNone, ">Replace disk"},
		{KeyDown, ReqNone, ">Power off"},
		{KeyEnter, ReqNone, "Power off?"},
		{KeyBack, ReqNone, ">Power off"},
		{KeyEnter, ReqNone, "Power off?"},
		{KeyEnter, ReqPowerOff, "Powering off"},
	}
	for i, s := range steps {
		if r := m.Key(s.k, now); r.Kind != s.want {
			t.Fatalf("step %d: request %v, want %v", i, r.Kind, s.want)
		}
		if !strings.Contains(lcd(m.Screen()), s.scr) {
			t.Fatalf("step %d: screen %q lacks %q", i, lcd(m.Screen()), s.scr)
		}
	}
	if m.LED() != (LED{Colour: Red}) {
		t.Errorf("LED while powering off: %v", m.LED())
	}
}

func TestMenuReplaceDisk(t *testing.T) {
	now := time.Unix(0, 0)
	m := NewMenu(now)
	m.SetStatus(Status{Hostname: "h", Arrays: []Array{{Name: "md0", Level: "raid6", State: "degraded", Active: 3, Total: 4}}})
	if m.LED() != (LED{Colour: Amber, Blink: true}) {
		t.Errorf("LED degraded: %v", m.LED())
	}
	m.Key(KeyEnter, now)
	if r := m.Key(KeyEnter, now); r.Kind != ReqCandidates {
		t.Fatalf("replace disk asked %v", r.Kind)
	}
	m.SetCandidates([]Candidate{{Array: "md0", Disk: "vdf", Size: 2 << 30}, {Array: "md0", Disk: "vdg", Size: 2 << 30}}, nil)
	m.Key(KeyDown, now)
	if s := lcd(m.Screen()); !strings.Contains(s, ">vdg > md0") {
		t.Fatalf("candidates %q", s)
	}
	m.Key(KeyEnter, now)
	if s := lcd(m.Screen()); !strings.Contains(s, "onto vdg?") {
		t.Fatalf("confirmation %q", s)
	}
	if r := m.Key(KeyEnter, now); r.Kind != ReqReplace || r.Arg != "vdg" {
		t.Fatalf("confirmed replace: %+v", r)
	}
}

// fakePanel is a panel device behind the Conn interface.
type fakePanel struct {
	mu      sync.Mutex
	lines   [Rows]string
	led     LED
	toHost  chan []byte
	gone    chan struct{}
	changed chan struct{}
	dec     Decoder
	hellos  int
}

func newFakePanel() *fakePanel {
	return &fakePanel{toHost: make(chan []byte, 64), gone: make(chan struct{}), changed: make(chan struct{}, 1)}
}

func (p *fakePanel) MaxPacket() int { return 64 }
func (p *fakePanel) Close() error   { return nil }
func (p *fakePanel) Read(ctx context.Context, b []byte) (int, error) {
	select {
	case d := <-p.toHost:
		return copy(b, d), nil
	case <-p.gone:
		return 0, errors.New("LIBUSB_ERROR_NO_DEVICE")
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}
func (p *fakePanel) Write(ctx context.Context, b []byte) (int, error) {
	select {
	case <-p.gone:
		return 0, errors.New("LIBUSB_ERROR_NO_DEVICE")
	default:
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dec.Feed(b)
	for {
		f, ok, err := p.dec.Next()
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		switch f.Type {
		case THello:
			p.hellos++
			b, _ := HelloReply{Version: 1, Cols: 20, Rows: 4, Serial: "FAKE1"}.Frame().Encode()
			p.toHost <- b
		case TText:
			row, col, s, err := ParseText(f.Payload)
			if err != nil {
				return 0, err
			}
			p.lines[row] = p.lines[row][:col] + s
		case TLED:
			p.led, _ = ParseLED(f.Payload)
		case TPing:
			seq, _ := ParseSeq(f.Payload)
			b, _ := Pong(1, seq).Encode()
			p.toHost <- b
		}
	}
	select {
	case p.changed <- struct{}{}:
	default:
	}
	return len(b), nil
}
func (p *fakePanel) screen() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines[:], "|")
}
func (p *fakePanel) press(k Key) { b, _ := KeyFrame(1, k).Encode(); p.toHost <- b }

type fakeOpener struct {
	mu sync.Mutex
	p  *fakePanel
}

func (o *fakeOpener) Open(context.Context) (Conn, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.p == nil {
		return nil, ErrNoPanel
	}
	return o.p, nil
}
func (o *fakeOpener) plug(p *fakePanel) { o.mu.Lock(); o.p = p; o.mu.Unlock() }

type fakeBackend struct {
	mu       sync.Mutex
	poweroff int
}

func (b *fakeBackend) Status(context.Context) (Status, error) {
	return Status{Hostname: "vault-z", Vault: "healthy"}, nil
}
func (b *fakeBackend) PowerOff(context.Context) error {
	b.mu.Lock()
	b.poweroff++
	b.mu.Unlock()
	return nil
}
func (b *fakeBackend) Candidates(context.Context) ([]Candidate, error)       { return nil, nil }
func (b *fakeBackend) Replace(context.Context, string, bool) (string, error) { return "", nil }
func (b *fakeBackend) Setup(context.Context) (io.ReadWriteCloser, error) {
	return nil, errors.New("no setup")
}

// TestDriverFindsPanelAgain unplugs the panel and plugs in another: the
// driver greets and redraws it, and its keys work.
func TestDriverFindsPanelAgain(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	clk := clock.NewFake(time.Unix(1000, 0))
	op := &fakeOpener{}
	be := &fakeBackend{}
	d := &Driver{Log: zap.NewNop(), Clock: clk, Open: op, Backend: be}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor := func(p *fakePanel, cond func() bool, what string) {
		t.Helper()
		for i := 0; i < 4000; i++ {
			if cond() {
				return
			}
			clk.Advance(250 * time.Millisecond)
			select {
			case <-p.changed:
			case <-time.After(5 * time.Millisecond): // let the driver's goroutines run; the fake clock decides time
			}
		}
		t.Fatalf("never %s; screen %q", what, p.screen())
	}
	p1 := newFakePanel()
	op.plug(p1)
	waitFor(p1, func() bool { return strings.HasPrefix(p1.screen(), "vault-z") }, "drew the status on the first panel")

	op.plug(nil)
	close(p1.gone) // unplugged
	p2 := newFakePanel()
	clk.Advance(3 * ScanPeriod)
	op.plug(p2)
	waitFor(p2, func() bool { return strings.HasPrefix(p2.screen(), "vault-z") }, "drew the status on the panel plugged in again")
	if p2.hellos != 1 {
		t.Errorf("the new panel was greeted %d times", p2.hellos)
	}
	p2.press(KeyEnter)
	p2.press(KeyDown)
	p2.press(KeyEnter)
	waitFor(p2, func() bool { return strings.Contains(p2.screen(), "Power off?") }, "asked to confirm the power off")
	p2.press(KeyEnter)
	waitFor(p2, func() bool { be.mu.Lock(); defer be.mu.Unlock(); return be.poweroff == 1 }, "asked PID 1 to power off")
}

// FuzzDecoder: any bytes give frames within the limits or an error, never
// a panic or an oversized frame.
func FuzzDecoder(f *testing.F) {
	b, _ := Text(1, 0, 0, "hello").Encode()
	f.Add(b)
	f.Add([]byte("VP\x01\x02\xff\xff"))
	f.Add([]byte("VP\x01\x81\x04\x00\x01\x14\x04\x20"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var d Decoder
		d.Feed(in)
		for {
			fr, ok, err := d.Next()
			if err != nil || !ok {
				return
			}
			if len(fr.Payload) > MaxPayload {
				t.Fatalf("payload of %d bytes", len(fr.Payload))
			}
			switch fr.Type {
			case TText:
				_, _, _, _ = ParseText(fr.Payload)
			case THelloReply:
				_, _ = ParseHelloReply(fr.Payload)
			case TLED:
				_, _ = ParseLED(fr.Payload)
			case TKey:
				_, _ = ParseKeyFrame(fr.Payload)
			}
		}
	})
}

// TestMenuReplaceErase: a candidate holding data (a former member) needs a
// second confirmation, and only then is the replace sent with erase.
func TestMenuReplaceErase(t *testing.T) {
	now := time.Unix(0, 0)
	m := NewMenu(now)
	m.SetStatus(Status{Hostname: "h", Arrays: []Array{{Name: "md0", Level: "raid1", State: "degraded", Active: 1, Total: 2}}})
	m.Key(KeyEnter, now)
	m.Key(KeyEnter, now)
	m.SetCandidates([]Candidate{{Array: "md0", Disk: "vde", Size: 1 << 30, HoldsData: true}}, nil)
	m.Key(KeyEnter, now)
	if s := lcd(m.Screen()); !strings.Contains(s, "HOLDS DATA") {
		t.Fatalf("confirmation %q", s)
	}
	if r := m.Key(KeyEnter, now); r.Kind != ReqNone {
		t.Fatalf("one confirmation sent %+v", r)
	}
	if s := lcd(m.Screen()); !strings.Contains(s, "ERASE all data") {
		t.Fatalf("erase confirmation %q", s)
	}
	if r := m.Key(KeyBack, now); r.Kind != ReqNone {
		t.Fatalf("back sent %+v", r)
	}
	m.Key(KeyEnter, now)
	m.Key(KeyEnter, now)
	if r := m.Key(KeyEnter, now); r.Kind != ReqReplace || r.Arg != "vde" || !r.Erase {
		t.Fatalf("confirmed erase: %+v", r)
	}
}

func TestBackoff(t *testing.T) {
	b := Backoff{Min: ScanPeriod, Max: ScanMax}
	now := time.Unix(0, 0)
	if !b.Due(now) {
		t.Fatal("first scan not due at once")
	}
	var got []time.Duration
	for range 8 {
		got = append(got, b.Failed(now))
	}
	want := []time.Duration{1, 2, 4, 8, 16, 30, 30, 30}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("waits %v, want %v s", got, want)
		}
	}
	if b.Due(now.Add(29*time.Second)) || !b.Due(now.Add(30*time.Second)) {
		t.Error("due before its wait, or not after it")
	}
	b.Reset()
	if !b.Due(now) || b.Failed(now) != ScanPeriod {
		t.Error("reset: not due at once, or the next wait is not the minimum")
	}
}

func TestIsUSBAdd(t *testing.T) {
	for _, tt := range []struct {
		msg  string
		want bool
	}{
		{"add@/devices/platform/dummy_hcd.0/usb1/1-1\x00ACTION=add\x00DEVPATH=/devices/platform/dummy_hcd.0/usb1/1-1\x00SUBSYSTEM=usb\x00DEVTYPE=usb_device\x00SEQNUM=1234", true},
		{"remove@/devices/platform/dummy_hcd.0/usb1/1-1\x00ACTION=remove\x00SUBSYSTEM=usb", false},
		{"add@/devices/virtual/block/loop0\x00ACTION=add\x00SUBSYSTEM=block", false},
		{"libudev\x00\xfe\xed\xca\xfe", false},
		{"", false},
		{"add@/x\x00SUBSYSTEM=usb" + strings.Repeat("x", maxUevent), false},
	} {
		if got := isUSBAdd([]byte(tt.msg)); got != tt.want {
			t.Errorf("isUSBAdd(%.40q) = %v", tt.msg, got)
		}
	}
}

// countingOpener finds no panel and counts how often it was asked.
type countingOpener struct {
	mu sync.Mutex
	n  int
}

func (o *countingOpener) Open(context.Context) (Conn, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.n++
	return nil, ErrNoPanel
}

func (o *countingOpener) count() int { o.mu.Lock(); defer o.mu.Unlock(); return o.n }

// TestDriverBacksOffScans: with no panel plugged in the driver does not
// open a libusb context every second: in 100 s it scans at 0, 1, 3, 7, 15,
// 31, 61 and 91 s (8 times, not 100), the next at 121 s; a hot-plug hint
// at 100 s brings a scan long before that.
func TestDriverBacksOffScans(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	clk := clock.NewFake(time.Unix(1000, 0))
	op := &countingOpener{}
	hints := make(chan struct{})
	d := &Driver{Log: zap.NewNop(), Clock: clk, Open: op, Backend: &fakeBackend{}, Hints: hints}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	step := func() {
		clk.Advance(250 * time.Millisecond)
		time.Sleep(2 * time.Millisecond) // let the driver take the tick; the fake clock decides time
	}
	for range 4 * 100 {
		step()
	}
	n := op.count()
	if n < 1 || n > 8 {
		t.Fatalf("%d scans in 100 s without a panel; want at most 8 (1 s doubling to 30 s)", n)
	}
	hints <- struct{}{} // unbuffered: the driver took it
	for i := 0; op.count() == n; i++ {
		if i == 4*15 {
			t.Fatalf("no scan within 15 s of a hot-plug hint (scans %d)", op.count())
		}
		step()
	}
}
