package catalog

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"vaultnode/appliance/jobs"
	"vaultnode/appliance/retention"
	"vaultnode/internal/schedule"
)

// The data lifecycle in the catalog: retention policies, pruning, and the
// history of background jobs (docs/retention.md, docs/jobs.md).

var (
	bRetention = []byte("retention")     // "c/" company or "v/" computer/config: RetentionRecord
	bJobs      = []byte("jobs")          // started (u64 BE Unix ns) + job id: jobs.Record
	bJobSched  = []byte("job_schedules") // job kind: JobSchedule
)

// Commands of the lifecycle.
const (
	KindSetRetention Kind = "set_retention"
	KindPrune        Kind = "prune"
	KindPutJob       Kind = "put_job"
	KindSetJobSched  Kind = "set_job_schedule"
)

// JobSchedule is when the vault starts a kind of job by itself: at the
// opening of each window of Schedule (internal/schedule syntax).
type JobSchedule struct {
	Kind     string    `json:"kind"`
	Schedule string    `json:"schedule"`
	Set      time.Time `json:"set"`
}

// MaxJobs is how many job records the history keeps; put_job drops the
// oldest finished ones beyond it.
const MaxJobs = 1000

// MaxPrune bounds the versions and journal records one prune command
// removes (it must fit one command); a prune over it removes the rest the
// next time.
const MaxPrune = 40000

// RetentionRecord is a retention policy set for a company (its default) or
// for one configuration.
type RetentionRecord struct {
	Company  string    `json:"company,omitempty"` // a company's default
	Computer string    `json:"computer,omitempty"`
	Config   string    `json:"config,omitempty"`
	Policy   string    `json:"policy"`
	Set      time.Time `json:"set"`
}

// VersionKey names a version.
type VersionKey struct {
	Computer string `json:"computer"`
	Config   string `json:"config"`
	Seq      uint64 `json:"seq"`
}

// JournalKey names a journal record.
type JournalKey struct {
	Computer string `json:"computer"`
	Config   string `json:"config"`
	Base     uint64 `json:"base"`
	N        uint64 `json:"n"`
}

// Payloads of the lifecycle commands.
type (
	// SetRetentionCmd sets (or, with an empty Policy, removes) the policy
	// of a company (Company set) or of a configuration (Computer and
	// Config set).
	SetRetentionCmd struct {
		Record RetentionRecord `json:"record"`
	}
	// PruneCmd removes versions and journal records, chosen before.
	PruneCmd struct {
		Versions []VersionKey `json:"versions"`
		Journal  []JournalKey `json:"journal"`
	}
	PutJobCmd struct {
		Job jobs.Record `json:"job"`
	}
	// SetJobScheduleCmd sets (an empty Schedule: removes, so the default
	// applies) when a kind of job runs.
	SetJobScheduleCmd struct {
		Schedule JobSchedule `json:"schedule"`
	}
)

// PruneResult is what a prune command removed.
type PruneResult struct {
	Versions int `json:"versions"`
	Journal  int `json:"journal"`
	Missing  int `json:"missing"` // named but already gone
	// HeldForTape: named, but its configuration is written to tape and
	// the version is not on tape yet, so it stays (docs/format.md).
	HeldForTape int `json:"held_for_tape,omitempty"`
}

// init adds the lifecycle's appliers to the table commands.go makes (a
// package-level variable, initialized before any init runs).
func init() {
	appliers[KindSetRetention] = typed(applySetRetention)
	appliers[KindPrune] = typed(applyPrune)
	appliers[KindPutJob] = typed(applyPutJob)
	appliers[KindSetJobSched] = typed(applySetJobSchedule)
}

func retentionKey(r RetentionRecord) ([]byte, error) {
	switch {
	case r.Company != "" && r.Computer == "" && r.Config == "":
		if err := ValidCompanyName(r.Company); err != nil {
			return nil, err
		}
		return []byte("c/" + r.Company), nil
	case r.Company == "" && r.Computer != "" && r.Config != "":
		if err := ValidComputerID(r.Computer); err != nil {
			return nil, err
		}
		if err := ValidConfigName(r.Config); err != nil {
			return nil, err
		}
		return []byte("v/" + r.Computer + "/" + r.Config), nil
	}
	return nil, fmt.Errorf("%w: a retention policy is set for a company or for a computer's configuration", ErrInvalid)
}

