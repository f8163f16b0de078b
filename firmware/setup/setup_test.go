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
		{"disks three", second(ParseDisks("vdb vdc vdd", disks)), false},
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
		"secret-pass", "other-pass", // mismatch
		"secret-pass", "secret-pass",
		"Nowhere/City", "", // default UTC
		"", // default pool.ntp.org
		"vdd", "vdb vdc",
		"maybe", "no", // start over
		"vault2", "", "secret-pass", "secret-pass", "Europe/Paris", "10.0.2.2", "", "yes",
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
