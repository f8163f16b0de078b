// Package setup is the first-boot dialog on the serial console: it asks for
// the hostname, the network, the admin password, the time zone and NTP
// server and the data disks, validates every answer and asks again with a
// clear message until the answer is usable.
package setup

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // the image has no zoneinfo files

	"vaultnode/firmware/config"
	"vaultnode/firmware/raid"
)

// Disk is a disk offered for data.
type Disk struct {
	Name  string // kernel name, e.g. vdb
	ID    string // stable identifier (virtio serial), saved in the config
	Size  int64  // bytes
	Blank bool
}

// Question is one question of the dialog, as a UI shows it.
type Question struct {
	Key     string   `json:"key,omitempty"`     // stable name: hostname, network, password, disks, apply, ...
	Prompt  string   `json:"prompt"`            // the console's wording
	Short   string   `json:"short,omitempty"`   // at most 20 characters, for the front panel
	Default string   `json:"default,omitempty"` // taken for an empty answer
	Choices []string `json:"choices,omitempty"` // every valid answer, when the set is small and fixed
	Secret  bool     `json:"secret,omitempty"`  // do not show what is typed
}

// UI asks questions and shows messages for a Dialog: the serial console
// (In/Out) when UI is nil, or the front panel (a WireUI over the control
// socket).
type UI interface {
	// Ask returns the raw answer; "" takes the default.
	Ask(ctx context.Context, q Question) (string, error)
	// Say shows a message: a refused answer, the summary, progress.
	Say(msg string)
}

// Dialog asks the questions on in/out, or on UI when set (then Out, if
// nil, becomes UI's messages).
type Dialog struct {
	In  *bufio.Reader
	Out io.Writer
	UI  UI
	// Disks are the candidate data disks.
	Disks []Disk
	// Echo, if set, turns terminal echo off while a password is typed.
	Echo func(on bool)
}

// ErrAborted means the console closed before setup finished.
var ErrAborted = errors.New("setup aborted: console closed")

// Run asks every question and returns the configuration; nothing is saved.
func (d *Dialog) Run(ctx context.Context) (config.Config, error) {
	if d.UI == nil {
		d.UI = consoleUI{in: d.In, out: d.Out}
	} else if d.Out == nil {
		d.Out = sayWriter{d.UI}
	}
	fmt.Fprintf(d.Out, "\n=== vaultnode first boot setup ===\nPress Enter to take the [default].\n\n")
	for {
		c, err := d.ask(ctx)
		if err != nil {
			return config.Config{}, err
		}
		fmt.Fprintf(d.Out, "\nSummary:\n%s", Summary(c))
		ok, err := d.question(ctx, "Apply this configuration and format the data disks? (yes/no)", "yes", ParseYesNo,
			Question{Key: "apply", Short: "Apply and format?", Choices: []string{"yes", "no"}})
		if err != nil {
			return config.Config{}, err
		}
		if ok.(bool) {
			return c, nil
		}
		fmt.Fprintf(d.Out, "Starting over.\n\n")
	}
}