func applySetRetention(c *Catalog, tx *bbolt.Tx, p SetRetentionCmd) (any, error) {
	r := p.Record
	k, err := retentionKey(r)
	if err != nil {
		return nil, err
	}
	if r.Company != "" && tx.Bucket(bCompanies).Get([]byte(r.Company)) == nil {
		return nil, fmt.Errorf("company %q: %w", r.Company, ErrNotFound)
	}
	if r.Computer != "" && tx.Bucket(bComputers).Get([]byte(r.Computer)) == nil {
		return nil, fmt.Errorf("computer %q: %w", r.Computer, ErrNotFound)
	}
	if r.Policy == "" {
		return nil, tx.Bucket(bRetention).Delete(k)
	}
	pol, err := retention.Parse(r.Policy)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	r.Policy = pol.String()
	return nil, put(tx.Bucket(bRetention), bRetention, k, r)
}

func applyPrune(c *Catalog, tx *bbolt.Tx, p PruneCmd) (any, error) {
	if n := len(p.Versions) + len(p.Journal); n > MaxPrune {
		return nil, fmt.Errorf("%w: prune of %d versions and journal records is over the %d limit", ErrInvalid, n, MaxPrune)
	}
	var res PruneResult
	vb, jb := tx.Bucket(bVersions), tx.Bucket(bJournal)
	for _, v := range p.Versions {
		if ValidComputerID(v.Computer) != nil || ValidConfigName(v.Config) != nil {
			return nil, fmt.Errorf("%w: prune names version %s@%d of computer %q", ErrInvalid, v.Config, v.Seq, v.Computer)
		}
		if v.Seq == lastSeq(tx, v.Computer, v.Config) {
			return nil, fmt.Errorf("%w: prune would remove %s@%d, the newest version of %s: refused", ErrInvalid, v.Config, v.Seq, v.Computer)
		}
		k := verKey(v.Computer, v.Config, v.Seq)
		if vb.Get(k) == nil {
			res.Missing++
			continue
		}
		if heldForTape(tx, v.Computer, v.Config, v.Seq) {
			res.HeldForTape++
			continue
		}
		if err := vb.Delete(k); err != nil {
			return nil, err
		}
		res.Versions++
	}
	for _, j := range p.Journal {
		if ValidComputerID(j.Computer) != nil || ValidConfigName(j.Config) != nil {
			return nil, fmt.Errorf("%w: prune names journal record %s@%d+%d of computer %q", ErrInvalid, j.Config, j.Base, j.N, j.Computer)
		}
		k := journalKey(j.Computer, j.Config, j.Base, j.N)
		if jb.Get(k) == nil {
			res.Missing++
			continue
		}
		if err := jb.Delete(k); err != nil {
			return nil, err
		}
		res.Journal++
	}
	return res, nil
}

func jobKey(r jobs.Record) []byte {
	return append(binary.BigEndian.AppendUint64(nil, uint64(r.Started.UnixNano())), r.ID...)
}

