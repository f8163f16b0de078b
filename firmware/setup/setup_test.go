package setup

import (
	"bufio"
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"vaultnode/firmware/config"
)

var disks = []Disk{
	{Name: "vdb", ID: "data1", Size: 64 << 20, Blank: true},
	{Name: "vdc", ID: "data2", Size: 64 << 20, Blank: true},
	{Name: "vdd", ID: "data3", Size: 64 << 20, Blank: false},
}

func TestValidation(t *testing.T) {
	own := netip.MustParsePrefix("192.168.1.10/24")
	tests := []struct {
		name string
		err  error
		ok   bool
	}{
		{"hostname ok", ValidHostname("vault-1.example.com"), true},
		{"hostname empty", ValidHostname(""), false},
		{"hostname underscore", ValidHostname("vault_1"), false},
		{"hostname leading dash", ValidHostname("-vault"), false},
		{"hostname long label", ValidHostname(strings.Repeat("a", 64)), false},
		{"address ok", second(ParseAddress("192.168.1.10/24")), true},
		{"address no prefix", second(ParseAddress("192.168.1.10")), false},
		{"address network", second(ParseAddress("192.168.1.0/24")), false},
		{"address broadcast", second(ParseAddress("192.168.1.255/24")), false},
		{"address ipv6", second(ParseAddress("fd00::1/64")), false},
		{"address /31", second(ParseAddress("10.0.0.1/31")), false},
		{"address loopback", second(ParseAddress("127.0.0.2/8")), false},
		{"gateway ok", second(ParseGateway("192.168.1.1", own)), true},
		{"gateway outside", second(ParseGateway("10.0.0.1", own)), false},
		{"gateway self", second(ParseGateway("192.168.1.10", own)), false},
		{"gateway junk", second(ParseGateway("router", own)), false},
		{"dns ok", second(ParseDNS("1.1.1.1, 9.9.9.9")), true},
		{"dns empty", second(ParseDNS("")), false},
		{"dns junk", second(ParseDNS("dns.example")), false},
		{"password ok", ValidPassword("correct horse"), true},
		{"password short", ValidPassword("short"), false},
		{"password spaces", ValidPassword(" padded pass "), false},
		{"tz utc", ValidTimeZone("UTC"), true},
		{"tz paris", ValidTimeZone("Europe/Paris"), true},
		{"tz nonsense", ValidTimeZone("Mars/Olympus"), false},
		{"tz path", ValidTimeZone("../etc/passwd"), false},
		{"ntp name", ValidServer("pool.ntp.org"), true},
		{"ntp ip", ValidServer("10.0.2.2"), true},
		{"ntp bare word", ValidServer("ntp"), false},
		{"ntp junk", ValidServer("a b"), false},
		{"mode dhcp", second(ParseNetworkMode("DHCP")), true},
		{"mode junk", second(ParseNetworkMode("auto")), false},
		{"disks one", second(ParseDisks("vdb", disks)), true},
		{"disks two", second(ParseDisks("/dev/vdb,vdc", disks)), true},
		{"disks in use", second(ParseDisks("vdd", disks)), false},
		{"disks unknown", second(ParseDisks("sda", disks)), false},
		{"disks twice", second(ParseDisks("vdb vdb", disks)), false},
		{"disks three with one in use", second(ParseDisks("vdb vdc vdd", disks)), false},
		{"disks none", second(ParseDisks("", disks)), false},
	}
	for _, tt := range tests {
		if (tt.err == nil) != tt.ok {
			t.Errorf("%s: err=%v, want ok=%v", tt.name, tt.err, tt.ok)
		}
		if tt.err != nil && len(tt.err.Error()) < 10 {
			t.Errorf("%s: message %q does not say what to do", tt.name, tt.err)
		}
	}
	if d, _ := ParseDisks("vdc vdb", disks); !cmp.Equal(d, config.Data{Level: "raid1", Disks: []string{"data2", "data1"}}) {
		t.Errorf("mirror parsed as %+v", d)
	}
}

func second[T any](_ T, err error) error { return err }

