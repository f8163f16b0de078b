package panel

import (
	"fmt"
	"strings"
	"time"

	"vaultnode/firmware/setup"
)

// Status is what PID 1 answers to "status json" on the control socket.
type Status struct {
	Hostname  string   `json:"hostname"`
	Version   string   `json:"version"`
	Addresses []string `json:"addresses"`
	Vault     string   `json:"vault"` // healthy, unhealthy, failed, not installed, ...
	Arrays    []Array  `json:"arrays"`
	Alerts    []string `json:"alerts"`
	Setup     bool     `json:"setup"` // the first-boot setup waits for answers
}

// Array is one RAID array as the panel shows it.
type Array struct {
	Name     string `json:"name"`
	Level    string `json:"level"`
	State    string `json:"state"` // clean, degraded, resyncing, recovering, failed ...
	Active   int64  `json:"active"`
	Total    int64  `json:"total"`
	Progress string `json:"progress,omitempty"` // "42%" while rebuilding
}

// Candidate is a disk that can replace a missing array member. One that
// holds data (a former member) is replaced only after a second, erase
// confirmation.
type Candidate struct {
	Array string `json:"array"`
	Disk  string `json:"disk"` // kernel name, e.g. vde
	Size  int64  `json:"size"`
	// HoldsData: PID 1 erases it only when the replace says "erase".
	HoldsData bool `json:"holds_data,omitempty"`
}

// Request is what the menu asks its runner to do after a key.
type Request struct {
	Kind  ReqKind
	Arg   string
	Erase bool // ReqReplace: the operator confirmed erasing what the disk holds
}

// ReqKind names a request.
type ReqKind int

const (
	ReqNone       ReqKind = iota
	ReqAnswer             // send Arg as the answer to the setup question
	ReqPowerOff           // ask PID 1 for a clean power off
	ReqCandidates         // fetch the replacement candidates (then SetCandidates)
	ReqReplace            // replace the missing member with disk Arg
)

// CyclePeriod is how long each status page stays on the LCD.
const CyclePeriod = 5 * time.Second

// Charset is what the text editor offers, in order; EndMark sends.
const (
	EndMark = '#'
	Charset = "#abcdefghijklmnopqrstuvwxyz0123456789-._/:,@ ABCDEFGHIJKLMNOPQRSTUVWXYZ!$%&*+=?"
)

type mode int

const (
	mStatus mode = iota
	mMenu
	mConfirmPower
	mPoweringOff
	mReplaceList
	mConfirmReplace
	mConfirmErase // the candidate holds data: a second confirmation
	mMessage
)

var menuItems = []string{"Replace disk", "Power off", "Back"}

// Menu is the panel's state: what the LCD shows and what keys do. It has
// no I/O; the runner feeds it status, keys, setup messages and time, and
// carries out the Requests it returns.
type Menu struct {
	status   Status
	statusOK bool
	mode     mode
	page     int
	pageAt   time.Time
	cursor   int
	msg      string // mMessage text

	cands    []Candidate
	candsErr string

	// setup session
	ask      *setup.Question
	sayMsg   string // the last message of the setup dialog
	value    []byte // answer typed so far
	cur      int    // index in Charset of the character under the cursor
	choice   int
	inSetup  bool // a session is running
	setupEnd string
}

// NewMenu starts at the status pages.
func NewMenu(now time.Time) *Menu { return &Menu{pageAt: now} }

// SetStatus takes a fresh status.
func (m *Menu) SetStatus(s Status) {
	m.status, m.statusOK = s, true
	if !s.Setup {
		m.setupEnd = ""
	}
}

// Tick advances the status pages.
func (m *Menu) Tick(now time.Time) {
	if m.mode == mStatus && m.ask == nil && now.Sub(m.pageAt) >= CyclePeriod {
		m.page = (m.page + 1) % len(m.pages())
		m.pageAt = now
	}
}

