package schedule

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("load %s (is tzdata installed?): %v", name, err)
	}
	return loc
}

func mustParse(t *testing.T, text string) Schedule {
	t.Helper()
	s, err := Parse(text)
	if err != nil {
		t.Fatalf("Parse(%q): %v", text, err)
	}
	return s
}

func utc(y int, m time.Month, d, h, min int) time.Time {
	return time.Date(y, m, d, h, min, 0, 0, time.UTC)
}

func TestParseStringRoundTrip(t *testing.T) {
	tests := []struct{ in, want string }{
		{"24x7", "24x7"},
		{"always", "24x7"},
		{"never", "never"},
		{"mon-fri 22:00-06:00 complete; sat,sun 00:00-24:00", "mon-fri 22:00-06:00 complete; sat,sun 00:00-24:00"},
		{"  Monday-Friday 8:00-18:00 ", "mon-fri 08:00-18:00"},
		{"mon,tue,wed,thu,fri,sat,sun 01:00-02:00", "daily 01:00-02:00"},
		{"* 01:00-02:00", "daily 01:00-02:00"},
		{"fri-mon 10:00-11:00", "mon,fri-sun 10:00-11:00"},
		{"sun,mon 10:00-11:00", "mon,sun 10:00-11:00"},
		{"mon,wed,fri 23:30-00:15", "mon,wed,fri 23:30-00:15"},
		{"tz=Europe/Paris; fri 22:00-06:00 complete", "tz=Europe/Paris; fri 22:00-06:00 complete"},
		{"sat 00:00-24:00;", "sat 00:00-24:00"},
	}
	for _, tt := range tests {
		s := mustParse(t, tt.in)
		if got := s.String(); got != tt.want {
			t.Errorf("Parse(%q).String() = %q, want %q", tt.in, got, tt.want)
		}
		again := mustParse(t, s.String())
		if again.String() != s.String() || again.Always != s.Always || len(again.Windows) != len(s.Windows) {
			t.Errorf("round trip of %q: %q then %q", tt.in, s.String(), again.String())
		}
		for i := range s.Windows {
			if again.Windows[i] != s.Windows[i] {
				t.Errorf("round trip of %q: window %d %+v != %+v", tt.in, i, again.Windows[i], s.Windows[i])
			}
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ in, mention string }{
		{"", "no window"},
		{"tz=Europe/Paris", "no window"},
		{"moon 10:00-11:00", `unknown day "moon"`},
		{"mon-frx 10:00-11:00", `unknown day "frx"`},
		{"mon 10:00", "HH:MM-HH:MM"},
		{"mon 10-11", "not HH:MM"},
		{"mon 25:00-26:00", "between 00:00 and 24:00"},
		{"mon 10:60-11:00", "between 00:00 and 24:00"},
		{"mon 24:00-01:00", "starts at 24:00"},
		{"mon 10:00-10:00", "00:00-24:00"},
		{"mon 10:00-11:00 finish", `unknown option "finish"`},
		{"mon 10:00-11:00 complete extra", "want DAYS"},
		{"24x7; mon 10:00-11:00", "mixes 24x7"},
		{"tz=Mars/Olympus; mon 10:00-11:00", "time zone"},
	}
	for _, tt := range tests {
		_, err := Parse(tt.in)
		if err == nil {
			t.Errorf("Parse(%q) succeeded, want error mentioning %q", tt.in, tt.mention)
			continue
		}
		if !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q) error %v does not wrap ErrSyntax", tt.in, err)
		}
		if !strings.Contains(err.Error(), tt.mention) {
			t.Errorf("Parse(%q) error %q does not mention %q", tt.in, err, tt.mention)
		}
	}
}