func TestDialogRefusesNonsenseAndStartsOver(t *testing.T) {
	answers := []string{
		"bad_host!", "vault1", // refused, then accepted
		"static", "10.0.2.15", "10.0.2.15/24", "10.9.9.9", "10.0.2.2", "10.0.2.3",
		"",                          // standalone
		"secret-pass", "other-pass", // mismatch
		"secret-pass", "secret-pass",
		"Nowhere/City", "", // default UTC
		"", // default pool.ntp.org
		"vdd", "vdb vdc",
		"maybe", "no", // start over
		"vault2", "", "", "secret-pass", "secret-pass", "Europe/Paris", "10.0.2.2", "vdb", "yes",
	}
	var out strings.Builder
	var echo []bool
	d := &Dialog{In: bufio.NewReader(strings.NewReader(strings.Join(answers, "\n") + "\n")), Out: &out, Disks: disks,
		Echo: func(on bool) { echo = append(echo, on) }}
	c, err := d.Run(context.Background())
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	if !config.CheckPassword(c.Password, "secret-pass") {
		t.Error("password not kept")
	}
	c.Password = ""
	want := config.Config{Hostname: "vault2", Network: config.Network{DHCP: true}, TimeZone: "Europe/Paris", NTP: "10.0.2.2",
		Data: config.Data{Level: "single", Disks: []string{"data1"}}}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Fatalf("config (-want +got):\n%s\n%s", diff, out.String())
	}
	for _, msg := range []string{"only letters, digits", "write an IPv4 address and prefix length", "not in 10.0.2.0/24",
		"passwords differ", "not a known time zone", "holds data", "answer yes or no", "Starting over"} {
		if !strings.Contains(out.String(), msg) {
			t.Errorf("output lacks %q", msg)
		}
	}
	if len(echo) == 0 || echo[len(echo)-1] != true {
		t.Errorf("echo not restored: %v", echo)
	}
}

func TestDialogAbortsOnEOF(t *testing.T) {
	d := &Dialog{In: bufio.NewReader(strings.NewReader("vault1\n")), Out: &strings.Builder{}, Disks: disks}
	if _, err := d.Run(context.Background()); !errors.Is(err, ErrAborted) {
		t.Fatalf("Run at EOF: %v", err)
	}
}

// TestDialogLayouts: the layout follows the disk count, spares come off
// the end, RAID10 is offered for an even count of four or more, and one
// disk gets its warning.
func TestDialogLayouts(t *testing.T) {
	five := []Disk{
		{Name: "vdb", ID: "d1", Size: 100 << 20, Blank: true},
		{Name: "vdc", ID: "d2", Size: 100 << 20, Blank: true},
		{Name: "vdd", ID: "d3", Size: 100 << 20, Blank: true},
		{Name: "vde", ID: "d4", Size: 100 << 20, Blank: true},
		{Name: "vdf", ID: "d5", Size: 200 << 20, Blank: true},
	}
	head := []string{"vault1", "", "", "secret-pass", "secret-pass", "", ""}
	for _, tt := range []struct {
		name    string
		answers []string
		want    config.Data
		says    []string
	}{
		{"five disks by default: raid6", []string{"", "", "", "yes"},
			config.Data{Level: "raid6", Disks: []string{"d1", "d2", "d3", "d4", "d5"}},
			[]string{"[vdb vdc vdd vde vdf]: ", "RAID6 over 5 disks: 300 MiB usable, survives the loss of 2 disks"}},
		{"one spare, raid10 asked", []string{"", "5", "1", "raid5", "RAID10", "yes"},
			config.Data{Level: "raid10", Disks: []string{"d1", "d2", "d3", "d4"}, Spares: []string{"d5"}},
			[]string{"keep at least one active disk", "Layout: raid6 or raid10 [raid6]: ", "RAID10 over 4 disks: 200 MiB usable",
				"1 hot spare (d5)", "hot spares d5"}},
		{"three disks: raid5", []string{"vdb vdc vdd", "", "yes"},
			config.Data{Level: "raid5", Disks: []string{"d1", "d2", "d3"}},
			[]string{"RAID5 over 3 disks: 200 MiB usable, survives the loss of 1 disk"}},
		{"one disk warns", []string{"vdc", "yes"},
			config.Data{Level: "single", Disks: []string{"d2"}},
			[]string{"ext4 on one disk, no RAID", "One disk has no redundancy"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			in := strings.Join(append(append([]string(nil), head...), tt.answers...), "\n") + "\n"
			d := &Dialog{In: bufio.NewReader(strings.NewReader(in)), Out: &out, Disks: five}
			c, err := d.Run(context.Background())
			if err != nil {
				t.Fatalf("Run: %v\n%s", err, out.String())
			}
			if diff := cmp.Diff(tt.want, c.Data); diff != "" {
				t.Errorf("data (-want +got):\n%s\n%s", diff, out.String())
			}
			for _, s := range tt.says {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, out.String())
				}
			}
		})
	}
}