// SetupMsg takes one message of the setup session.
func (m *Menu) SetupMsg(w setup.WireMsg) {
	m.inSetup = true
	switch {
	case w.Ask != nil:
		q := *w.Ask
		m.ask, m.value, m.cur, m.choice = &q, nil, 0, 0
		for i, c := range q.Choices {
			if c == q.Default {
				m.choice = i
			}
		}
	case w.Done:
		m.ask, m.inSetup, m.setupEnd = nil, false, "Setup complete."
	case w.Error != "":
		m.ask, m.inSetup, m.setupEnd = nil, false, "Setup failed: "+w.Error
	default:
		if s := oneLine(w.Say); s != "" {
			m.sayMsg = strings.TrimSpace(m.sayMsg + " " + s)
			if len(m.sayMsg) > 4*Cols {
				m.sayMsg = m.sayMsg[:4*Cols]
			}
		}
	}
}

// SetupEnded is called when the session's connection ends.
func (m *Menu) SetupEnded() { m.ask, m.inSetup = nil, false }

// SetCandidates takes the answer to ReqCandidates.
func (m *Menu) SetCandidates(c []Candidate, err error) {
	m.cands, m.candsErr, m.cursor = c, "", 0
	if err != nil {
		m.candsErr = err.Error()
	}
}

// Message shows text until a key is pressed.
func (m *Menu) Message(text string) { m.mode, m.msg = mMessage, text }

// Key handles a key press.
func (m *Menu) Key(k Key, now time.Time) Request {
	if m.ask != nil {
		return m.setupKey(k)
	}
	switch m.mode {
	case mStatus:
		n := len(m.pages())
		switch k {
		case KeyUp:
			m.page = (m.page + n - 1) % n
		case KeyDown:
			m.page = (m.page + 1) % n
		case KeyEnter:
			m.mode, m.cursor = mMenu, 0
		}
		m.pageAt = now
	case mMenu:
		switch k {
		case KeyUp:
			m.cursor = max(m.cursor-1, 0)
		case KeyDown:
			m.cursor = min(m.cursor+1, len(menuItems)-1)
		case KeyBack:
			m.mode = mStatus
		case KeyEnter:
			switch menuItems[m.cursor] {
			case "Replace disk":
				m.mode, m.cands, m.candsErr = mReplaceList, nil, ""
				return Request{Kind: ReqCandidates}
			case "Power off":
				m.mode = mConfirmPower
			default:
				m.mode = mStatus
			}
		}
	case mConfirmPower:
		switch k {
		case KeyEnter:
			m.mode = mPoweringOff
			return Request{Kind: ReqPowerOff}
		case KeyBack:
			m.mode = mMenu
		}
	case mReplaceList:
		switch k {
		case KeyUp:
			m.cursor = max(m.cursor-1, 0)
		case KeyDown:
			m.cursor = min(m.cursor+1, max(len(m.cands)-1, 0))
		case KeyBack:
			m.mode = mMenu
		case KeyEnter:
			if len(m.cands) > 0 {
				m.mode = mConfirmReplace
			}
		}
	case mConfirmReplace:
		switch k {
		case KeyEnter:
			if m.cands[m.cursor].HoldsData {
				m.mode = mConfirmErase
				break
			}
			m.mode = mMessage
			m.msg = "Starting the rebuild on " + m.cands[m.cursor].Disk
			return Request{Kind: ReqReplace, Arg: m.cands[m.cursor].Disk}
		case KeyBack:
			m.mode = mReplaceList
		}
	case mConfirmErase:
		switch k {
		case KeyEnter:
			m.mode = mMessage
			m.msg = "Erasing " + m.cands[m.cursor].Disk + ", starting the rebuild"
			return Request{Kind: ReqReplace, Arg: m.cands[m.cursor].Disk, Erase: true}
		case KeyBack:
			m.mode = mReplaceList
		}
	case mMessage:
		m.mode = mStatus
	case mPoweringOff:
	}
	return Request{}
}

func (m *Menu) setupKey(k Key) Request {
	q := m.ask
	if len(q.Choices) > 0 {
		n := len(q.Choices)
		switch k {
		case KeyUp:
			m.choice = (m.choice + n - 1) % n
		case KeyDown:
			m.choice = (m.choice + 1) % n
		case KeyEnter:
			ans := q.Choices[m.choice]
			m.ask, m.sayMsg = nil, ""
			return Request{Kind: ReqAnswer, Arg: ans}
		}
		return Request{}
	}
	n := len(Charset)
	switch k {
	case KeyUp:
		m.cur = (m.cur + 1) % n
	case KeyDown:
		m.cur = (m.cur + n - 1) % n
	case KeyBack:
		if len(m.value) > 0 {
			m.value = m.value[:len(m.value)-1]
		}
		m.cur = 0
	case KeyEnter:
		if Charset[m.cur] == EndMark {
			ans := string(m.value)
			m.ask, m.value, m.sayMsg = nil, nil, ""
			return Request{Kind: ReqAnswer, Arg: ans}
		}
		if len(m.value) < setup.MaxWireLine/4 {
			m.value = append(m.value, Charset[m.cur])
		}
		m.cur = 0
	}
	return Request{}
}