func TestJSON(t *testing.T) {
	type cfg struct {
		Schedule Schedule `json:"schedule"`
	}
	in := cfg{Schedule: mustParse(t, "tz=America/New_York; mon-fri 22:00-06:00 complete; sat,sun 00:00-24:00")}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"schedule":"tz=America/New_York; mon-fri 22:00-06:00 complete; sat,sun 00:00-24:00"}`
	if string(b) != want {
		t.Fatalf("marshal = %s, want %s", b, want)
	}
	var out cfg
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.Schedule.String() != in.Schedule.String() || out.Schedule.Loc.String() != "America/New_York" {
		t.Fatalf("unmarshal = %q", out.Schedule)
	}
	if err := json.Unmarshal([]byte(`{"schedule":"mon 9-10"}`), &out); err == nil || !errors.Is(err, ErrSyntax) {
		t.Fatalf("bad schedule: err = %v, want ErrSyntax", err)
	}
}

func TestOpenAcrossMidnight(t *testing.T) {
	paris := mustLoc(t, "Europe/Paris")
	s := mustParse(t, "tz=Europe/Paris; fri 22:00-06:00")
	// 2026-01-09 is a Friday.
	local := func(d, h, m int) time.Time { return time.Date(2026, 1, d, h, m, 0, 0, paris) }
	tests := []struct {
		at   time.Time
		open bool
	}{
		{local(9, 21, 59), false},
		{local(9, 22, 0), true},
		{local(9, 23, 59), true},
		{local(10, 0, 0), true},
		{local(10, 5, 59), true},
		{local(10, 6, 0), false},
		{local(10, 22, 30), false}, // Saturday night is not a window
		{local(8, 23, 0), false},   // Thursday night neither
		{local(16, 23, 0), true},   // next Friday
	}
	for _, tt := range tests {
		if got := s.Open(tt.at); got != tt.open {
			t.Errorf("Open(%v) = %v, want %v", tt.at, got, tt.open)
		}
	}
	start, end := s.Next(local(10, 12, 0))
	if want := local(16, 22, 0); !start.Equal(want) {
		t.Errorf("Next start = %v, want %v", start, want)
	}
	if want := local(17, 6, 0); !end.Equal(want) {
		t.Errorf("Next end = %v, want %v", end, want)
	}
	start, end = s.Next(local(10, 1, 0)) // inside: the current window
	if !start.Equal(local(9, 22, 0)) || !end.Equal(local(10, 6, 0)) {
		t.Errorf("Next inside = %v..%v", start, end)
	}
}

func TestWeekdaysNights(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	s := mustParse(t, "tz=America/New_York; mon-fri 22:00-06:00 complete; sat,sun 00:00-24:00")
	local := func(d, h, m int) time.Time { return time.Date(2026, 1, d, h, m, 0, 0, ny) } // Jan 5 2026 is a Monday
	tests := []struct {
		at   time.Time
		open bool
	}{
		{local(5, 3, 0), false}, // Monday 03:00: Sunday's window ended at midnight
		{local(5, 12, 0), false},
		{local(5, 22, 0), true},
		{local(6, 3, 0), true},
		{local(9, 23, 0), true},  // Friday night
		{local(10, 12, 0), true}, // Saturday
		{local(11, 23, 59), true},
		{local(12, 0, 0), false}, // Monday 00:00
	}
	for _, tt := range tests {
		if got := s.Open(tt.at); got != tt.open {
			t.Errorf("Open(%v) = %v, want %v", tt.at, got, tt.open)
		}
	}
	// Friday 22:00 to Saturday 06:00 touches the weekend window: one interval
	// from Friday 22:00 to Monday 00:00.
	iv, ok := s.At(local(9, 12, 0))
	if !ok || !iv.Start.Equal(local(9, 22, 0)) || !iv.End.Equal(local(12, 0, 0)) {
		t.Fatalf("At Friday noon = %+v, %v; want Fri 22:00 .. Mon 00:00", iv, ok)
	}
	if iv.RunToCompletion {
		t.Errorf("merged interval ends with the weekend window, which does not run to completion")
	}
	iv, _ = s.At(local(6, 12, 0))
	if !iv.RunToCompletion || !iv.End.Equal(local(7, 6, 0)) {
		t.Errorf("Tuesday night = %+v, want run to completion until Wed 06:00", iv)
	}
}

func TestAlwaysAndNever(t *testing.T) {
	now := utc(2026, 3, 29, 1, 0)
	if !Always24x7.Open(now) {
		t.Error("24x7 closed")
	}
	start, end := Always24x7.Next(now)
	if !start.Equal(now) || !end.IsZero() {
		t.Errorf("24x7 Next = %v, %v", start, end)
	}
	var never Schedule
	if never.Open(now) {
		t.Error("never open")
	}
	if start, end := never.Next(now); !start.IsZero() || !end.IsZero() {
		t.Errorf("never Next = %v, %v", start, end)
	}
}

// Europe/Paris 2026: clocks spring forward on 29 March at 02:00 CET (01:00
// UTC) to 03:00 CEST and fall back on 25 October at 03:00 CEST (01:00 UTC)
// to 02:00 CET. America/New_York 2026: 8 March 02:00 EST (07:00 UTC) to
// 03:00 EDT; 1 November 02:00 EDT (06:00 UTC) back to 01:00 EST.
func TestDST(t *testing.T) {
	tests := []struct {
		name       string
		sched      string
		from       time.Time // Next(from)
		start, end time.Time // in UTC
	}{
		{"paris spring window over the gap", "tz=Europe/Paris; sun 01:30-03:00",
			utc(2026, 3, 28, 12, 0), utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 0)},
		{"paris spring window inside the gap is empty that day", "tz=Europe/Paris; sun 02:00-02:30",
			utc(2026, 3, 28, 12, 0), utc(2026, 4, 5, 0, 0), utc(2026, 4, 5, 0, 30)},
		{"paris spring window starting in the gap starts at the jump", "tz=Europe/Paris; sun 02:30-04:00",
			utc(2026, 3, 28, 12, 0), utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 2, 0)},
		{"paris spring night window is an hour shorter", "tz=Europe/Paris; sat 22:00-06:00",
			utc(2026, 3, 28, 12, 0), utc(2026, 3, 28, 21, 0), utc(2026, 3, 29, 4, 0)},
		{"paris fall window holds the repeated hour", "tz=Europe/Paris; sun 02:30-03:30",
			utc(2026, 10, 24, 12, 0), utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 2, 30)},
		{"paris fall window in the repeated hour opens once", "tz=Europe/Paris; sun 02:00-02:30",
			utc(2026, 10, 24, 12, 0), utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 0, 30)},
		{"paris fall night window is an hour longer", "tz=Europe/Paris; sat 22:00-06:00",
			utc(2026, 10, 24, 12, 0), utc(2026, 10, 24, 20, 0), utc(2026, 10, 25, 5, 0)},
		{"new york spring night window", "tz=America/New_York; sat 22:00-06:00",
			utc(2026, 3, 7, 12, 0), utc(2026, 3, 8, 3, 0), utc(2026, 3, 8, 10, 0)},
		{"new york spring 02:00-03:00 is empty", "tz=America/New_York; sun 02:00-03:00",
			utc(2026, 3, 7, 12, 0), utc(2026, 3, 15, 6, 0), utc(2026, 3, 15, 7, 0)},
		{"new york fall 01:00-01:30 opens at the first 01:00", "tz=America/New_York; sun 01:00-01:30",
			utc(2026, 10, 31, 12, 0), utc(2026, 11, 1, 5, 0), utc(2026, 11, 1, 5, 30)},
		{"new york fall whole day is 25 hours", "tz=America/New_York; sun 00:00-24:00",
			utc(2026, 10, 31, 12, 0), utc(2026, 11, 1, 4, 0), utc(2026, 11, 2, 5, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustParse(t, tt.sched)
			start, end := s.Next(tt.from)
			if !start.Equal(tt.start) || !end.Equal(tt.end) {
				t.Fatalf("Next(%v) = %v .. %v, want %v .. %v", tt.from,
					start.UTC(), end.UTC(), tt.start, tt.end)
			}
			for _, probe := range []struct {
				at   time.Time
				open bool
			}{
				{tt.start.Add(-time.Second), false},
				{tt.start, true},
				{tt.end.Add(-time.Second), true},
				{tt.end, false},
			} {
				if got := s.Open(probe.at); got != probe.open {
					t.Errorf("Open(%v) = %v, want %v", probe.at, got, probe.open)
				}
			}
		})
	}
	// The second 02:15 of Paris's fall-back night is outside "sun 02:00-02:30".
	s := mustParse(t, "tz=Europe/Paris; sun 02:00-02:30")
	if s.Open(utc(2026, 10, 25, 1, 15)) {
		t.Error("window reopened in the repeated hour")
	}
}

// Walking a schedule minute by minute across a whole year in both zones,
// Open must agree with the intervals Next reports and every interval must
// open at a wall time the window names (or the jump over it).
func TestNextAgreesWithOpenAllYear(t *testing.T) {
	for _, zone := range []string{"Europe/Paris", "America/New_York"} {
		s := mustParse(t, "tz="+zone+"; mon-fri 22:00-06:00 complete; sat 01:30-03:00; sun 02:00-02:30")
		t0 := utc(2026, 1, 1, 0, 0)
		t1 := utc(2027, 1, 1, 0, 0)
		step := 15 * time.Minute
		start, end := s.Next(t0)
		for at := t0; at.Before(t1); at = at.Add(step) {
			if !at.Before(end) {
				start, end = s.Next(at)
			}
			want := !at.Before(start) && at.Before(end)
			if got := s.Open(at); got != want {
				t.Fatalf("%s: Open(%v) = %v, but Next says %v .. %v", zone, at, got, start, end)
			}
		}
	}
}
