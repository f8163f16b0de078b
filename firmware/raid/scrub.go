package raid

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// DefaultScrub is the scrub schedule when the configuration names none: md
// checks the whole array on the first day of every month at 03:00.
const DefaultScrub = "monthly 1 03:00"

// ErrSchedule means a scrub schedule does not parse.
var ErrSchedule = errors.New("bad scrub schedule")

// Schedule is when the md check runs: monthly on a day of the month,
// weekly on a weekday, or never.
type Schedule struct {
	Never   bool
	Monthly bool
	Day     int // 1-28 (monthly) or 0-6, Sunday 0 (weekly)
	Hour    int
	Minute  int
}

var weekdays = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// ParseSchedule reads "monthly DAY HH:MM" (DAY 1-28), "weekly DAY HH:MM"
// (DAY sun..sat) or "never"; "" is DefaultScrub.
func ParseSchedule(s string) (Schedule, error) {
	if strings.TrimSpace(s) == "" {
		s = DefaultScrub
	}
	f := strings.Fields(strings.ToLower(s))
	if len(f) == 1 && f[0] == "never" {
		return Schedule{Never: true}, nil
	}
	bad := func(why string) (Schedule, error) {
		return Schedule{}, fmt.Errorf("%w %q: %s; write e.g. %q, \"weekly sun 02:00\" or \"never\"", ErrSchedule, s, why, DefaultScrub)
	}
	if len(f) != 3 {
		return bad("three words expected")
	}
	var sc Schedule
	switch f[0] {
	case "monthly":
		sc.Monthly = true
		d, err := strconv.Atoi(f[1])
		if err != nil || d < 1 || d > 28 {
			return bad("the day of the month is 1 to 28")
		}
		sc.Day = d
	case "weekly":
		sc.Day = -1
		for i, w := range weekdays {
			if strings.HasPrefix(f[1], w) {
				sc.Day = i
			}
		}
		if sc.Day < 0 {
			return bad("the day is sun, mon, tue, wed, thu, fri or sat")
		}
	default:
		return bad("monthly, weekly or never")
	}
	hm, err := time.Parse("15:04", f[2])
	if err != nil {
		return bad("the time is HH:MM")
	}
	sc.Hour, sc.Minute = hm.Hour(), hm.Minute()
	return sc, nil
}

// Next is the first scheduled start strictly after t (in t's location);
// zero for never.
func (s Schedule) Next(t time.Time) time.Time {
	if s.Never {
		return time.Time{}
	}
	if s.Monthly {
		c := time.Date(t.Year(), t.Month(), s.Day, s.Hour, s.Minute, 0, 0, t.Location())
		if !c.After(t) {
			c = time.Date(t.Year(), t.Month()+1, s.Day, s.Hour, s.Minute, 0, 0, t.Location())
		}
		return c
	}
	c := time.Date(t.Year(), t.Month(), t.Day(), s.Hour, s.Minute, 0, 0, t.Location())
	c = c.AddDate(0, 0, (s.Day-int(c.Weekday())+7)%7)
	if !c.After(t) {
		c = c.AddDate(0, 0, 7)
	}
	return c
}
