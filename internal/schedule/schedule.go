// Package schedule says when a configuration may synchronize: always (24x7)
// or inside a set of weekly windows in a time zone.
//
// A window starts on each of its days at a time of day and ends at a later
// time of day, on the same day or, when the end is not after the start, on
// the next day ("fri 22:00-06:00" ends Saturday 06:00). "24:00" ends a window
// at the following midnight.
//
// Wall-clock times are turned into instants in the schedule's time zone with
// one rule, so daylight-saving changes behave predictably:
//   - a time the clock shows twice (the repeated hour when clocks fall back)
//     means its first occurrence;
//   - a time the clock never shows (the hour skipped when clocks spring
//     forward) means the instant the clock jumps, so a window 01:30-03:00 on
//     a spring-forward night in Europe/Paris is open for 30 real minutes and a
//     window 02:00-02:30 on that night is empty (the clock never shows it).
//
// Windows that touch or overlap are merged: "sat,sun 00:00-24:00" is one
// 48-hour interval.
package schedule

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ErrSyntax is wrapped by every Parse error.
var ErrSyntax = errors.New("schedule syntax")

const minutesPerDay = 24 * 60

// Window is one weekly window: on each day in Days, from Start to End
// (minutes after midnight; End may be 1440 for "24:00"; an End not after Start
// means the next day).
type Window struct {
	Days  [7]bool // indexed by time.Weekday (Sunday = 0)
	Start int     // minutes after midnight, 0..1439
	End   int     // minutes after midnight, 0..1440
	// RunToCompletion lets a synchronization started inside the window run
	// past its end until it completes.
	RunToCompletion bool
}

// Schedule is 24x7 (Always) or a set of weekly windows in Loc. The zero
// Schedule never opens.
type Schedule struct {
	Always  bool
	Windows []Window
	// Loc is the time zone of the windows; nil means time.Local.
	Loc *time.Location
}

// Always24x7 is the schedule that is always open.
var Always24x7 = Schedule{Always: true}

// Interval is one opening of a schedule: [Start, End). A zero End means the
// interval never closes (24x7).
type Interval struct {
	Start, End time.Time
	// RunToCompletion is the setting of the window whose end is End.
	RunToCompletion bool
}

// Contains reports whether t is inside the interval.
func (iv Interval) Contains(t time.Time) bool {
	return !t.Before(iv.Start) && (iv.End.IsZero() || t.Before(iv.End))
}

func (s Schedule) loc() *time.Location {
	if s.Loc == nil {
		return time.Local
	}
	return s.Loc
}

// Open reports whether the schedule is open at t.
func (s Schedule) Open(t time.Time) bool {
	iv, ok := s.At(t)
	return ok && iv.Contains(t)
}

// At returns the interval containing t, or else the next interval to open
// after t. ok is false when the schedule never opens.
func (s Schedule) At(t time.Time) (iv Interval, ok bool) {
	if s.Always {
		return Interval{Start: t}, true
	}
	for _, iv := range s.intervals(t) {
		if iv.End.After(t) {
			return iv, true
		}
	}
	return Interval{}, false
}

// Next returns the interval containing t (start <= t) or the next one to
// open after t: its start and its end. A zero end means it never closes
// (24x7); a zero start means the schedule never opens.
func (s Schedule) Next(t time.Time) (start, end time.Time) {
	iv, ok := s.At(t)
	if !ok {
		return time.Time{}, time.Time{}
	}
	return iv.Start, iv.End
}

// intervals lists the merged openings that can matter at t: from two days
// before t to fifteen days after, sorted.
func (s Schedule) intervals(t time.Time) []Interval {
	loc := s.loc()
	lt := t.In(loc)
	y, m, d := lt.Date()
	var raw []Interval
	for off := -2; off <= 15; off++ {
		day := time.Date(y, m, d+off, 12, 0, 0, 0, time.UTC) // calendar arithmetic only
		dy, dm, dd := day.Date()
		wd := day.Weekday()
		for _, w := range s.Windows {
			if !w.Days[wd] {
				continue
			}
			end := w.End
			if end <= w.Start {
				end += minutesPerDay
			}
			iv := Interval{
				Start:           wallInstant(dy, dm, dd, w.Start, loc),
				End:             wallInstant(dy, dm, dd, end, loc),
				RunToCompletion: w.RunToCompletion,
			}
			if iv.End.After(iv.Start) {
				raw = append(raw, iv)
			}
		}
	}
	sort.Slice(raw, func(i, j int) bool { return raw[i].Start.Before(raw[j].Start) })
	var merged []Interval
	for _, iv := range raw {
		if n := len(merged); n > 0 && !iv.Start.After(merged[n-1].End) {
			last := &merged[n-1]
			switch {
			case iv.End.After(last.End):
				last.End = iv.End
				last.RunToCompletion = iv.RunToCompletion
			case iv.End.Equal(last.End):
				last.RunToCompletion = last.RunToCompletion || iv.RunToCompletion
			}
			continue
		}
		merged = append(merged, iv)
	}
	return merged
}

