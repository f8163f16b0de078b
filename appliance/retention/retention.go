// Package retention parses retention policies and selects which versions a
// policy keeps (docs/retention.md). It is pure: the caller passes the
// versions, the instant "now" (from its clock) and the time zone of the
// calendar buckets.
//
// The semantics follow restic's `forget` (internal/restic/snapshot_policy.go):
// versions are walked newest first; a calendar rule keeps the newest version
// of each of its buckets (hour, day, ISO week, month, year); with a count it
// keeps that many buckets, with a span only buckets of versions younger than
// the span. A version may satisfy several rules; each rule counts on its own
// (restic's way, not Proxmox Backup Server's, where a version kept by an
// earlier option does not count for later ones: with spans the two agree).
// Spans are measured back from now, not from the newest version as restic
// does, so "daily 30d" means the last 30 calendar days of the vault's clock.
package retention

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ErrSyntax is wrapped by every Parse error.
var ErrSyntax = errors.New("retention policy syntax")

// Limits of a policy's text.
const (
	MaxPolicyLen = 256
	MaxRules     = 8
	MaxCount     = 1_000_000
	MaxSpanN     = 1000
)

// Kind is what a rule keeps.
type Kind string

// Rule kinds.
const (
	All     Kind = "all"    // every version younger than a span
	Last    Kind = "last"   // the newest N versions
	Hourly  Kind = "hourly" // the newest version of each hour
	Daily   Kind = "daily"
	Weekly  Kind = "weekly" // ISO weeks, Monday to Sunday
	Monthly Kind = "monthly"
	Yearly  Kind = "yearly"
)

var kindOrder = []Kind{All, Last, Hourly, Daily, Weekly, Monthly, Yearly}

// Span is a calendar length: N hours, days, weeks, months or years.
type Span struct {
	N    int
	Unit byte // 'h', 'd', 'w', 'm', 'y'
}

func (s Span) String() string { return strconv.Itoa(s.N) + string(s.Unit) }

// Before returns the instant s before t, in t's location (calendar months
// and years, like time.AddDate).
func (s Span) Before(t time.Time) time.Time {
	switch s.Unit {
	case 'h':
		return t.Add(-time.Duration(s.N) * time.Hour)
	case 'd':
		return t.AddDate(0, 0, -s.N)
	case 'w':
		return t.AddDate(0, 0, -7*s.N)
	case 'm':
		return t.AddDate(0, -s.N, 0)
	}
	return t.AddDate(-s.N, 0, 0)
}

// Rule is one clause of a policy: a kind with a count (Count > 0), a span
// (Within.N > 0) or Forever.
type Rule struct {
	Kind    Kind
	Count   int
	Within  Span
	Forever bool
}

func (r Rule) String() string {
	switch {
	case r.Forever:
		return string(r.Kind) + " forever"
	case r.Count > 0:
		return string(r.Kind) + " " + strconv.Itoa(r.Count)
	}
	return string(r.Kind) + " " + r.Within.String()
}

// Policy is a list of rules; a version is kept if any rule keeps it (and the
// first and the newest complete versions are always kept).
type Policy struct {
	Rules []Rule
}

func (p Policy) String() string {
	var s []string
	for _, r := range p.Rules {
		s = append(s, r.String())
	}
	return strings.Join(s, ", ")
}

// Default is the policy of a configuration and a company that set none:
// every version for 30 days, and the last of each month for a year.
const Default = "all 30d, monthly 12m"

// DefaultPolicy is Default parsed.
var DefaultPolicy = MustParse(Default)

// MustParse is Parse that panics: for constants.
func MustParse(s string) Policy {
	p, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return p
}

// Parse reads a policy such as "all 7d, daily 30d, weekly 12w, monthly 12m,
// yearly 5y" or "last 5, daily 7". A rule is a kind and an argument: a
// count (the newest N versions or buckets), a span (N and one of h d w m y:
// the versions or buckets younger than that) or "forever".
func Parse(s string) (Policy, error) {
	var p Policy
	if len(s) > MaxPolicyLen {
		return p, fmt.Errorf("%w: %d characters, over the %d-character limit", ErrSyntax, len(s), MaxPolicyLen)
	}
	if strings.TrimSpace(s) == "" {
		return p, fmt.Errorf("%w: empty policy: give at least one rule, e.g. %q", ErrSyntax, Default)
	}
	seen := map[Kind]bool{}
	for _, clause := range strings.Split(s, ",") {
		f := strings.Fields(clause)
		if len(f) != 2 {
			return p, fmt.Errorf("%w: %q: a rule is a kind and one argument, e.g. \"daily 30d\"", ErrSyntax, strings.TrimSpace(clause))
		}
		k := Kind(strings.ToLower(f[0]))
		if !validKind(k) {
			return p, fmt.Errorf("%w: unknown kind %q: use all, last, hourly, daily, weekly, monthly or yearly", ErrSyntax, f[0])
		}
		if seen[k] {
			return p, fmt.Errorf("%w: %q appears twice", ErrSyntax, k)
		}
		seen[k] = true
		if len(p.Rules) == MaxRules {
			return p, fmt.Errorf("%w: more than %d rules", ErrSyntax, MaxRules)
		}
		r := Rule{Kind: k}
		arg := strings.ToLower(f[1])
		switch {
		case arg == "forever":
			r.Forever = true
		case arg[len(arg)-1] >= '0' && arg[len(arg)-1] <= '9':
			n, err := strconv.Atoi(arg)
			if err != nil || n < 1 || n > MaxCount {
				return p, fmt.Errorf("%w: count %q of %s: use 1 to %d", ErrSyntax, f[1], k, MaxCount)
			}
			r.Count = n
		default:
			u := arg[len(arg)-1]
			if !strings.ContainsRune("hdwmy", rune(u)) {
				return p, fmt.Errorf("%w: span %q of %s: use a number and one of h d w m y (hours, days, weeks, months, years)", ErrSyntax, f[1], k)
			}
			n, err := strconv.Atoi(arg[:len(arg)-1])
			if err != nil || n < 1 || n > MaxSpanN {
				return p, fmt.Errorf("%w: span %q of %s: use 1 to %d of a unit", ErrSyntax, f[1], k, MaxSpanN)
			}
			r.Within = Span{N: n, Unit: u}
		}
		if k == All && r.Count > 0 {
			return p, fmt.Errorf("%w: \"all %d\": all takes a span or forever; for the newest %d versions write \"last %d\"", ErrSyntax, r.Count, r.Count, r.Count)
		}
		if k == Last && r.Count == 0 {
			return p, fmt.Errorf("%w: last takes a count, e.g. \"last 5\"; for a span write \"all %s\"", ErrSyntax, f[1])
		}
		p.Rules = append(p.Rules, r)
	}
	sort.SliceStable(p.Rules, func(i, j int) bool { return kindIndex(p.Rules[i].Kind) < kindIndex(p.Rules[j].Kind) })
	return p, nil
}