func (d *Dialog) ask(ctx context.Context) (config.Config, error) {
	var c config.Config
	v, err := d.question(ctx, "Hostname", "vaultnode", func(s string) (any, error) { return s, ValidHostname(s) }, Question{Key: "hostname"})
	if err != nil {
		return c, err
	}
	c.Hostname = v.(string)
	v, err = d.question(ctx, "Network: dhcp or static", "dhcp", ParseNetworkMode, Question{Key: "network", Short: "Network", Choices: []string{"dhcp", "static"}})
	if err != nil {
		return c, err
	}
	c.Network.DHCP = v.(bool)
	if !c.Network.DHCP {
		v, err = d.question(ctx, "IPv4 address with prefix length (e.g. 192.168.1.10/24)", "", func(s string) (any, error) { return ParseAddress(s) }, Question{Key: "address", Short: "IPv4 address/prefix"})
		if err != nil {
			return c, err
		}
		pfx := v.(netip.Prefix)
		c.Network.Address = pfx.String()
		v, err = d.question(ctx, "Gateway", "", func(s string) (any, error) { return ParseGateway(s, pfx) }, Question{Key: "gateway"})
		if err != nil {
			return c, err
		}
		c.Network.Gateway = v.(string)
		v, err = d.question(ctx, "DNS servers (comma separated)", "", func(s string) (any, error) { return ParseDNS(s) }, Question{Key: "dns", Short: "DNS servers"})
		if err != nil {
			return c, err
		}
		c.Network.DNS = v.([]string)
	}
	if err := d.askPair(ctx, &c); err != nil {
		return c, err
	}
	for {
		if d.Echo != nil {
			d.Echo(false)
		}
		v, err = d.question(ctx, "Admin password (at least 8 characters)", "", func(s string) (any, error) { return s, ValidPassword(s) }, Question{Key: "password", Short: "Admin password", Secret: true})
		if err != nil {
			return c, err
		}
		pw := v.(string)
		v, err = d.question(ctx, "Admin password again", "", func(s string) (any, error) { return s, nil }, Question{Key: "password2", Short: "Password again", Secret: true})
		if d.Echo != nil {
			d.Echo(true)
		}
		if err != nil {
			return c, err
		}
		if v.(string) != pw {
			fmt.Fprintf(d.Out, "  ! The passwords differ. Type the same password twice.\n")
			continue
		}
		if c.Password, err = config.HashPassword(pw); err != nil {
			return c, err
		}
		break
	}
	v, err = d.question(ctx, "Time zone (e.g. UTC, Europe/Paris)", "UTC", func(s string) (any, error) { return s, ValidTimeZone(s) }, Question{Key: "timezone", Short: "Time zone"})
	if err != nil {
		return c, err
	}
	c.TimeZone = v.(string)
	v, err = d.question(ctx, "NTP server", "pool.ntp.org", func(s string) (any, error) { return s, ValidServer(s) }, Question{Key: "ntp", Short: "NTP server"})
	if err != nil {
		return c, err
	}
	c.NTP = v.(string)

	fmt.Fprintf(d.Out, "\nDisks:\n")
	var blank []string
	for _, dk := range d.Disks {
		state := "blank"
		if !dk.Blank {
			state = "IN USE (has data, not offered)"
		} else {
			blank = append(blank, dk.Name)
		}
		fmt.Fprintf(d.Out, "  %-6s %-12s %8d MiB  %s\n", dk.Name, dk.ID, dk.Size>>20, state)
	}
	v, err = d.question(ctx, "Data disks: 1 disk ext4, 2 RAID1, 3 RAID5, 4 or more RAID6", strings.Join(blank, " "),
		func(s string) (any, error) { return ParseDisks(s, d.Disks) }, Question{Key: "disks", Short: "Data disks", Choices: DiskChoices(d.Disks)})
	if err != nil {
		return c, err
	}
	data := v.(config.Data)
	spares := 0
	if len(data.Disks) >= 3 {
		var choices []string
		for n := 0; n < len(data.Disks); n++ {
			if _, err := raid.Plan("", data.Disks, n); err == nil {
				choices = append(choices, strconv.Itoa(n))
			}
		}
		v, err = d.question(ctx, "Hot spares: how many of them wait unused and rebuild by themselves", "0", func(s string) (any, error) {
			n, err := strconv.Atoi(s)
			if err != nil {
				return nil, fmt.Errorf("%q: answer a number, 0 for none", s)
			}
			_, err = raid.Plan("", data.Disks, n)
			return n, err
		}, Question{Key: "spares", Short: "Hot spares", Choices: choices})
		if err != nil {
			return c, err
		}
		spares = v.(int)
	}
	level := ""
	if levels := raid.Levels(len(data.Disks) - spares); len(levels) > 1 {
		v, err = d.question(ctx, "Layout: "+strings.Join(levels, " or "), levels[0], func(s string) (any, error) {
			s = strings.ToLower(s)
			if !slices.Contains(levels, s) {
				return nil, fmt.Errorf("%q: answer %s", s, strings.Join(levels, " or "))
			}
			return s, nil
		}, Question{Key: "layout", Short: "Layout", Choices: levels})
		if err != nil {
			return c, err
		}
		level = v.(string)
	}
	l, err := raid.Plan(level, data.Disks, spares)
	if err != nil {
		return c, err
	}
	smallest := int64(0)
	for _, id := range append(append([]string(nil), l.Disks...), l.Spares...) {
		for _, dk := range d.Disks {
			if dk.ID == id && (smallest == 0 || dk.Size < smallest) {
				smallest = dk.Size
			}
		}
	}
	fmt.Fprintf(d.Out, "Layout: %s\n", l.Describe(smallest))
	if w := l.Warning(); w != "" {
		fmt.Fprintf(d.Out, "  ! %s\n", w)
	}
	c.Data = config.Data{Level: l.Level, Disks: l.Disks, Spares: l.Spares}
	return c, nil
}

