package vault

import (
	"context"
	"net/http"
	"sort"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/jobs"
	"vaultnode/appliance/tape"
	"vaultnode/internal/schedule"
	"vaultnode/internal/wire"
)

// The vault's own schedule: each kind of job starts at the opening of each
// window of its schedule (internal/schedule), in the vault's time zone. A
// window the vault was down for is caught up if the vault starts inside
// it and no job of the kind started since it opened, provided the kind ran
// before: a new vault waits for the next opening.

// DefaultJobSchedules: prune and collection nightly, verify weekly.
var DefaultJobSchedules = map[jobs.Kind]string{
	jobs.KindPrune:   "daily 01:00-05:00",
	jobs.KindCollect: "daily 02:00-06:00",
	jobs.KindVerify:  "sun 03:00-09:00",
	tape.KindTape:    DefaultTapeSchedule, // registered only with a library
}

// JobScheduleRequest sets when a kind of job runs ("default" or "" goes
// back to the default, "never" stops it).
type JobScheduleRequest struct {
	Kind     jobs.Kind `json:"kind"`
	Schedule string    `json:"schedule"`
}

// JobScheduleInfo is one kind's schedule.
type JobScheduleInfo struct {
	Kind     jobs.Kind    `json:"kind"`
	Schedule string       `json:"schedule"`
	Default  bool         `json:"default"`
	Next     time.Time    `json:"next,omitzero"` // the next start
	Last     *jobs.Record `json:"last,omitempty"`
}

// SetJobSchedule sets when a kind of job runs by itself.
func (v *Vault) SetJobSchedule(ctx context.Context, p *Principal, req JobScheduleRequest) error {
	if !p.Has(CapOperate) || p.Kind == Agent {
		return forbid(p, CapOperate)
	}
	known := false
	for _, k := range v.Jobs.Kinds() {
		known = known || k == req.Kind
	}
	if !known {
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "unknown job kind %q: the vault runs %v", req.Kind, v.Jobs.Kinds())
	}
	s := req.Schedule
	if s == "default" {
		s = ""
	}
	if err := v.Catalog.SetJobSchedule(catalog.JobSchedule{Kind: string(req.Kind), Schedule: s, Set: v.clk.Now()}); err != nil {
		return catalogErr(err)
	}
	select {
	case v.schedPoke <- struct{}{}:
	default:
	}
	return nil
}

// jobSchedules returns each registered kind's schedule.
func (v *Vault) jobSchedules() (map[jobs.Kind]schedule.Schedule, map[jobs.Kind]JobScheduleInfo, error) {
	set, err := v.Catalog.JobSchedules()
	if err != nil {
		return nil, nil, err
	}
	out, info := map[jobs.Kind]schedule.Schedule{}, map[jobs.Kind]JobScheduleInfo{}
	for _, k := range v.Jobs.Kinds() {
		text, def := set[string(k)].Schedule, false
		if text == "" {
			text, def = DefaultJobSchedules[k], true
		}
		if text == "" {
			text = "never"
		}
		s, err := schedule.Parse(text)
		if err != nil {
			v.log.Error("job schedule does not parse: the kind does not run by itself", zap.String("kind", string(k)), zap.Error(err))
			continue
		}
		if s.Loc == nil {
			s.Loc = v.zone()
		}
		out[k] = s
		info[k] = JobScheduleInfo{Kind: k, Schedule: text, Default: def}
	}
	return out, info, nil
}

// JobSchedules lists each kind's schedule, next start and last run.
func (v *Vault) JobSchedules(ctx context.Context, p *Principal) ([]JobScheduleInfo, error) {
	if !p.Has(CapOperate) {
		return nil, forbid(p, CapOperate)
	}
	scheds, info, err := v.jobSchedules()
	if err != nil {
		return nil, err
	}
	now := v.clk.Now()
	var out []JobScheduleInfo
	for k, s := range scheds {
		in := info[k]
		in.Next = nextStart(s, now)
		if last, ok, err := v.Jobs.Last(k); err == nil && ok {
			in.Last = &last
		}
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Kind < out[j].Kind })
	return out, nil
}

// nextStart is the first window opening after now (zero: never).
func nextStart(s schedule.Schedule, now time.Time) time.Time {
	iv, ok := s.At(now)
	if !ok {
		return time.Time{}
	}
	if iv.Start.After(now) {
		return iv.Start
	}
	if iv.End.IsZero() {
		return time.Time{}
	}
	nx, ok := s.At(iv.End)
	if !ok {
		return time.Time{}
	}
	return nx.Start
}

// due reports whether a job of kind should start at now: now is inside a
// window of s and no job of the kind started since that window opened;
// for a kind that never ran, only if the schedule has been watching since
// before the window opened (since).
func (v *Vault) due(kind jobs.Kind, s schedule.Schedule, now, since time.Time) bool {
	iv, ok := s.At(now)
	if !ok || !iv.Contains(now) || iv.End.IsZero() {
		return false
	}
	last, ok, err := v.Jobs.Last(kind)
	if err != nil {
		v.log.Error("read job history", zap.Error(err))
		return false
	}
	if !ok {
		return !since.After(iv.Start)
	}
	return last.Started.Before(iv.Start)
}

// runSchedule starts scheduled jobs until ctx is done.
func (v *Vault) runSchedule(ctx context.Context) {
	log := v.log.Named("schedule")
	since := v.clk.Now()
	for {
		scheds, _, err := v.jobSchedules()
		if err != nil {
			log.Error("read job schedules", zap.Error(err))
		}
		now := v.clk.Now()
		wake := now.Add(time.Hour) // a bound: schedules in other zones, clock changes
		for k, s := range scheds {
			if v.due(k, s, now, since) {
				if rec, err := v.Jobs.Start(k, "schedule"); err != nil {
					log.Warn("scheduled job not started", zap.String("kind", string(k)), zap.Error(err))
				} else {
					log.Info("scheduled job started", zap.String("job", rec.ID))
					if v.opts.onScheduled != nil {
						v.opts.onScheduled(rec)
					}
				}
			}
			if n := nextStart(s, now); !n.IsZero() && n.Before(wake) {
				wake = n
			}
		}
		// A timer for wake itself: a clock that passed it meanwhile (a
		// jump, or a fake clock set by a test) fires it at once.
		t := v.clk.NewTimerAt(wake)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-v.schedPoke:
			t.Stop()
		case <-t.C():
		}
	}
}
