package bandwidth

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	tests := []struct {
		in   string
		want Rate
		out  string
	}{
		{"unlimited", Unlimited, "unlimited"},
		{"2Mbit/s", 250000, "2Mbit/s"},
		{"2 Mbit/s", 250000, "2Mbit/s"},
		{"500kbit/s", 62500, "500kbit/s"},
		{"1.5Mbit/s", 187500, "1500kbit/s"},
		{"10Mbps", 1250000, "10Mbit/s"},
		{"1Gbit/s", 125000000, "1Gbit/s"},
		{"1MB/s", 1000000, "8Mbit/s"},
		{"512KiB/s", 512 << 10, "512KiB/s"},
		{"3MiB/s", 3 << 20, "3MiB/s"},
		{"1001B/s", 1001, "1001B/s"},
		{"8bit/s", 1, "1B/s"},
	}
	for _, tt := range tests {
		got, err := ParseRate(tt.in)
		if err != nil {
			t.Errorf("ParseRate(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want || got.String() != tt.out {
			t.Errorf("ParseRate(%q) = %d (%s), want %d (%s)", tt.in, got, got, tt.want, tt.out)
		}
		if back, err := ParseRate(got.String()); err != nil || back != got {
			t.Errorf("round trip of %q: %d, %v", tt.in, back, err)
		}
	}
	for _, bad := range []string{"", "fast", "2", "-1Mbit/s", "0Mbit/s", "1bit/s", "xMbit/s"} {
		if _, err := ParseRate(bad); err == nil || !errors.Is(err, ErrSyntax) {
			t.Errorf("ParseRate(%q) = %v, want ErrSyntax", bad, err)
		}
	}
}

func TestParseProfile(t *testing.T) {
	tests := []struct{ in, out string }{
		{"mon-fri 08:00-18:00 2Mbit/s; otherwise unlimited", "mon-fri 08:00-18:00 2Mbit/s; otherwise unlimited"},
		{"mon-fri 08:00-18:00 2Mbit/s", "mon-fri 08:00-18:00 2Mbit/s; otherwise unlimited"},
		{"10Mbit/s", "10Mbit/s"},
		{"unlimited", "unlimited"},
		{"tz=Europe/Paris; mon-fri 08:00-12:00 1Mbit/s; mon-fri 12:00-18:00 4Mbit/s; otherwise 20Mbit/s",
			"tz=Europe/Paris; mon-fri 08:00-12:00 1Mbit/s; mon-fri 12:00-18:00 4Mbit/s; otherwise 20Mbit/s"},
		{"daily 22:00-06:00 unlimited; otherwise 1MiB/s", "daily 22:00-06:00 unlimited; otherwise 1MiB/s"},
	}
	for _, tt := range tests {
		p, err := ParseProfile(tt.in)
		if err != nil {
			t.Errorf("ParseProfile(%q): %v", tt.in, err)
			continue
		}
		if p.String() != tt.out {
			t.Errorf("ParseProfile(%q).String() = %q, want %q", tt.in, p.String(), tt.out)
		}
		q, err := ParseProfile(p.String())
		if err != nil || q.String() != p.String() {
			t.Errorf("round trip of %q: %q, %v", tt.in, q.String(), err)
		}
	}
	for _, tt := range []struct{ in, mention string }{
		{"", "empty profile"},
		{"mon-fri 08:00-18:00", "rate"},
		{"mon-fri 08:00-18:00 fast", "rate \"fast\""},
		{"moon 08:00-18:00 2Mbit/s", "unknown day"},
		{"mon 08:00-18:00 complete 2Mbit/s", "means nothing"},
		{"otherwise", "rate"},
		{"tz=Nowhere/Land; 1Mbit/s", "time zone"},
	} {
		_, err := ParseProfile(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.mention) {
			t.Errorf("ParseProfile(%q) = %v, want an error mentioning %q", tt.in, err, tt.mention)
		}
	}
}

func TestProfileJSON(t *testing.T) {
	p, _ := ParseProfile("mon-fri 08:00-18:00 2Mbit/s; otherwise unlimited")
	b, err := json.Marshal(map[string]Profile{"limit": p})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"limit":"mon-fri 08:00-18:00 2Mbit/s; otherwise unlimited"}`; string(b) != want {
		t.Fatalf("marshal = %s", b)
	}
	var back map[string]Profile
	if err := json.Unmarshal(b, &back); err != nil || back["limit"].String() != p.String() {
		t.Fatalf("unmarshal = %v, %v", back, err)
	}
}

// 2026-01-05 is a Monday.
func mon(h, m, s int) time.Time { return time.Date(2026, 1, 5, h, m, s, 0, time.UTC) }

func TestRateAtAndAllowance(t *testing.T) {
	p, err := ParseProfile("tz=UTC; mon-fri 08:00-18:00 2Mbit/s; sat,sun 00:00-24:00 unlimited; otherwise 8Mbit/s")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		at   time.Time
		want Rate
	}{
		{mon(7, 59, 59), 1000000},
		{mon(8, 0, 0), 250000},
		{mon(17, 59, 59), 250000},
		{mon(18, 0, 0), 1000000},
		{time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC), Unlimited},
	} {
		if got := p.RateAt(tt.at); got != tt.want {
			t.Errorf("RateAt(%v) = %v, want %v", tt.at, got, tt.want)
		}
	}
	tests := []struct {
		from, to  time.Time
		bytes     float64
		unlimited bool
	}{
		{mon(17, 59, 0), mon(18, 1, 0), 60*250000 + 60*1000000, false},
		{mon(7, 0, 0), mon(19, 0, 0), 3600*1000000 + 10*3600*250000 + 3600*1000000, false},
		{mon(12, 0, 0), mon(12, 0, 0), 0, false},
		// Friday 23:00 to Saturday 01:00: one limited hour, then unlimited.
		{time.Date(2026, 1, 9, 23, 0, 0, 0, time.UTC), time.Date(2026, 1, 10, 1, 0, 0, 0, time.UTC), 3600 * 1000000, true},
	}
	for _, tt := range tests {
		got, unl := p.Allowance(tt.from, tt.to)
		if got != tt.bytes || unl != tt.unlimited {
			t.Errorf("Allowance(%v, %v) = %v, %v; want %v, %v", tt.from, tt.to, got, unl, tt.bytes, tt.unlimited)
		}
	}
}