// askPair asks whether the appliance stands alone, forms a pair or joins
// one, and what a member needs: its address and name, and the join token.
func (d *Dialog) askPair(ctx context.Context, c *config.Config) error {
	v, err := d.question(ctx, "Pair: standalone, first (of a new pair) or join (a pair)", "standalone", ParsePairRole,
		Question{Key: "pair", Short: "Pair", Choices: []string{"standalone", config.PairFirst, config.PairJoin}})
	if err != nil || v.(string) == "" {
		return err
	}
	p := &config.Pair{Role: v.(string)}
	prompt, def := "Address the other members and the agents reach this appliance at", ""
	if c.Network.DHCP {
		prompt += " (DHCP must always give it this address)"
	} else if pfx, err := netip.ParsePrefix(c.Network.Address); err == nil {
		def = pfx.Addr().String()
	}
	if v, err = d.question(ctx, prompt, def, func(s string) (any, error) { return s, ValidPairAddress(s) },
		Question{Key: "pair_address", Short: "Pair address"}); err != nil {
		return err
	}
	p.Address = v.(string)
	if v, err = d.question(ctx, "Member name in the pair (unique in it)", strings.SplitN(c.Hostname, ".", 2)[0],
		func(s string) (any, error) { return s, ValidMemberID(s) }, Question{Key: "pair_id", Short: "Member name"}); err != nil {
		return err
	}
	p.ID = v.(string)
	if p.Role == config.PairJoin {
		if v, err = d.question(ctx, "Join token (`vaultctl pair create` on the first appliance prints it)", "",
			func(s string) (any, error) { _, err := ParseJoinToken(s); return s, err }, Question{Key: "pair_token", Short: "Join token"}); err != nil {
			return err
		}
		p.Token = strings.TrimSpace(v.(string))
		leader, _ := ParseJoinToken(p.Token)
		fmt.Fprintf(d.Out, "  The token names the pair's leader at %s: it must be up and reachable when setup ends.\n", leader)
	}
	c.Pair = p
	return nil
}

// question asks until parse accepts the answer; meta, if given, adds what
// a UI other than the console needs (key, short prompt, choices, secret).
func (d *Dialog) question(ctx context.Context, prompt, def string, parse func(string) (any, error), meta ...Question) (any, error) {
	var q Question
	if len(meta) > 0 {
		q = meta[0]
	}
	q.Prompt, q.Default = prompt, def
	if q.Short == "" {
		q.Short = prompt
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		line, err := d.UI.Ask(ctx, q)
		if err != nil {
			return nil, err
		}
		if err := ctx.Err(); err != nil { // setup was finished elsewhere meanwhile
			return nil, err
		}
		ans := strings.TrimSpace(line)
		if ans == "" {
			ans = def
		}
		v, perr := parse(ans)
		if perr == nil {
			return v, nil
		}
		fmt.Fprintf(d.Out, "  ! %v\n", perr)
	}
}

// DiskChoices lists answers the disk question accepts, for a UI that picks
// rather than types: each blank disk alone, then the first two, three, ...
// blank disks together, as far as ParseDisks accepts them.
func DiskChoices(disks []Disk) []string {
	var blank, out []string
	for _, dk := range disks {
		if dk.Blank {
			blank = append(blank, dk.Name)
		}
	}
	out = append(out, blank...)
	for k := 2; k <= len(blank); k++ {
		s := strings.Join(blank[:k], " ")
		if _, err := ParseDisks(s, disks); err == nil {
			out = append(out, s)
		}
	}
	return out
}

// consoleUI is the serial console: the prompt with the default in
// brackets, one line per answer.
type consoleUI struct {
	in  *bufio.Reader
	out io.Writer
}

func (u consoleUI) Say(msg string) { io.WriteString(u.out, msg) }