// Presses returns the key presses that type s into the editor and send
// it: for each character the shortest way round Charset, then enter; and a
// final enter on the end mark. It fails on a character the editor lacks.
func Presses(s string) ([]Key, error) {
	var out []Key
	for _, c := range []byte(s) {
		i := strings.IndexByte(Charset, c)
		if i <= 0 {
			return nil, fmt.Errorf("character %q cannot be typed on the panel", c)
		}
		k, n := KeyUp, i
		if len(Charset)-i < i {
			k, n = KeyDown, len(Charset)-i
		}
		for ; n > 0; n-- {
			out = append(out, k)
		}
		out = append(out, KeyEnter)
	}
	return append(out, KeyEnter), nil
}

// LED is the LED for the current state.
func (m *Menu) LED() LED {
	s := m.status
	switch {
	case m.mode == mPoweringOff:
		return LED{Colour: Red}
	case m.ask != nil || s.Setup:
		return LED{Colour: Green, Blink: true}
	case !m.statusOK:
		return LED{Colour: Amber, Blink: true}
	case s.Vault == "failed":
		return LED{Colour: Red, Blink: true}
	}
	for _, a := range s.Arrays {
		if a.State == "failed" || a.State == "inactive" {
			return LED{Colour: Red, Blink: true}
		}
	}
	for _, a := range s.Arrays {
		if a.Active < a.Total || a.Progress != "" {
			return LED{Colour: Amber, Blink: true}
		}
	}
	if len(s.Alerts) > 0 {
		return LED{Colour: Amber}
	}
	return LED{Colour: Green}
}

// Screen returns the four lines, each exactly Cols characters.
func (m *Menu) Screen() [Rows]string {
	var l [Rows]string
	switch {
	case m.ask != nil:
		l = m.setupScreen()
	case m.inSetup && m.sayMsg != "":
		l = wrap("Setup", m.sayMsg)
	case m.setupEnd != "":
		l = wrap(m.setupEnd, "")
	case m.mode == mStatus:
		ps := m.pages()
		l = ps[m.page%len(ps)]
	case m.mode == mMenu:
		l[0] = "Menu"
		for i, it := range menuItems {
			l[i+1] = mark(i == m.cursor) + it
		}
	case m.mode == mConfirmPower:
		l = [Rows]string{"Power off?", "enter: yes", "back: no"}
	case m.mode == mPoweringOff:
		l = [Rows]string{"Powering off...", "", "Wait for the LED", "to go out."}
	case m.mode == mReplaceList:
		l[0] = "Replace disk"
		switch {
		case m.candsErr != "":
			l = wrap("Replace disk", m.candsErr)
		case m.cands == nil:
			l[1] = "looking..."
		case len(m.cands) == 0:
			l = wrap("Replace disk", "No array misses a disk, or no blank disk is there.")
		default:
			top := max(0, m.cursor-2)
			for i := 0; i < 3 && top+i < len(m.cands); i++ {
				c := m.cands[top+i]
				l[i+1] = fmt.Sprintf("%s%s > %s %dG", mark(top+i == m.cursor), c.Disk, c.Array, c.Size>>30)
			}
		}
	case m.mode == mConfirmReplace && m.cands[m.cursor].HoldsData:
		c := m.cands[m.cursor]
		l = [Rows]string{"Rebuild " + c.Array, "onto " + c.Disk + "?", c.Disk + " HOLDS DATA", "enter: yes  back: no"}
	case m.mode == mConfirmReplace:
		c := m.cands[m.cursor]
		l = [Rows]string{"Rebuild " + c.Array, "onto " + c.Disk + "?", "enter: yes", "back: no"}
	case m.mode == mConfirmErase:
		c := m.cands[m.cursor]
		l = [Rows]string{"ERASE all data", "on " + c.Disk + "?", "enter: erase", "back: no"}
	case m.mode == mMessage:
		l = wrap("", m.msg)
	}
	for i := range l {
		l[i] = pad(l[i])
	}
	return l
}