// wallInstant is the instant at which the clock in loc shows the given date
// plus minutes (which may exceed a day). A time shown twice resolves to its
// first occurrence; a time never shown resolves to the instant the clock
// jumps over it.
func wallInstant(y int, m time.Month, d, minutes int, loc *time.Location) time.Time {
	naive := time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Add(time.Duration(minutes) * time.Minute)
	var best time.Time
	found := false
	for _, probe := range []time.Duration{-26 * time.Hour, 26 * time.Hour} {
		_, off := naive.Add(probe).In(loc).Zone()
		cand := naive.Add(-time.Duration(off) * time.Second)
		if _, got := cand.In(loc).Zone(); got != off {
			continue
		}
		if !found || cand.Before(best) {
			best, found = cand, true
		}
	}
	if found {
		return best.In(loc)
	}
	// The wall time falls in a gap: read it with the offset before the gap,
	// which lands after the jump; the zone in effect there began at the jump.
	_, before := naive.Add(-26 * time.Hour).In(loc).Zone()
	after := naive.Add(-time.Duration(before) * time.Second).In(loc)
	start, _ := after.ZoneBounds()
	if start.IsZero() {
		return after
	}
	return start.In(loc)
}

var dayNames = [7]string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

func parseDay(s string) (time.Weekday, bool) {
	s = strings.ToLower(s)
	for i, n := range dayNames {
		if s == n {
			return time.Weekday(i), true
		}
	}
	long := []string{"sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"}
	for i, n := range long {
		if s == n {
			return time.Weekday(i), true
		}
	}
	return 0, false
}

// ParseDays parses a day set: "daily", "mon-fri", "sat,sun", "fri-mon".
func ParseDays(s string) ([7]bool, error) {
	var days [7]bool
	if s == "daily" || s == "*" {
		for i := range days {
			days[i] = true
		}
		return days, nil
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		from, to, isRange := strings.Cut(part, "-")
		a, ok := parseDay(from)
		if !ok {
			return days, fmt.Errorf("%w: unknown day %q (use mon, tue, wed, thu, fri, sat, sun, a range such as mon-fri, or daily)", ErrSyntax, from)
		}
		b := a
		if isRange {
			if b, ok = parseDay(to); !ok {
				return days, fmt.Errorf("%w: unknown day %q (use mon, tue, wed, thu, fri, sat, sun, a range such as mon-fri, or daily)", ErrSyntax, to)
			}
		}
		for d := a; ; d = (d + 1) % 7 {
			days[d] = true
			if d == b {
				break
			}
		}
	}
	return days, nil
}

