package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/jobs"
	"vaultnode/appliance/retention"
	"vaultnode/internal/wire"
)

// The data lifecycle: retention policies, pruning and background jobs
// (docs/retention.md, docs/jobs.md). Only a principal with
// CapManageRetention sets policies or prunes; no agent holds it.

// RetentionRequest sets the policy of a company (Company) or of one
// configuration (Computer and Config). Policy "default" (or "") removes
// it, so the next level's applies.
type RetentionRequest struct {
	Company  string `json:"company,omitempty"`
	Computer string `json:"computer,omitempty"`
	Config   string `json:"config,omitempty"`
	Policy   string `json:"policy"`
}

// RetentionInfo lists the vault's default and every policy set.
type RetentionInfo struct {
	Default string                    `json:"default"`
	Zone    string                    `json:"zone"` // time zone of the calendar buckets
	Set     []catalog.RetentionRecord `json:"set"`
}

// SetRetention sets or removes a retention policy.
func (v *Vault) SetRetention(ctx context.Context, p *Principal, req RetentionRequest) error {
	rec := catalog.RetentionRecord{Policy: req.Policy, Set: v.clk.Now()}
	if rec.Policy == "default" {
		rec.Policy = ""
	}
	if rec.Policy != "" {
		if _, err := retention.Parse(rec.Policy); err != nil {
			return fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
		}
	}
	switch {
	case req.Computer != "" && req.Config != "" && req.Company == "":
		cp, err := v.computerFor(p, CapManageRetention, req.Computer)
		noteTarget(ctx, cp.Company, cp.ID)
		if err != nil {
			return err
		}
		if err := catalog.ValidConfigName(req.Config); err != nil {
			return catalogErr(err)
		}
		rec.Computer, rec.Config = cp.ID, req.Config
	case req.Company != "" && req.Computer == "" && req.Config == "":
		co, err := companyFor(p, CapManageRetention, req.Company, true)
		noteTarget(ctx, co, "")
		if err != nil {
			return err
		}
		rec.Company = co
	default:
		return fail(http.StatusBadRequest, wire.CodeBadRequest, "set a retention policy for a company, or for a computer and one of its configurations")
	}
	return catalogErr(v.Catalog.SetRetention(rec))
}

// Retention lists the policies set.
func (v *Vault) Retention(ctx context.Context, p *Principal) (RetentionInfo, error) {
	if !p.Has(CapManageRetention) {
		return RetentionInfo{}, forbid(p, CapManageRetention)
	}
	recs, err := v.Catalog.Retentions()
	if err != nil {
		return RetentionInfo{}, err
	}
	out := RetentionInfo{Default: retention.Default, Zone: v.zoneName(), Set: []catalog.RetentionRecord{}}
	for _, r := range recs {
		if p.Kind == Operator || r.Company == p.Company {
			out.Set = append(out.Set, r)
		}
	}
	return out, nil
}

// zone is the time zone of retention's calendar buckets: the vault's own.
func (v *Vault) zone() *time.Location {
	if v.opts.Zone != nil {
		return v.opts.Zone
	}
	return time.Local
}

// zoneName names the zone for people: "Europe/Paris", or "local time
// (CET)" for the vault's own.
func (v *Vault) zoneName() string {
	loc := v.zone()
	if loc == time.Local {
		abbrev, _ := v.clk.Now().In(loc).Zone()
		return "local time (" + abbrev + ")"
	}
	return loc.String()
}

// NotYetOnTape is why a version retention would remove stays: its
// configuration is written to tape and it is not on tape yet.
const NotYetOnTape = "not yet on tape"

// PlanVersion is one version in a prune plan.
type PlanVersion struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Complete bool      `json:"complete"`
	Keep     bool      `json:"keep"`
	Reasons  []string  `json:"reasons,omitempty"` // the rules that keep it
}

