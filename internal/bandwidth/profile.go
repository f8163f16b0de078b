// Package bandwidth reads and prints bandwidth limits: rates ("2Mbit/s")
// and weekly profiles ("mon-fri 08:00-18:00 2Mbit/s; otherwise unlimited").
// The vault validates profiles with it and the agent's limiter
// (agentkit/bwlimit) enforces them.
package bandwidth

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"vaultnode/internal/schedule"
)

// ErrSyntax is wrapped by every parse error.
var ErrSyntax = errors.New("bandwidth syntax")

// Rate is a bandwidth in bytes per second. Unlimited (zero) means no limit.
type Rate int64

// Unlimited is no limit.
const Unlimited Rate = 0

type unit struct {
	suffix string
	bytes  float64 // bytes per second per 1 of the unit
}

// Longest suffixes first so "Mbit/s" is not read as "bit/s".
var units = []unit{
	{"Gbit/s", 1e9 / 8}, {"Mbit/s", 1e6 / 8}, {"kbit/s", 1e3 / 8}, {"Kbit/s", 1e3 / 8}, {"bit/s", 1.0 / 8},
	{"Gbps", 1e9 / 8}, {"Mbps", 1e6 / 8}, {"kbps", 1e3 / 8},
	{"GiB/s", 1 << 30}, {"MiB/s", 1 << 20}, {"KiB/s", 1 << 10},
	{"GB/s", 1e9}, {"MB/s", 1e6}, {"kB/s", 1e3}, {"KB/s", 1e3}, {"B/s", 1},
}

// ParseRate reads "unlimited", "2Mbit/s", "500kbit/s", "10Mbps", "1MB/s",
// "512KiB/s" or "100000B/s".
func ParseRate(s string) (Rate, error) {
	s = strings.TrimSpace(s)
	if strings.EqualFold(s, "unlimited") {
		return Unlimited, nil
	}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
			if err != nil || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) {
				return 0, fmt.Errorf("%w: rate %q: want a positive number before %s", ErrSyntax, s, u.suffix)
			}
			r := Rate(math.Round(v * u.bytes))
			if r < 1 {
				return 0, fmt.Errorf("%w: rate %q is below 1 byte per second", ErrSyntax, s)
			}
			return r, nil
		}
	}
	return 0, fmt.Errorf("%w: rate %q: write a number and a unit (2Mbit/s, 500kbit/s, 1MB/s, 512KiB/s) or unlimited", ErrSyntax, s)
}

// String prints the rate in the unit that shows it exactly, preferring bits
// per second.
func (r Rate) String() string {
	if r <= 0 {
		return "unlimited"
	}
	bits := int64(r) * 8
	switch {
	case bits%1e9 == 0:
		return strconv.FormatInt(bits/1e9, 10) + "Gbit/s"
	case bits%1e6 == 0:
		return strconv.FormatInt(bits/1e6, 10) + "Mbit/s"
	case bits%1e3 == 0:
		return strconv.FormatInt(bits/1e3, 10) + "kbit/s"
	case r%(1<<20) == 0:
		return strconv.FormatInt(int64(r)>>20, 10) + "MiB/s"
	case r%(1<<10) == 0:
		return strconv.FormatInt(int64(r)>>10, 10) + "KiB/s"
	}
	return strconv.FormatInt(int64(r), 10) + "B/s"
}

// Rule limits the rate inside a weekly window. Its window's RunToCompletion
// flag has no meaning here.
type Rule struct {
	Window schedule.Window
	Rate   Rate
}

// Profile is the bandwidth limit of a computer over the week: the first rule
// whose window is open applies, Otherwise when none is. The zero Profile is
// unlimited.
type Profile struct {
	Rules     []Rule
	Otherwise Rate
	// Loc is the time zone of the windows; nil means time.Local.
	Loc *time.Location
}

// Fixed is a profile with one rate all the time.
func Fixed(r Rate) Profile { return Profile{Otherwise: r} }