func (u consoleUI) Ask(_ context.Context, q Question) (string, error) {
	if q.Default != "" {
		fmt.Fprintf(u.out, "%s [%s]: ", q.Prompt, q.Default)
	} else {
		fmt.Fprintf(u.out, "%s: ", q.Prompt)
	}
	line, err := u.in.ReadString('\n')
	if err != nil && line == "" {
		return "", ErrAborted
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// sayWriter turns the dialog's console text into UI messages.
type sayWriter struct{ ui UI }

func (w sayWriter) Write(p []byte) (int, error) { w.ui.Say(string(p)); return len(p), nil }

// Summary describes c for the confirmation screen.
func Summary(c config.Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  hostname   %s\n", c.Hostname)
	if c.Network.DHCP {
		fmt.Fprintf(&b, "  network    dhcp\n")
	} else {
		fmt.Fprintf(&b, "  network    %s via %s, dns %s\n", c.Network.Address, c.Network.Gateway, strings.Join(c.Network.DNS, ","))
	}
	switch {
	case c.Pair == nil:
	case c.Pair.Role == config.PairFirst:
		fmt.Fprintf(&b, "  pair       forms a new pair as member %s at %s\n", c.Pair.ID, c.Pair.Address)
	default:
		leader, _ := ParseJoinToken(c.Pair.Token)
		fmt.Fprintf(&b, "  pair       joins the pair led by %s as member %s at %s\n", leader, c.Pair.ID, c.Pair.Address)
	}
	fmt.Fprintf(&b, "  time zone  %s, ntp %s\n", c.TimeZone, c.NTP)
	fmt.Fprintf(&b, "  data       %s on %s", c.Data.Level, strings.Join(c.Data.Disks, " "))
	if len(c.Data.Spares) > 0 {
		fmt.Fprintf(&b, ", hot spares %s", strings.Join(c.Data.Spares, " "))
	}
	b.WriteString("\n")
	return b.String()
}

// ValidHostname checks an RFC 1123 host name.
func ValidHostname(s string) error {
	if s == "" || len(s) > 253 {
		return errors.New("a hostname is 1 to 253 characters: letters, digits, '-' and '.'")
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%q: each dot-separated part must be 1 to 63 characters", s)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%q: a part cannot start or end with '-'", s)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("%q: only letters, digits, '-' and '.' are allowed", s)
			}
		}
	}
	return nil
}

// ParseNetworkMode accepts dhcp or static; it returns true for dhcp.
func ParseNetworkMode(s string) (any, error) {
	switch strings.ToLower(s) {
	case "dhcp":
		return true, nil
	case "static":
		return false, nil
	}
	return nil, fmt.Errorf("%q: answer dhcp or static", s)
}

// ParseAddress accepts a usable IPv4 host address with its prefix length.
func ParseAddress(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q: write an IPv4 address and prefix length, e.g. 192.168.1.10/24", s)
	}
	a := p.Addr()
	switch {
	case !a.Is4():
		return netip.Prefix{}, fmt.Errorf("%q: only IPv4 is supported here", s)
	case p.Bits() < 8 || p.Bits() > 30:
		return netip.Prefix{}, fmt.Errorf("%q: the prefix length must be between 8 and 30", s)
	case a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast():
		return netip.Prefix{}, fmt.Errorf("%q: not a usable host address", s)
	case a == p.Masked().Addr():
		return netip.Prefix{}, fmt.Errorf("%q: that is the network address; pick a host inside it", s)
	case a == broadcast(p):
		return netip.Prefix{}, fmt.Errorf("%q: that is the broadcast address; pick a host inside it", s)
	}
	return p, nil
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ParseGateway accepts an address inside the appliance's subnet, other than
// the appliance's own.
func ParseGateway(s string, own netip.Prefix) (string, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return "", fmt.Errorf("%q: write the gateway's IPv4 address, e.g. %s", s, firstHost(own))
	}
	if !own.Contains(a) {
		return "", fmt.Errorf("%s is not in %s: the gateway must be on the appliance's subnet", a, own.Masked())
	}
	if a == own.Addr() {
		return "", fmt.Errorf("%s is the appliance's own address", a)
	}
	return a.String(), nil
}

func firstHost(p netip.Prefix) netip.Addr { return p.Masked().Addr().Next() }

// ParseDNS accepts one to three comma or space separated IPv4/IPv6 addresses.
func ParseDNS(s string) ([]string, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
	if len(fields) == 0 || len(fields) > 3 {
		return nil, errors.New("give one to three DNS server addresses, e.g. 192.168.1.1")
	}
	out := make([]string, 0, len(fields))
	for _, f := range fields {
		a, err := netip.ParseAddr(f)
		if err != nil || a.IsUnspecified() {
			return nil, fmt.Errorf("%q is not an IP address", f)
		}
		out = append(out, a.String())
	}
	return out, nil
}

// ParsePairRole accepts standalone, first or join; it returns "" for
// standalone.
func ParsePairRole(s string) (any, error) {
	switch strings.ToLower(s) {
	case "standalone", "single", "no":
		return "", nil
	case config.PairFirst:
		return config.PairFirst, nil
	case config.PairJoin:
		return config.PairJoin, nil
	}
	return nil, fmt.Errorf("%q: answer standalone, first (this appliance forms a new pair) or join (it joins a pair with a token)", s)
}

// ValidPairAddress checks the address a pair member is reached at: an IP
// address or a host name, without a port.
func ValidPairAddress(s string) error {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() {
			return fmt.Errorf("%q: give an address the other appliance can reach, not a wildcard, loopback or multicast one", s)
		}
		return nil
	}
	if strings.Contains(s, ":") {
		return fmt.Errorf("%q: give the address without a port (the pair uses ports 7443 and 7444)", s)
	}
	if err := ValidHostname(s); err != nil {
		return fmt.Errorf("%q: give this appliance's IP address or host name, e.g. 192.168.1.10", s)
	}
	return nil
}