// PlanJournal is a journal record a prune removes, and why.
type PlanJournal struct {
	Base uint64    `json:"base"`
	N    uint64    `json:"n"`
	Time time.Time `json:"time"`
	Why  string    `json:"why"`
}

// PlanConfig is the plan for one configuration.
type PlanConfig struct {
	Company  string        `json:"company"`
	Computer string        `json:"computer"`
	Config   string        `json:"config"`
	Policy   string        `json:"policy"`
	Source   string        `json:"source"` // "configuration", "company" or "vault default"
	Versions []PlanVersion `json:"versions"`
	Journal  []PlanJournal `json:"journal"` // the records that go
}

// PrunePlan is what a prune removes and keeps, and why.
type PrunePlan struct {
	Now     time.Time    `json:"now"`
	Zone    string       `json:"zone"`
	Configs []PlanConfig `json:"configs"`
	Remove  int          `json:"remove"`  // versions
	Journal int          `json:"journal"` // journal records
	Keep    int          `json:"keep"`
	// Truncated: more than catalog.MaxPrune items would go; this prune
	// removes the first ones and the next removes the rest.
	Truncated bool `json:"truncated,omitempty"`
}

// PruneResult is a prune job's result.
type PruneResult struct {
	Plan    PrunePlan           `json:"plan"`
	Removed catalog.PruneResult `json:"removed"`
}

// PlanPrune works out what a prune removes now (vaultctl prune --dry-run).
func (v *Vault) PlanPrune(ctx context.Context, p *Principal) (*PrunePlan, error) {
	if !p.Has(CapManageRetention) {
		return nil, forbid(p, CapManageRetention)
	}
	plan, _, err := v.planPrune(ctx)
	if err != nil || p.Kind == Operator {
		return plan, err
	}
	// Anyone else sees the configurations of their scope only.
	mine := plan.Configs[:0]
	for _, pc := range plan.Configs {
		if p.Covers(pc.Company, pc.Computer) {
			mine = append(mine, pc)
		}
	}
	plan.Configs = mine
	plan.Remove, plan.Journal, plan.Keep = 0, 0, 0
	for _, pc := range mine {
		plan.Journal += len(pc.Journal)
		for _, pv := range pc.Versions {
			if pv.Keep {
				plan.Keep++
			} else {
				plan.Remove++
			}
		}
	}
	return plan, nil
}

func versionTime(m wire.Manifest) time.Time {
	if !m.Started.IsZero() {
		return m.Started
	}
	return m.Finished
}

