package retention

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // America/New_York without the system's zoneinfo

	"vaultnode/internal/clock"
)

// hourly returns two years of hourly versions, 2024-01-01 00:00 to
// 2025-12-31 23:00 UTC (17544 of them), all complete.
func hourly() []Item {
	var items []Item
	for t := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC); t.Year() < 2026; t = t.Add(time.Hour) {
		items = append(items, Item{Time: t, Complete: true})
	}
	return items
}

func at(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return t
}

// span returns every hour from a to b inclusive.
func span(a, b string) []time.Time {
	var out []time.Time
	for t := at(a); !t.After(at(b)); t = t.Add(time.Hour) {
		out = append(out, t)
	}
	return out
}

func times(ss ...string) []time.Time {
	var out []time.Time
	for _, s := range ss {
		out = append(out, at(s))
	}
	return out
}

// The expected tables are worked out by hand from the calendar (2025-01-01
// is a Wednesday, so Sundays in late 2025 fall on Oct 12, 19, 26, Nov 2, ...
// Dec 28), not by running the code. The clock is a fake one, set just after
// the last version: 2026-01-01 00:00 UTC.
func TestTwoYearsOfHourlyVersions(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	type want struct {
		times  []time.Time
		count  int
		reason map[string][]string // a few versions and every reason they are kept
	}
	cases := []struct {
		policy string
		loc    string
		mutate func([]Item)
		want   want
	}{
		{
			policy: "all 7d, daily 30d, weekly 12w, monthly 12m, yearly 5y",
			want: want{
				times: slices.Concat(
					// all 7d: after 2025-12-25 00:00 (the cutoff itself goes).
					span("2025-12-25 01:00", "2025-12-31 23:00"),
					// daily 30d: after 2025-12-02 00:00, the last of each day;
					// Dec 25-31 are already in.
					times("2025-12-02 23:00", "2025-12-03 23:00", "2025-12-04 23:00", "2025-12-05 23:00",
						"2025-12-06 23:00", "2025-12-07 23:00", "2025-12-08 23:00", "2025-12-09 23:00",
						"2025-12-10 23:00", "2025-12-11 23:00", "2025-12-12 23:00", "2025-12-13 23:00",
						"2025-12-14 23:00", "2025-12-15 23:00", "2025-12-16 23:00", "2025-12-17 23:00",
						"2025-12-18 23:00", "2025-12-19 23:00", "2025-12-20 23:00", "2025-12-21 23:00",
						"2025-12-22 23:00", "2025-12-23 23:00", "2025-12-24 23:00"),
					// weekly 12w: after 2025-10-09 00:00 (a Thursday), the last of
					// each ISO week, i.e. Sundays 23:00; Dec 7 on are already in.
					times("2025-10-12 23:00", "2025-10-19 23:00", "2025-10-26 23:00", "2025-11-02 23:00",
						"2025-11-09 23:00", "2025-11-16 23:00", "2025-11-23 23:00", "2025-11-30 23:00"),
					// monthly 12m: after 2025-01-01 00:00, the last of each month;
					// Nov 30 and Dec 31 are already in.
					times("2025-01-31 23:00", "2025-02-28 23:00", "2025-03-31 23:00", "2025-04-30 23:00",
						"2025-05-31 23:00", "2025-06-30 23:00", "2025-07-31 23:00", "2025-08-31 23:00",
						"2025-09-30 23:00", "2025-10-31 23:00"),
					// yearly 5y: 2024 and 2025 (already in).
					times("2024-12-31 23:00"),
					// the first complete version.
					times("2024-01-01 00:00"),
				),
				count: 167 + 23 + 8 + 10 + 1 + 1,
				reason: map[string][]string{
					"2025-12-31 23:00": {"all 7d", "daily 30d", "weekly 12w", "monthly 12m", "yearly 5y", NewestComplete},
					"2025-12-28 23:00": {"all 7d", "daily 30d", "weekly 12w"},
					"2025-11-30 23:00": {"weekly 12w", "monthly 12m"},
					"2025-10-12 23:00": {"weekly 12w"},
					"2025-01-31 23:00": {"monthly 12m"},
					"2024-12-31 23:00": {"yearly 5y"},
					"2024-01-01 00:00": {FirstComplete},
					"2025-12-25 01:00": {"all 7d"},
				},
			},
		},
		{
			policy: Default, // all 30d, monthly 12m
			want: want{
				times: slices.Concat(
					span("2025-12-02 01:00", "2025-12-31 23:00"),
					times("2025-01-31 23:00", "2025-02-28 23:00", "2025-03-31 23:00", "2025-04-30 23:00",
						"2025-05-31 23:00", "2025-06-30 23:00", "2025-07-31 23:00", "2025-08-31 23:00",
						"2025-09-30 23:00", "2025-10-31 23:00", "2025-11-30 23:00"),
					times("2024-01-01 00:00"),
				),
				count: 23 + 29*24 + 11 + 1,
			},
		},
		{
			policy: "last 3, daily 2, monthly 3",
			want: want{
				times: times("2025-12-31 21:00", "2025-12-31 22:00", "2025-12-31 23:00", "2025-12-30 23:00",
					"2025-11-30 23:00", "2025-10-31 23:00", "2024-01-01 00:00"),
				count: 7,
				reason: map[string][]string{
					"2025-12-31 23:00": {"last 3", "daily 2", "monthly 3", NewestComplete},
					"2025-12-31 22:00": {"last 3"},
				},
			},
		},
		{
			// The newest and the first versions are incomplete: the rules
			// still count them, and the first and newest complete ones are
			// kept besides.
			policy: "monthly 2",
			mutate: func(items []Item) {
				items[0].Complete = false
				items[len(items)-1].Complete = false
			},
			want: want{
				times: times("2025-12-31 23:00", "2025-11-30 23:00", "2025-12-31 22:00", "2024-01-01 01:00"),
				count: 4,
				reason: map[string][]string{
					"2025-12-31 22:00": {NewestComplete},
					"2024-01-01 01:00": {FirstComplete},
				},
			},
		},
		{
			// Days in New York (UTC-5 in winter): the last version of Dec 31
			// there is 18:00 EST (23:00 UTC), of Dec 30 23:00 EST (Dec 31
			// 04:00 UTC).
			policy: "daily 2",
			loc:    "America/New_York",
			want: want{
				times: times("2025-12-31 23:00", "2025-12-31 04:00", "2024-01-01 00:00"),
				count: 3,
			},
		},
		{
			// hourly 3h: after 2025-12-31 21:00, so 22:00 and 23:00 only.
			policy: "hourly 3h, yearly forever",
			want: want{
				times: times("2025-12-31 22:00", "2025-12-31 23:00", "2024-12-31 23:00", "2024-01-01 00:00"),
				count: 4,
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.policy+"/"+tc.loc, func(t *testing.T) {
			p, err := Parse(tc.policy)
			if err != nil {
				t.Fatal(err)
			}
			loc := time.UTC
			if tc.loc != "" {
				if loc, err = time.LoadLocation(tc.loc); err != nil {
					t.Fatal(err)
				}
			}
			items := hourly()
			if len(items) != 17544 {
				t.Fatalf("%d versions, want 17544", len(items))
			}
			if tc.mutate != nil {
				tc.mutate(items)
			}
			got := Select(p, items, clk.Now(), loc)
			var kept []time.Time
			for i, d := range got {
				if d.Keep != (len(d.Reasons) > 0) {
					t.Errorf("version %s: keep %v with reasons %q", items[i].Time, d.Keep, d.Reasons)
				}
				if d.Keep {
					kept = append(kept, items[i].Time)
				}
			}
			want := slices.Clone(tc.want.times)
			slices.SortFunc(want, time.Time.Compare)
			if len(want) != tc.want.count {
				t.Fatalf("the table lists %d versions but says %d: fix the table", len(want), tc.want.count)
			}
			if !slices.EqualFunc(kept, want, time.Time.Equal) {
				extra, missing := diff(kept, want), diff(want, kept)
				t.Errorf("kept %d versions, want %d; kept but not in the table: %v; in the table but not kept: %v", len(kept), len(want), extra, missing)
			}
			for s, reasons := range tc.want.reason {
				i := slices.IndexFunc(items, func(it Item) bool { return it.Time.Equal(at(s)) })
				if !slices.Equal(got[i].Reasons, reasons) {
					t.Errorf("version %s kept for %q, want %q", s, got[i].Reasons, reasons)
				}
			}
		})
	}
}

func diff(a, b []time.Time) []string {
	var out []string
	for _, t := range a {
		if !slices.ContainsFunc(b, t.Equal) {
			out = append(out, t.Format("2006-01-02 15:04"))
		}
	}
	if len(out) > 10 {
		out = append(out[:10], "...")
	}
	return out
}

func TestOrderDoesNotMatter(t *testing.T) {
	items := hourly()[:24*40]
	now := items[len(items)-1].Time.Add(time.Minute)
	p := MustParse("all 2d, daily 10d, weekly 4")
	want := Select(p, items, now, time.UTC)
	rev := slices.Clone(items)
	slices.Reverse(rev)
	got := Select(p, rev, now, time.UTC)
	slices.Reverse(got)
	for i := range want {
		if want[i].Keep != got[i].Keep || !slices.Equal(want[i].Reasons, got[i].Reasons) {
			t.Fatalf("version %d: in order %v %q, reversed %v %q", i, want[i].Keep, want[i].Reasons, got[i].Keep, got[i].Reasons)
		}
	}
}

func TestNoCompleteVersionKeepsTheNewest(t *testing.T) {
	base := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	items := []Item{{Time: base}, {Time: base.Add(time.Hour)}}
	got := Select(MustParse("all 1d"), items, base.AddDate(1, 0, 0), time.UTC)
	if got[0].Keep || !got[1].Keep || !slices.Equal(got[1].Reasons, []string{NewestVersion}) {
		t.Fatalf("got %+v", got)
	}
}

func TestParse(t *testing.T) {
	good := map[string]string{
		"all 7d, daily 30d, weekly 12w, monthly 12m, yearly 5y": "all 7d, daily 30d, weekly 12w, monthly 12m, yearly 5y",
		"yearly 5y,all 7d":          "all 7d, yearly 5y",
		" LAST 5 , Daily 7 ":        "last 5, daily 7",
		"all forever":               "all forever",
		"hourly 48h, monthly 1000m": "hourly 48h, monthly 1000m",
	}
	for in, want := range good {
		p, err := Parse(in)
		if err != nil {
			t.Errorf("Parse(%q): %v", in, err)
			continue
		}
		if p.String() != want {
			t.Errorf("Parse(%q) = %q, want %q", in, p, want)
		}
		if q, err := Parse(p.String()); err != nil || q.String() != p.String() {
			t.Errorf("round trip of %q: %q, %v", p, q, err)
		}
	}
	bad := map[string]string{
		"":                       "empty policy",
		"daily":                  "a kind and one argument",
		"daily 30d 2":            "a kind and one argument",
		"dayly 30d":              "unknown kind",
		"daily 30d, daily 7":     "appears twice",
		"daily 30x":              "one of h d w m y",
		"daily 0":                "use 1 to",
		"daily -3d":              "use 1 to",
		"daily 1001d":            "use 1 to 1000",
		"daily 99999999999999":   "use 1 to",
		"all 7":                  "write \"last 7\"",
		"last 7d":                "last takes a count",
		"last forever":           "last takes a count",
		strings.Repeat("a", 300): "over the 256-character limit",
		"daily 1d,":              "a kind and one argument",
		"all 1d, last 1, hourly 1, daily 1, weekly 1, monthly 1, yearly 1, daily 2": "appears twice",
	}
	for in, want := range bad {
		_, err := Parse(in)
		if err == nil || !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an ErrSyntax naming %q", in, err, want)
		}
	}
}

func TestJournalCutoff(t *testing.T) {
	now := time.Date(2026, 3, 31, 12, 0, 0, 0, time.UTC)
	cut, ok := MustParse("all 1m, yearly 1y").JournalCutoff(now, time.UTC)
	if !ok || !cut.Equal(time.Date(2026, 3, 3, 12, 0, 0, 0, time.UTC)) { // Feb 31 normalizes to Mar 3, as AddDate does
		t.Errorf("all 1m: cutoff %v %v", cut, ok)
	}
	if _, ok := MustParse("all forever").JournalCutoff(now, time.UTC); ok {
		t.Error("all forever: journal records must never age out")
	}
	if cut, ok := MustParse("daily 7").JournalCutoff(now, time.UTC); !ok || !cut.Equal(now) {
		t.Errorf("no all rule: cutoff %v %v, want now", cut, ok)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Default)
	f.Add("all 7d, daily 30d, weekly 12w, monthly 12m, yearly 5y")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := Parse(s)
		if err != nil {
			return
		}
		q, err := Parse(p.String())
		if err != nil || q.String() != p.String() {
			t.Fatalf("%q parses to %q which does not round-trip: %v", s, p, err)
		}
	})
}
