package vault

import (
	"fmt"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/schedule"
	"vaultnode/internal/wire"
)

// States of a configuration, as an operator sees them.
const (
	StateTesting   = "testing configuration and initial synchronization" // its first 24 hours
	StateInitial   = "initial synchronization"                           // no complete version yet, after 24 hours
	StateProtected = "protected"
	StateBehind    = "behind schedule"
	StateError     = "error"
	StateOffline   = "offline"
)

// Timing of the status rules.
const (
	TestingPeriod = 24 * time.Hour
	OfflineAfter  = 15 * time.Minute
)

// ConfigStatus is the state of one configuration, derived from the catalog:
// committed versions and journal records, the configuration, and the
// agent's last report.
type ConfigStatus struct {
	Company  string    `json:"company"`
	Computer string    `json:"computer"`
	Name     string    `json:"computer_name"`
	Config   string    `json:"config"`
	Mode     string    `json:"mode"`
	State    string    `json:"state"`
	Detail   string    `json:"detail,omitempty"`
	Covers   time.Time `json:"covers,omitzero"` // the moment the newest restorable state covers
	LastSeen time.Time `json:"last_seen,omitzero"`
	Versions int       `json:"versions"`
	Capture  string    `json:"capture,omitempty"` // continuous mode: the change capture in use and its limits
	// Protected is the logical size of the newest complete version's files.
	Protected int64 `json:"protected_bytes"`
	// NextRun is when the next synchronization is due: one interval after
	// what the newest state covers, or the next opening of the schedule
	// after that (now, before any complete version).
	NextRun   time.Time `json:"next_run,omitzero"`
	Bandwidth string    `json:"bandwidth,omitempty"` // the computer's upload limit profile; empty: unlimited
	// Warnings are what the testing period's examination found for a
	// person to look at (testing.go): kept after the period too.
	Warnings []string `json:"warnings,omitempty"`
}

// statusBatch is how many computers one read transaction of a status
// covers: few transactions, yet none held long while rows are written out.
const statusBatch = 500

// Status computes the state of every configuration (of one company, or all).
func (v *Vault) Status(company string) ([]ConfigStatus, error) {
	out := []ConfigStatus{}
	err := v.statusEach(company, func(rows []ConfigStatus) error {
		out = append(out, rows...)
		return nil
	})
	return out, err
}

// statusEach computes the state of every configuration (of one company, or
// all) and hands the rows to fn a batch of computers at a time, each batch
// read in one transaction, so an answer can start before the last row.
func (v *Vault) statusEach(company string, fn func(rows []ConfigStatus) error) error {
	cps, err := v.Catalog.Computers(company)
	if err != nil {
		return err
	}
	now := v.clk.Now()
	var rows []ConfigStatus
	for len(cps) > 0 {
		batch := cps[:min(len(cps), statusBatch)]
		cps = cps[len(batch):]
		rows = rows[:0]
		err := v.Catalog.Read(func(r *catalog.Reader) error {
			for _, cp := range batch {
				if cp.Revoked != nil {
					continue
				}
				for _, cfg := range r.Configs(cp.ID) {
					st, err := v.configStatusIn(r, cp, cfg, now)
					if err != nil {
						return err
					}
					rows = append(rows, st)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if err := fn(rows); err != nil {
			return err
		}
	}
	return nil
}

func (v *Vault) configStatus(cp catalog.Computer, cfg wire.Config, now time.Time) (st ConfigStatus, err error) {
	err = v.Catalog.Read(func(r *catalog.Reader) error {
		st, err = v.configStatusIn(r, cp, cfg, now)
		return err
	})
	return st, err
}

func (v *Vault) configStatusIn(r *catalog.Reader, cp catalog.Computer, cfg wire.Config, now time.Time) (ConfigStatus, error) {
	st := ConfigStatus{Company: cp.Company, Computer: cp.ID, Name: cp.Name, Config: cfg.Name, Mode: cfg.Mode, LastSeen: cp.LastSeen,
		Bandwidth: cp.Settings.Bandwidth}
	count, newest, last := r.VersionSummary(cp.ID, cfg.Name) // last: the newest complete version
	st.Versions = count
	if last != nil {
		st.Protected = last.Totals.Bytes
		st.Covers = last.Started
		if newest.Seq == last.Seq {
			if j, ok := r.LastJournal(cp.ID, cfg.Name, last.Seq); ok {
				st.Covers = j.Time
			}
		}
	}
	st.NextRun = nextRun(cfg, st.Covers, now)
	rep, err := r.Report(cp.ID, cfg.Name)
	if err != nil {
		return st, err
	}
	st.Capture = rep.Capture
	if v.notes != nil {
		st.Warnings = v.notes.warningsOf(cp.ID, cfg.Name)
	}
	seen := cp.LastSeen
	if seen.IsZero() {
		seen = cp.Enrolled
	}
	created := cfg.Created
	if created.IsZero() {
		created = cp.Enrolled
	}
	switch {
	case now.Sub(seen) > OfflineAfter:
		st.State = StateOffline
		st.Detail = fmt.Sprintf("no contact since %s", seen.UTC().Format(time.RFC3339))
	case rep.State == wire.AgentError:
		st.State, st.Detail = StateError, rep.Reason
	case now.Sub(created) < TestingPeriod:
		st.State = StateTesting
		if last != nil {
			st.Detail = "a complete version exists; the configuration is being tested for its first 24 hours"
		}
	case last == nil:
		st.State = StateInitial
		if count > 0 {
			st.Detail = fmt.Sprintf("%d version(s), none complete: some files could not be read", count)
		}
	default:
		st.State = StateProtected
		if due, late := overdue(cfg, st.Covers, now); late {
			st.State = StateBehind
			st.Detail = fmt.Sprintf("a synchronization was due by %s", due.UTC().Format(time.RFC3339))
		}
	}
	if st.State == StateOffline && last == nil && now.Sub(created) < TestingPeriod {
		st.Detail += "; the initial synchronization has not completed"
	}
	return st, nil
}

// nextRun is when cfg's next synchronization is due: one interval after
// covers (now when nothing is covered yet), moved to the next opening of its
// schedule.
func nextRun(cfg wire.Config, covers, now time.Time) time.Time {
	due := now
	if !covers.IsZero() {
		due = covers.Add(cfg.SyncInterval())
	}
	s, err := schedule.Parse(cfg.Schedule)
	if err != nil {
		return due
	}
	if start, _ := s.Next(due); !start.IsZero() && start.After(due) {
		due = start
	}
	return due
}

// overdue says whether a configuration whose newest state covers covers
// should have a newer one by now: the next synchronization is due one
// interval later, or at the first opening of its schedule after that, plus
// the same again as grace.
func overdue(cfg wire.Config, covers, now time.Time) (time.Time, bool) {
	iv := cfg.SyncInterval()
	s, err := schedule.Parse(cfg.Schedule)
	if err != nil {
		s = schedule.Always24x7
	}
	due := covers.Add(iv)
	if start, _ := s.Next(due); !start.IsZero() && start.After(due) {
		due = start
	}
	grace := iv
	if cfg.Mode == wire.ModeContinuous {
		grace = 2 * iv
	}
	return due.Add(grace), now.After(due.Add(grace))
}