func (m *Menu) setupScreen() [Rows]string {
	q := m.ask
	var l [Rows]string
	l[0] = q.Short
	if q.Default != "" && len(q.Short)+len(q.Default)+3 <= Cols {
		l[0] += " [" + q.Default + "]"
	}
	if len(q.Choices) > 0 {
		l[1] = "< " + q.Choices[m.choice] + " >"
	} else {
		shown := string(m.value)
		if q.Secret {
			shown = strings.Repeat("*", len(m.value))
		}
		shown += string(Charset[m.cur])
		if len(shown) > Cols-2 {
			shown = shown[len(shown)-(Cols-2):]
		}
		l[1] = "> " + shown
	}
	msg := m.sayMsg
	if msg == "" {
		if len(q.Choices) > 0 {
			msg = "up/down, enter"
		} else {
			msg = "enter on # sends"
		}
	}
	l[2], l[3] = cut(msg, 0), cut(msg, 1)
	return l
}

// pages are the cycling status pages.
func (m *Menu) pages() [][Rows]string {
	s := m.status
	if !m.statusOK {
		return [][Rows]string{{"vaultnode", "waiting for the", "firmware..."}}
	}
	var ps [][Rows]string
	health := "status OK"
	if len(s.Alerts) > 0 {
		health = fmt.Sprintf("%d alert(s)", len(s.Alerts))
	}
	if s.Setup {
		health = "setup waiting"
	}
	ps = append(ps, [Rows]string{s.Hostname, "vaultnode " + s.Version, health, "enter: menu"})
	a := [Rows]string{"Addresses"}
	for i, ad := range s.Addresses {
		if i < Rows-1 {
			a[i+1] = ad
		}
	}
	if len(s.Addresses) == 0 {
		a[1] = "(none)"
	}
	ps = append(ps, a)
	ps = append(ps, [Rows]string{"Vault", s.Vault})
	r := [Rows]string{"RAID"}
	var rl []string
	for _, ar := range s.Arrays {
		rl = append(rl, fmt.Sprintf("%s %s %d/%d", ar.Name, ar.Level, ar.Active, ar.Total),
			strings.TrimSpace(" "+ar.State+" "+ar.Progress))
	}
	for i := 0; i < len(rl) && i < Rows-1; i++ {
		r[i+1] = rl[i]
	}
	if len(s.Arrays) == 0 {
		r[1] = "no arrays"
	}
	ps = append(ps, r)
	if len(s.Alerts) == 0 {
		ps = append(ps, [Rows]string{"Alerts", "no alerts"})
	}
	for i, al := range s.Alerts {
		ps = append(ps, wrap(fmt.Sprintf("Alert %d/%d", i+1, len(s.Alerts)), al))
	}
	return ps
}

func mark(on bool) string {
	if on {
		return ">"
	}
	return " "
}

// wrap puts a title on the first line and text over the other three
// (over all four without a title).
func wrap(title, text string) [Rows]string {
	var l [Rows]string
	first := 0
	if title != "" {
		l[0], first = title, 1
	}
	for i := first; i < Rows; i++ {
		l[i] = cut(text, i-first)
	}
	return l
}

// cut returns the i-th Cols-wide slice of s.
func cut(s string, i int) string {
	if i*Cols >= len(s) {
		return ""
	}
	return s[i*Cols : min(len(s), (i+1)*Cols)]
}

func oneLine(s string) string {
	var parts []string
	for _, ln := range strings.Split(s, "\n") {
		ln = strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(ln), "!"))
		if ln != "" && !strings.HasPrefix(ln, "===") && !strings.HasPrefix(ln, "Press Enter") {
			parts = append(parts, ln)
		}
	}
	return strings.Join(parts, " ")
}

func pad(s string) string {
	b := Printable(s)
	if len(b) > Cols {
		b = b[:Cols]
	}
	return string(b) + strings.Repeat(" ", Cols-len(b))
}