// ParseProfile reads a profile: clauses separated by ";", each a window and a
// rate ("mon-fri 08:00-18:00 2Mbit/s"), an "otherwise RATE" clause (default
// unlimited), a bare rate (the same as otherwise), and optionally a time zone
// "tz=Europe/Paris". Example: "mon-fri 08:00-18:00 2Mbit/s; otherwise
// unlimited".
func ParseProfile(text string) (Profile, error) {
	var p Profile
	seen := false
	for _, c := range strings.Split(text, ";") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		seen = true
		if name, ok := strings.CutPrefix(c, "tz="); ok {
			loc, err := schedule.LoadLocation(name)
			if err != nil {
				return Profile{}, err
			}
			p.Loc = loc
			continue
		}
		if rest, ok := strings.CutPrefix(c, "otherwise"); ok {
			r, err := ParseRate(rest)
			if err != nil {
				return Profile{}, fmt.Errorf("clause %q: %w", c, err)
			}
			p.Otherwise = r
			continue
		}
		f := strings.Fields(c)
		if len(f) == 1 {
			r, err := ParseRate(f[0])
			if err != nil {
				return Profile{}, fmt.Errorf("clause %q: %w", c, err)
			}
			p.Otherwise = r
			continue
		}
		r, err := ParseRate(f[len(f)-1])
		if err != nil {
			return Profile{}, fmt.Errorf("clause %q: %w", c, err)
		}
		w, err := schedule.ParseWindow(strings.Join(f[:len(f)-1], " "))
		if err != nil {
			return Profile{}, fmt.Errorf("clause %q: %w", c, err)
		}
		if w.RunToCompletion {
			return Profile{}, fmt.Errorf("%w: clause %q: \"complete\" means nothing for a bandwidth rule; remove it", ErrSyntax, c)
		}
		p.Rules = append(p.Rules, Rule{Window: w, Rate: r})
	}
	if !seen {
		return Profile{}, fmt.Errorf("%w: empty profile: write a rate (2Mbit/s), unlimited, or rules such as \"mon-fri 08:00-18:00 2Mbit/s; otherwise unlimited\"", ErrSyntax)
	}
	return p, nil
}

// String prints the profile in the form ParseProfile reads.
func (p Profile) String() string {
	var parts []string
	if p.Loc != nil && p.Loc != time.Local && p.Loc.String() != "Local" {
		parts = append(parts, "tz="+p.Loc.String())
	}
	for _, r := range p.Rules {
		parts = append(parts, r.Window.String()+" "+r.Rate.String())
	}
	if len(p.Rules) == 0 {
		parts = append(parts, p.Otherwise.String())
	} else {
		parts = append(parts, "otherwise "+p.Otherwise.String())
	}
	return strings.Join(parts, "; ")
}

// MarshalJSON writes the text form.
func (p Profile) MarshalJSON() ([]byte, error) { return json.Marshal(p.String()) }

// UnmarshalJSON reads the text form.
func (p *Profile) UnmarshalJSON(b []byte) error {
	var text string
	if err := json.Unmarshal(b, &text); err != nil {
		return fmt.Errorf("decode bandwidth profile: %w", err)
	}
	q, err := ParseProfile(text)
	if err != nil {
		return err
	}
	*p = q
	return nil
}

func (p Profile) ruleSchedule(r Rule) schedule.Schedule {
	return schedule.Schedule{Windows: []schedule.Window{r.Window}, Loc: p.Loc}
}

// RateAt returns the rate in force at t.
func (p Profile) RateAt(t time.Time) Rate {
	r, _ := p.RateUntil(t)
	return r
}

// RateUntil returns the rate at t and the next instant it may change (zero:
// never).
func (p Profile) RateUntil(t time.Time) (Rate, time.Time) {
	rate := p.Otherwise
	matched := false
	var next time.Time
	for _, r := range p.Rules {
		start, end := p.ruleSchedule(r).Next(t)
		if start.IsZero() {
			continue
		}
		var change time.Time
		if !start.After(t) { // open now
			if !matched {
				rate, matched = r.Rate, true
			}
			change = end
		} else {
			change = start
		}
		if !change.IsZero() && (next.IsZero() || change.Before(next)) {
			next = change
		}
	}
	return rate, next
}

// Allowance returns the bytes the profile allows between from and to, and
// whether any part of the interval is unlimited (then the figure counts only
// the limited parts).
func (p Profile) Allowance(from, to time.Time) (bytes float64, unlimited bool) {
	for t := from; t.Before(to); {
		r, next := p.RateUntil(t)
		end := to
		if !next.IsZero() && next.Before(end) {
			end = next
		}
		if r == Unlimited {
			unlimited = true
		} else {
			bytes += float64(r) * end.Sub(t).Seconds()
		}
		t = end
	}
	return bytes, unlimited
}
