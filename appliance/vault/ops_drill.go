package vault

import (
	"context"
	"slices"
	"time"

	"vaultnode/internal/wire"
)

// Drilling into a computer (issue 12): its identity and contact, each
// configuration with its state, the agent's last report (warnings and
// errors), and the timeline of its versions with the journal records of a
// continuous configuration.

// MaxTimeline bounds the versions a drill-down lists per configuration
// (the newest), and the journal records per version.
const MaxTimeline = 100

// ComputerDetail is a computer as its page shows it.
type ComputerDetail struct {
	ID        string           `json:"id"`
	Name      string           `json:"name"`
	Company   string           `json:"company"`
	Enrolled  time.Time        `json:"enrolled"`
	Revoked   *time.Time       `json:"revoked,omitempty"`
	LastSeen  time.Time        `json:"last_seen,omitzero"`
	Contact   string           `json:"contact,omitempty"`
	Bandwidth string           `json:"bandwidth,omitempty"`
	Configs   []ConfigTimeline `json:"configs"`
}

// ConfigTimeline is one configuration: what it is, its state, the agent's
// last report, and its newest versions, newest first.
type ConfigTimeline struct {
	Config   wire.Config     `json:"config"`
	Status   ConfigStatus    `json:"status"`
	Report   *wire.Report    `json:"report,omitempty"`
	Versions []TimelineEntry `json:"versions"`
	// AllVersions counts every version; Versions holds the newest
	// MaxTimeline.
	AllVersions int `json:"all_versions"`
}

// TimelineEntry is a version and the journal records on top of it.
type TimelineEntry struct {
	Seq      uint64         `json:"seq"`
	Started  time.Time      `json:"started"`
	Finished time.Time      `json:"finished"`
	Totals   wire.Totals    `json:"totals"`
	Complete bool           `json:"complete"`
	Journal  []JournalEntry `json:"journal,omitempty"` // the newest MaxTimeline, oldest first
	// AllJournal counts every journal record on top of the version.
	AllJournal int `json:"all_journal,omitempty"`
}

// JournalEntry is one journal record of a continuous configuration.
type JournalEntry struct {
	N      uint64      `json:"n"`
	Time   time.Time   `json:"time"`
	Totals wire.Totals `json:"totals"`
}

// ComputerDetail reads what the page of computer ref shows.
func (v *Vault) ComputerDetail(ctx context.Context, p *Principal, ref string) (ComputerDetail, error) {
	cp, err := v.computerFor(p, CapView, ref)
	if err != nil {
		return ComputerDetail{}, err
	}
	out := ComputerDetail{ID: cp.ID, Name: cp.Name, Company: cp.Company, Enrolled: cp.Enrolled, Revoked: cp.Revoked,
		LastSeen: cp.LastSeen, Contact: cp.Contact, Bandwidth: cp.Settings.Bandwidth, Configs: []ConfigTimeline{}}
	cfgs, err := v.Catalog.Configs(cp.ID)
	if err != nil {
		return out, err
	}
	now := v.clk.Now()
	for _, cfg := range cfgs {
		ct := ConfigTimeline{Config: cfg, Versions: []TimelineEntry{}}
		if ct.Status, err = v.configStatus(cp, cfg, now); err != nil {
			return out, err
		}
		rep, err := v.Catalog.Report(cp.ID, cfg.Name)
		if err != nil {
			return out, err
		}
		if !rep.Time.IsZero() {
			ct.Report = &rep
		}
		ms, err := v.Catalog.Versions(cp.ID, cfg.Name)
		if err != nil {
			return out, err
		}
		ct.AllVersions = len(ms)
		for _, m := range slices.Backward(ms[max(0, len(ms)-MaxTimeline):]) {
			te := TimelineEntry{Seq: m.Seq, Started: m.Started, Finished: m.Finished, Totals: m.Totals, Complete: m.Complete()}
			if cfg.Mode == "continuous" {
				js, err := v.Catalog.Journal(cp.ID, cfg.Name, m.Seq)
				if err != nil {
					return out, err
				}
				te.AllJournal = len(js)
				for _, j := range js[max(0, len(js)-MaxTimeline):] {
					te.Journal = append(te.Journal, JournalEntry{N: j.N, Time: j.Time, Totals: j.Totals})
				}
			}
			ct.Versions = append(ct.Versions, te)
		}
		out.Configs = append(out.Configs, ct)
	}
	return out, nil
}