// FormatDays prints a day set in the shortest canonical form ParseDays reads.
func FormatDays(days [7]bool) string {
	all := true
	for _, d := range days {
		all = all && d
	}
	if all {
		return "daily"
	}
	// Runs in Monday-first order so "mon-fri" and "sat,sun" read naturally;
	// a run may wrap from Sunday to Monday only through the week order.
	order := []time.Weekday{1, 2, 3, 4, 5, 6, 0}
	var parts []string
	for i := 0; i < 7; {
		if !days[order[i]] {
			i++
			continue
		}
		j := i
		for j+1 < 7 && days[order[j+1]] {
			j++
		}
		switch {
		case j-i >= 2:
			parts = append(parts, dayNames[order[i]]+"-"+dayNames[order[j]])
		case j == i:
			parts = append(parts, dayNames[order[i]])
		default:
			for k := i; k <= j; k++ {
				parts = append(parts, dayNames[order[k]])
			}
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

func parseClock(s string) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	if !ok || len(m) != 2 || len(h) < 1 || len(h) > 2 {
		return 0, fmt.Errorf("%w: time %q is not HH:MM", ErrSyntax, s)
	}
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if err1 != nil || err2 != nil || hh < 0 || mm < 0 || mm > 59 || hh > 24 || (hh == 24 && mm != 0) {
		return 0, fmt.Errorf("%w: time %q is not a time of day between 00:00 and 24:00", ErrSyntax, s)
	}
	return hh*60 + mm, nil
}

func formatClock(min int) string { return fmt.Sprintf("%02d:%02d", min/60, min%60) }

// ParseWindow parses one window: "DAYS HH:MM-HH:MM [complete]", for example
// "mon-fri 22:00-06:00 complete".
func ParseWindow(s string) (Window, error) {
	f := strings.Fields(s)
	if len(f) < 2 || len(f) > 3 {
		return Window{}, fmt.Errorf("%w: window %q: want DAYS HH:MM-HH:MM [complete], e.g. \"mon-fri 22:00-06:00 complete\"", ErrSyntax, s)
	}
	days, err := ParseDays(f[0])
	if err != nil {
		return Window{}, fmt.Errorf("window %q: %w", s, err)
	}
	a, b, ok := strings.Cut(f[1], "-")
	if !ok {
		return Window{}, fmt.Errorf("%w: window %q: times %q are not HH:MM-HH:MM", ErrSyntax, s, f[1])
	}
	start, err := parseClock(a)
	if err != nil {
		return Window{}, fmt.Errorf("window %q: %w", s, err)
	}
	end, err := parseClock(b)
	if err != nil {
		return Window{}, fmt.Errorf("window %q: %w", s, err)
	}
	if start == minutesPerDay {
		return Window{}, fmt.Errorf("%w: window %q starts at 24:00; start it at 00:00 the next day", ErrSyntax, s)
	}
	if start == end {
		return Window{}, fmt.Errorf("%w: window %q is empty; for a whole day write 00:00-24:00", ErrSyntax, s)
	}
	w := Window{Days: days, Start: start, End: end}
	if len(f) == 3 {
		if f[2] != "complete" {
			return Window{}, fmt.Errorf("%w: window %q: unknown option %q (the only option is \"complete\")", ErrSyntax, s, f[2])
		}
		w.RunToCompletion = true
	}
	return w, nil
}

// String prints the window in the form ParseWindow reads.
func (w Window) String() string {
	s := FormatDays(w.Days) + " " + formatClock(w.Start) + "-" + formatClock(w.End)
	if w.RunToCompletion {
		s += " complete"
	}
	return s
}

// Parse reads a schedule: "24x7", "never", or windows separated by ";",
// optionally with a time zone clause "tz=Europe/Paris" (default: the
// computer's zone). Example: "tz=Europe/Paris; mon-fri 22:00-06:00 complete;
// sat,sun 00:00-24:00".
func Parse(text string) (Schedule, error) {
	var s Schedule
	never := false
	clauses := strings.Split(text, ";")
	for _, c := range clauses {
		c = strings.TrimSpace(c)
		switch {
		case c == "":
			continue
		case strings.EqualFold(c, "24x7") || strings.EqualFold(c, "always"):
			s.Always = true
		case strings.EqualFold(c, "never"):
			never = true
		case strings.HasPrefix(c, "tz="):
			loc, err := LoadLocation(strings.TrimPrefix(c, "tz="))
			if err != nil {
				return Schedule{}, err
			}
			s.Loc = loc
		default:
			w, err := ParseWindow(c)
			if err != nil {
				return Schedule{}, err
			}
			s.Windows = append(s.Windows, w)
		}
	}
	if s.Always && len(s.Windows) > 0 {
		return Schedule{}, fmt.Errorf("%w: %q mixes 24x7 with windows; write either 24x7 or the windows", ErrSyntax, text)
	}
	if !s.Always && len(s.Windows) == 0 && !never {
		return Schedule{}, fmt.Errorf("%w: %q has no window; write 24x7, never, or windows such as \"mon-fri 22:00-06:00\"", ErrSyntax, text)
	}
	return s, nil
}

// LoadLocation loads an IANA time zone ("Europe/Paris") with an error that
// says what to do.
func LoadLocation(name string) (*time.Location, error) {
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("%w: time zone %q: %v (use an IANA name such as Europe/Paris; install tzdata if none load)", ErrSyntax, name, err)
	}
	return loc, nil
}

// String prints the schedule in the form Parse reads.
func (s Schedule) String() string {
	if s.Always {
		return "24x7"
	}
	var parts []string
	if s.Loc != nil && s.Loc != time.Local && s.Loc.String() != "Local" {
		parts = append(parts, "tz="+s.Loc.String())
	}
	if len(s.Windows) == 0 {
		parts = append(parts, "never")
	}
	for _, w := range s.Windows {
		parts = append(parts, w.String())
	}
	return strings.Join(parts, "; ")
}

// MarshalJSON writes the schedule as its text form.
func (s Schedule) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads the text form.
func (s *Schedule) UnmarshalJSON(b []byte) error {
	var text string
	if err := json.Unmarshal(b, &text); err != nil {
		return fmt.Errorf("decode schedule: %w", err)
	}
	p, err := Parse(text)
	if err != nil {
		return err
	}
	*s = p
	return nil
}