func TestWireLineBounded(t *testing.T) {
	long := `{"answer":"` + strings.Repeat("a", MaxWireLine) + `"}` + "\n"
	if _, err := NewWireReader(strings.NewReader(long)).Read(); !errors.Is(err, ErrWireLine) {
		t.Errorf("a %d-byte line: %v, want ErrWireLine", len(long), err)
	}
	if _, err := NewWireReader(strings.NewReader("not json\n")).Read(); !errors.Is(err, ErrWireLine) {
		t.Errorf("a line that is not JSON: %v", err)
	}
	var b strings.Builder
	if err := WriteWire(&b, WireMsg{Say: strings.Repeat("x", MaxWireLine)}); !errors.Is(err, ErrWireLine) {
		t.Errorf("writing an oversized message: %v", err)
	}
	a := "vault-1"
	b.Reset()
	if err := WriteWire(&b, WireMsg{Answer: &a}); err != nil {
		t.Fatal(err)
	}
	if m, err := NewWireReader(strings.NewReader(b.String())).Read(); err != nil || m.Answer == nil || *m.Answer != a {
		t.Errorf("round trip: %+v %v", m, err)
	}
}

// TestDialogPair: the pair step refuses a bad role, address, name and
// token, offers the static address and the hostname as defaults, and says
// which leader a token names.
func TestDialogPair(t *testing.T) {
	tok := "vnpair1." + strings.Repeat("A", 43) + "." + strings.Repeat("B", 43) + ".10.0.2.20:7443"
	for _, tt := range []struct {
		name    string
		answers []string
		want    *config.Pair
		says    []string
	}{
		{"first, static address as default", []string{"vault-a.example.com", "static", "10.0.2.15/24", "10.0.2.2", "10.0.2.3",
			"twin", "FIRST", "127.0.0.1", "10.0.2.15:7444", "", "bad_name", ""},
			&config.Pair{Role: config.PairFirst, ID: "vault-a", Address: "10.0.2.15"},
			[]string{"answer standalone, first", "not a wildcard, loopback", "without a port", "[10.0.2.15]: ", "[vault-a]: ",
				"letters, digits or '-' only", "pair       forms a new pair as member vault-a at 10.0.2.15"}},
		{"join over dhcp", []string{"vault-b", "dhcp", "join", "", "vault-b.lan", "b", "vnpair1.abc", tok[:len(tok)-20] + "x.y", tok},
			&config.Pair{Role: config.PairJoin, ID: "b", Address: "vault-b.lan", Token: tok},
			[]string{"DHCP must always give it this address", "not a join token", "the join token is damaged",
				"names the pair's leader at 10.0.2.20:7443", "joins the pair led by 10.0.2.20:7443 as member b at vault-b.lan"}},
		{"standalone", []string{"vault-c", "dhcp", ""}, nil, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			in := strings.Join(append(tt.answers, "secret-pass", "secret-pass", "", "", "vdb", "yes"), "\n") + "\n"
			c, err := (&Dialog{In: bufio.NewReader(strings.NewReader(in)), Out: &out, Disks: disks}).Run(context.Background())
			if err != nil {
				t.Fatalf("Run: %v\n%s", err, out.String())
			}
			if diff := cmp.Diff(tt.want, c.Pair); diff != "" {
				t.Errorf("pair (-want +got):\n%s\n%s", diff, out.String())
			}
			for _, s := range tt.says {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, out.String())
				}
			}
		})
	}
	if _, err := ParseJoinToken(strings.Repeat("x", 600)); err == nil || !strings.Contains(err.Error(), "over the 512-character limit") {
		t.Errorf("an oversized token: %v", err)
	}
}