func applyPutJob(c *Catalog, tx *bbolt.Tx, p PutJobCmd) (any, error) {
	r := p.Job
	if r.ID == "" || len(r.ID) > 64 || r.Kind == "" || len(r.Kind) > 64 || r.Started.IsZero() {
		return nil, fmt.Errorf("%w: job record needs an id and a kind of at most 64 bytes and a start time", ErrInvalid)
	}
	b := tx.Bucket(bJobs)
	if err := put(b, bJobs, jobKey(r), r); err != nil {
		return nil, err
	}
	// Keep the newest MaxJobs records; a running job's record stays.
	over := -MaxJobs
	cur := b.Cursor()
	for k, _ := cur.First(); k != nil; k, _ = cur.Next() {
		over++
	}
	var drop [][]byte
	for k, v := cur.First(); k != nil && len(drop) < over; k, v = cur.Next() {
		if old, err := decodeJob(k, v); err == nil && old.State == jobs.Running {
			continue
		}
		drop = append(drop, bytes.Clone(k))
	}
	for _, k := range drop {
		if err := b.Delete(k); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// ValidJobSchedule checks a job schedule: windows or "never" (a job
// starts at each window's opening, so 24x7 has no opening and is refused).
func ValidJobSchedule(s string) error {
	sc, err := schedule.Parse(s)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if sc.Always {
		return fmt.Errorf("%w: job schedule %q: a job starts when a window opens; give windows such as \"daily 01:00-05:00\" or never", ErrInvalid, s)
	}
	return nil
}

func applySetJobSchedule(c *Catalog, tx *bbolt.Tx, p SetJobScheduleCmd) (any, error) {
	js := p.Schedule
	if js.Kind == "" || len(js.Kind) > 64 {
		return nil, fmt.Errorf("%w: job kind %q", ErrInvalid, js.Kind)
	}
	if js.Schedule == "" {
		return nil, tx.Bucket(bJobSched).Delete([]byte(js.Kind))
	}
	if err := ValidJobSchedule(js.Schedule); err != nil {
		return nil, err
	}
	return nil, put(tx.Bucket(bJobSched), bJobSched, []byte(js.Kind), js)
}

func decodeJobSchedule(k, v []byte) (JobSchedule, error) {
	var js JobSchedule
	if err := decodeJSON(bJobSched, k, v, &js); err != nil {
		return js, err
	}
	if js.Kind != string(k) {
		return js, corrupt(bJobSched, k, "record is of job kind %q", js.Kind)
	}
	if err := ValidJobSchedule(js.Schedule); err != nil {
		return js, corrupt(bJobSched, k, "%v", err)
	}
	return js, nil
}

func decodeRetention(k, v []byte) (RetentionRecord, error) {
	var r RetentionRecord
	if err := decodeJSON(bRetention, k, v, &r); err != nil {
		return r, err
	}
	want, err := retentionKey(r)
	if err != nil || !bytes.Equal(want, k) {
		return r, corrupt(bRetention, k, "record is for company %q, computer %q, configuration %q", r.Company, r.Computer, r.Config)
	}
	if _, err := retention.Parse(r.Policy); err != nil {
		return r, corrupt(bRetention, k, "%v", err)
	}
	return r, nil
}

func decodeJob(k, v []byte) (jobs.Record, error) {
	var r jobs.Record
	if err := decodeJSON(bJobs, k, v, &r); err != nil {
		return r, err
	}
	if !bytes.Equal(jobKey(r), k) {
		return r, corrupt(bJobs, k, "record is of job %q started %s", r.ID, r.Started)
	}
	return r, nil
}

// ---- Changes ----

// SetRetention sets the policy of a company (computer and config empty) or
// of a configuration (company empty); an empty policy removes it, so the
// next level's applies. now stamps the record.
func (c *Catalog) SetRetention(r RetentionRecord) error {
	_, err := c.apply(KindSetRetention, SetRetentionCmd{Record: r})
	return err
}

// Prune removes versions and journal records in one command; it refuses
// to remove the newest version of a configuration.
func (c *Catalog) Prune(p PruneCmd) (PruneResult, error) {
	res, err := c.apply(KindPrune, p)
	if err != nil {
		return PruneResult{}, err
	}
	return res.(PruneResult), nil
}

// PutJob records a job (jobs.History).
func (c *Catalog) PutJob(r jobs.Record) error {
	_, err := c.apply(KindPutJob, PutJobCmd{Job: r})
	return err
}

// SetJobSchedule sets when a kind of job runs by itself.
func (c *Catalog) SetJobSchedule(js JobSchedule) error {
	_, err := c.apply(KindSetJobSched, SetJobScheduleCmd{Schedule: js})
	return err
}

// ---- Reads ----

// JobSchedules returns the schedules set, by kind.
func (c *Catalog) JobSchedules() (map[string]JobSchedule, error) {
	out := map[string]JobSchedule{}
	err := c.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bJobSched).ForEach(func(k, v []byte) error {
			js, err := decodeJobSchedule(k, v)
			if err != nil {
				return c.skip(err)
			}
			out[js.Kind] = js
			return nil
		})
	})
	return out, err
}

// Retentions lists every policy set, companies' first.
func (c *Catalog) Retentions() ([]RetentionRecord, error) {
	var out []RetentionRecord
	err := c.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bRetention).ForEach(func(k, v []byte) error {
			r, err := decodeRetention(k, v)
			if err != nil {
				return c.skip(err)
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}

// Jobs lists the job history, oldest first (jobs.History).
func (c *Catalog) Jobs() ([]jobs.Record, error) {
	var out []jobs.Record
	err := c.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bJobs).ForEach(func(k, v []byte) error {
			r, err := decodeJob(k, v)
			if err != nil {
				return c.skip(err)
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}