// MaxMemberID bounds a pair member's name.
const MaxMemberID = 32

// ValidMemberID checks a pair member's name: 1 to 32 letters, digits and
// '-'.
func ValidMemberID(s string) error {
	if s == "" || len(s) > MaxMemberID {
		return fmt.Errorf("%q: a member name is 1 to %d letters, digits or '-'", s, MaxMemberID)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("%q: a member name is letters, digits or '-' only", s)
		}
	}
	return nil
}

// Join tokens: "vnpair1." SECRET "." PIN "." LEADER (appliance/pair's
// JoinToken; vaultd checks it whole, the dialog only its shape, so that
// the firmware does not link the raft code).
const (
	joinTokenPrefix = "vnpair1."
	maxJoinToken    = 512
)

// ParseJoinToken checks a join token's shape and returns the leader's
// agent address it names.
func ParseJoinToken(s string) (string, error) {
	s = strings.TrimSpace(s)
	if len(s) > maxJoinToken {
		return "", fmt.Errorf("a join token of %d characters is over the %d-character limit: paste the one line `vaultctl pair create` printed", len(s), maxJoinToken)
	}
	rest, ok := strings.CutPrefix(s, joinTokenPrefix)
	parts := strings.SplitN(rest, ".", 3)
	if !ok || len(parts) != 3 || parts[2] == "" {
		return "", errors.New("not a join token (vnpair1.SECRET.PIN.ADDRESS): paste the line `vaultctl pair create` printed on the first appliance")
	}
	for _, p := range parts[:2] {
		if b, err := base64.RawURLEncoding.DecodeString(p); err != nil || len(b) != 32 {
			return "", errors.New("the join token is damaged (bad secret or pin): paste it again, whole")
		}
	}
	if strings.ContainsAny(parts[2], " \t") {
		return "", errors.New("the join token is damaged (bad leader address): paste it again, whole")
	}
	return parts[2], nil
}

// ValidPassword checks the admin password's strength.
func ValidPassword(s string) error {
	if len(s) < 8 {
		return errors.New("the password is too short: use at least 8 characters")
	}
	if strings.TrimSpace(s) != s {
		return errors.New("the password cannot start or end with a space")
	}
	return nil
}

// ValidTimeZone checks an IANA time zone name.
func ValidTimeZone(s string) error {
	if s == "" || strings.HasPrefix(s, "/") || strings.Contains(s, "..") {
		return fmt.Errorf("%q: write an IANA time zone such as UTC or Europe/Paris", s)
	}
	if _, err := time.LoadLocation(s); err != nil {
		return fmt.Errorf("%q is not a known time zone: write one such as UTC or Europe/Paris", s)
	}
	return nil
}

// ValidServer checks a host name or IP address.
func ValidServer(s string) error {
	if net.ParseIP(s) != nil {
		return nil
	}
	if err := ValidHostname(s); err != nil || !strings.Contains(s, ".") {
		return fmt.Errorf("%q: write a server name such as pool.ntp.org or an IP address", s)
	}
	return nil
}

// ParseYesNo accepts yes/no.
func ParseYesNo(s string) (any, error) {
	switch strings.ToLower(s) {
	case "y", "yes":
		return true, nil
	case "n", "no":
		return false, nil
	}
	return nil, fmt.Errorf("%q: answer yes or no", s)
}

// ParseDisks accepts one or more different blank disks named as listed,
// and returns them with the default layout for their count (no spares).
func ParseDisks(s string, disks []Disk) (config.Data, error) {
	names := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
	if len(names) == 0 {
		return config.Data{}, errors.New("name one disk or more from the list above")
	}
	var ids []string
	seen := map[string]bool{}
	for _, n := range names {
		n = strings.TrimPrefix(n, "/dev/")
		if seen[n] {
			return config.Data{}, fmt.Errorf("%s is named twice: name each disk once", n)
		}
		seen[n] = true
		var found *Disk
		for i := range disks {
			if disks[i].Name == n {
				found = &disks[i]
			}
		}
		switch {
		case found == nil:
			return config.Data{}, fmt.Errorf("%s is not a disk of this appliance: pick from the list above", n)
		case !found.Blank:
			return config.Data{}, fmt.Errorf("%s holds data and is not offered: pick a blank disk", n)
		}
		ids = append(ids, found.ID)
	}
	return config.Data{Level: raid.DefaultLevel(len(ids)), Disks: ids}, nil
}