func validKind(k Kind) bool { return kindIndex(k) >= 0 }

func kindIndex(k Kind) int {
	for i, o := range kindOrder {
		if o == k {
			return i
		}
	}
	return -1
}

// Item is one version as the policy sees it.
type Item struct {
	Time     time.Time // the instant the version captures
	Complete bool      // wire.Manifest.Complete()
}

// Reasons for keeping a version besides the rules.
const (
	FirstComplete  = "first complete version"
	NewestComplete = "newest complete version"
	NewestVersion  = "newest version (none is complete)"
)

// Decision says whether one item is kept and why: each rule that keeps it,
// in the policy's order.
type Decision struct {
	Keep    bool
	Reasons []string
}

// bucket returns the calendar bucket of t (already in the buckets' zone).
func bucket(k Kind, t time.Time) int {
	y, m, d := t.Date()
	switch k {
	case Hourly:
		return ((y*100+int(m))*100+d)*100 + t.Hour()
	case Daily:
		return (y*100+int(m))*100 + d
	case Weekly:
		wy, w := t.ISOWeek()
		return wy*100 + w
	case Monthly:
		return y*100 + int(m)
	}
	return y
}

// Select decides, for each of items, whether policy p keeps it at now;
// calendar buckets are taken in loc. The result is parallel to items, whose
// order does not matter (ties in time go to the later index, as a later
// sequence number is the newer version).
func Select(p Policy, items []Item, now time.Time, loc *time.Location) []Decision {
	out := make([]Decision, len(items))
	if len(items) == 0 {
		return out
	}
	if loc == nil {
		loc = time.Local
	}
	now = now.In(loc)
	order := make([]int, len(items))
	for i := range order {
		order[i] = i
	}
	// Newest first.
	sort.SliceStable(order, func(a, b int) bool {
		ta, tb := items[order[a]].Time, items[order[b]].Time
		if ta.Equal(tb) {
			return order[a] > order[b]
		}
		return ta.After(tb)
	})
	type state struct {
		left   int
		last   int
		cutoff time.Time
		have   bool // last is set
	}
	st := make([]state, len(p.Rules))
	for i, r := range p.Rules {
		st[i].left = r.Count
		if r.Within.N > 0 {
			st[i].cutoff = r.Within.Before(now)
		}
	}
	for _, idx := range order {
		t := items[idx].Time.In(loc)
		for i, r := range p.Rules {
			s := &st[i]
			if r.Within.N > 0 && !t.After(s.cutoff) {
				continue
			}
			if r.Count > 0 && s.left == 0 {
				continue
			}
			if r.Kind != All && r.Kind != Last {
				b := bucket(r.Kind, t)
				if s.have && b == s.last {
					continue
				}
				s.last, s.have = b, true
			}
			if r.Count > 0 {
				s.left--
			}
			out[idx].Keep = true
			out[idx].Reasons = append(out[idx].Reasons, r.String())
		}
	}
	// The first and the newest complete versions are always kept; with no
	// complete version, the newest one.
	first, newest := -1, -1
	for _, idx := range order {
		if items[idx].Complete {
			if newest < 0 {
				newest = idx
			}
			first = idx
		}
	}
	keep := func(idx int, why string) {
		out[idx].Keep = true
		out[idx].Reasons = append(out[idx].Reasons, why)
	}
	if newest < 0 {
		keep(order[0], NewestVersion)
	} else {
		keep(first, FirstComplete)
		if newest != first {
			keep(newest, NewestComplete)
		}
	}
	return out
}

// JournalCutoff returns the instant before which a checkpoint has aged out
// of the policy's "all" rule: journal records on top of a version live until
// the next version (the next checkpoint) is older than this. Without an
// "all" span rule they live until a next checkpoint exists; with "all
// forever" always (ok false).
func (p Policy) JournalCutoff(now time.Time, loc *time.Location) (cut time.Time, ok bool) {
	if loc == nil {
		loc = time.Local
	}
	for _, r := range p.Rules {
		if r.Kind == All {
			if r.Forever {
				return time.Time{}, false
			}
			return r.Within.Before(now.In(loc)), true
		}
	}
	return now, true
}