// planPrune applies each configuration's policy to its versions and
// journal records, and builds the one prune command.
func (v *Vault) planPrune(ctx context.Context) (*PrunePlan, catalog.PruneCmd, error) {
	var cmd catalog.PruneCmd
	now, loc := v.clk.Now(), v.zone()
	plan := &PrunePlan{Now: now, Zone: v.zoneName(), Configs: []PlanConfig{}}
	recs, err := v.Catalog.Retentions()
	if err != nil {
		return nil, cmd, err
	}
	byCompany, byConfig := map[string]string{}, map[string]string{}
	for _, r := range recs {
		if r.Company != "" {
			byCompany[r.Company] = r.Policy
		} else {
			byConfig[r.Computer+"/"+r.Config] = r.Policy
		}
	}
	type group struct {
		company, computer, config string
		versions                  []wire.Manifest
		journal                   []wire.Journal
	}
	groups := map[string]*group{}
	var order []string
	get := func(computer, config string) *group {
		k := computer + "/" + config
		g := groups[k]
		if g == nil {
			g = &group{computer: computer, config: config}
			groups[k] = g
			order = append(order, k)
		}
		return g
	}
	err = v.Catalog.AllVersionRecords(func(ver catalog.Version) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		m := ver.Manifest
		m.Listing = nil // the plan needs no listing
		g := get(m.Computer, m.Config)
		g.company = m.Company
		g.versions = append(g.versions, m)
		return nil
	})
	if err != nil {
		return nil, cmd, err
	}
	err = v.Catalog.AllJournal(func(computer, config string, j wire.Journal) error {
		j.Listing = nil
		g := get(computer, config)
		g.journal = append(g.journal, j)
		return nil
	})
	if err != nil {
		return nil, cmd, err
	}
	sort.Strings(order)
	full := false
	add := func() bool {
		if len(cmd.Versions)+len(cmd.Journal) >= catalog.MaxPrune {
			full = true
			return false
		}
		return true
	}
	for _, k := range order {
		g := groups[k]
		if g.company == "" { // journal records only: find the company
			if cp, err := v.Catalog.Computer(g.computer); err == nil {
				g.company = cp.Company
			}
		}
		pc := PlanConfig{Company: g.company, Computer: g.computer, Config: g.config, Versions: []PlanVersion{}, Journal: []PlanJournal{}}
		switch {
		case byConfig[k] != "":
			pc.Policy, pc.Source = byConfig[k], "configuration"
		case byCompany[g.company] != "":
			pc.Policy, pc.Source = byCompany[g.company], "company"
		default:
			pc.Policy, pc.Source = retention.Default, "vault default"
		}
		pol, err := retention.Parse(pc.Policy)
		if err != nil { // the catalog checked it: damage
			return nil, cmd, fmt.Errorf("retention policy of %s: %w", k, err)
		}
		items := make([]retention.Item, len(g.versions))
		for i, m := range g.versions {
			items[i] = retention.Item{Time: versionTime(m), Complete: m.Complete()}
		}
		decided := retention.Select(pol, items, now, loc)
		if pool, err := v.Catalog.TapePoolOf(g.company, g.computer, g.config); err != nil {
			return nil, cmd, err
		} else if pool != "" {
			for i, m := range g.versions {
				if decided[i].Keep {
					continue
				}
				on, err := v.Catalog.OnTape(g.computer, g.config, m.Seq)
				if err != nil {
					return nil, cmd, err
				}
				if !on {
					decided[i].Keep = true
					decided[i].Reasons = append(decided[i].Reasons, NotYetOnTape)
				}
			}
		}
		kept := map[uint64]bool{}
		next := map[uint64]time.Time{} // seq -> time of the version after it
		for i, m := range g.versions {
			d := decided[i]
			pc.Versions = append(pc.Versions, PlanVersion{Seq: m.Seq, Time: items[i].Time, Complete: items[i].Complete, Keep: d.Keep, Reasons: d.Reasons})
			if i+1 < len(g.versions) {
				next[m.Seq] = items[i+1].Time
			}
			if d.Keep {
				kept[m.Seq] = true
				plan.Keep++
			} else if add() {
				cmd.Versions = append(cmd.Versions, catalog.VersionKey{Computer: g.computer, Config: g.config, Seq: m.Seq})
				plan.Remove++
			}
		}
		cut, ages := pol.JournalCutoff(now, loc)
		for _, j := range g.journal {
			why := ""
			nt, hasNext := next[j.Base]
			switch {
			case !kept[j.Base]:
				why = fmt.Sprintf("its base version %s@%d goes", g.config, j.Base)
			case ages && hasNext && !nt.After(cut):
				why = fmt.Sprintf("the next checkpoint after %s@%d (%s) aged out of the all rule", g.config, j.Base, nt.In(loc).Format(time.DateTime))
			}
			if why == "" || !add() {
				continue
			}
			pc.Journal = append(pc.Journal, PlanJournal{Base: j.Base, N: j.N, Time: j.Time, Why: why})
			cmd.Journal = append(cmd.Journal, catalog.JournalKey{Computer: g.computer, Config: g.config, Base: j.Base, N: j.N})
			plan.Journal++
		}
		plan.Configs = append(plan.Configs, pc)
	}
	plan.Truncated = full
	return plan, cmd, nil
}

// pruneJob is the prune job: plan, then one prune command.
func (v *Vault) pruneJob(ctx context.Context, prog *jobs.Progress) (any, error) {
	plan, cmd, err := v.planPrune(ctx)
	if err != nil {
		return nil, err
	}
	prog.SetTotals(int64(len(cmd.Versions)+len(cmd.Journal)), 0)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res := &PruneResult{Plan: *plan}
	res.Plan.Configs = nil // the history keeps the counts, not every version
	if len(cmd.Versions)+len(cmd.Journal) > 0 {
		if res.Removed, err = v.Catalog.Prune(cmd); err != nil {
			return nil, fmt.Errorf("prune the catalog: %w", err)
		}
	}
	prog.Add(int64(res.Removed.Versions+res.Removed.Journal), 0)
	return res, nil
}

// verifyJob is the verify job; its result is the Report.
func (v *Vault) verifyJob(ctx context.Context, prog *jobs.Progress) (any, error) {
	return v.VerifyProgress(ctx, prog)
}

// jobCap is the capability that starting a kind of job needs.
func jobCap(kind jobs.Kind) Capability {
	if kind == jobs.KindPrune {
		return CapManageRetention
	}
	return CapOperate
}

// StartJobRequest starts a job.
type StartJobRequest struct {
	Kind jobs.Kind `json:"kind"`
}

// StartJobResponse is the job started, or the one of its kind already
// running (Running true).
type StartJobResponse struct {
	Job     jobs.View `json:"job"`
	Running bool      `json:"already_running,omitempty"`
}

// StartJob starts a job of kind, or answers the one of that kind already
// running.
func (v *Vault) StartJob(ctx context.Context, p *Principal, kind jobs.Kind) (StartJobResponse, error) {
	need := jobCap(kind)
	if !p.Has(need) || p.Kind == Agent {
		return StartJobResponse{}, forbid(p, need)
	}
	rec, err := v.Jobs.Start(kind, p.String())
	switch {
	case errors.Is(err, jobs.ErrBusy):
		view, gerr := v.Jobs.Get(rec.ID)
		if gerr != nil {
			return StartJobResponse{}, gerr
		}
		return StartJobResponse{Job: view, Running: true}, nil
	case errors.Is(err, jobs.ErrUnknownKind):
		return StartJobResponse{}, fail(http.StatusBadRequest, wire.CodeBadRequest, "%v: the vault runs %v", err, v.Jobs.Kinds())
	case err != nil:
		return StartJobResponse{}, err
	}
	view, err := v.Jobs.Get(rec.ID)
	return StartJobResponse{Job: view}, err
}

// ListJobs lists the job history with the running jobs' progress.
func (v *Vault) ListJobs(ctx context.Context, p *Principal) ([]jobs.View, error) {
	if !p.Has(CapOperate) {
		return nil, forbid(p, CapOperate)
	}
	return v.Jobs.List()
}

// ShowJob returns one job.
func (v *Vault) ShowJob(ctx context.Context, p *Principal, id string) (jobs.View, error) {
	if !p.Has(CapOperate) {
		return jobs.View{}, forbid(p, CapOperate)
	}
	view, err := v.Jobs.Get(id)
	if errors.Is(err, jobs.ErrNotFound) {
		return view, fail(http.StatusNotFound, wire.CodeNotFound, "%v: `vaultctl jobs` lists them", err)
	}
	return view, err
}

// CancelJob cancels a running job.
func (v *Vault) CancelJob(ctx context.Context, p *Principal, id string) (jobs.View, error) {
	if !p.Has(CapOperate) {
		return jobs.View{}, forbid(p, CapOperate)
	}
	if _, err := v.Jobs.Cancel(id); errors.Is(err, jobs.ErrNotFound) {
		return jobs.View{}, fail(http.StatusNotFound, wire.CodeNotFound, "%v: `vaultctl jobs` lists them", err)
	} else if err != nil {
		return jobs.View{}, err
	}
	return v.Jobs.Get(id)
}
