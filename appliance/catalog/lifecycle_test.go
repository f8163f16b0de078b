package catalog

import (
	"errors"
	"testing"
	"time"

	"vaultnode/appliance/jobs"
	"vaultnode/internal/clock"
	"vaultnode/internal/wire"
)

func TestRetentionAndPrune(t *testing.T) {
	start := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	c, err := Open(t.TempDir(), Options{Clock: clock.NewFake(start)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	enrolled(t, c, start, "pc-1")
	for seq := uint64(1); seq <= 4; seq++ {
		if err := c.AddVersion(wire.Manifest{Company: "acme", Computer: "pc-1", Config: "home", Seq: seq, Finished: start}, [32]byte{byte(seq)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; i++ {
		if _, err := c.AddJournal("pc-1", "home", wire.Journal{Base: 2, Time: start}); err != nil {
			t.Fatal(err)
		}
	}

	if err := c.SetRetention(RetentionRecord{Company: "acme", Policy: "yearly 5y , all 7d", Set: start}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetRetention(RetentionRecord{Computer: "pc-1", Config: "home", Policy: "last 3", Set: start}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []RetentionRecord{
		{Company: "acme", Policy: "daily"},
		{Company: "nope", Policy: "last 1"},
		{Computer: "pc-9", Config: "home", Policy: "last 1"},
		{Company: "acme", Computer: "pc-1", Config: "home", Policy: "last 1"},
		{Computer: "pc-1", Policy: "last 1"},
	} {
		if err := c.SetRetention(bad); err == nil {
			t.Errorf("SetRetention(%+v) accepted", bad)
		}
	}
	rs, err := c.Retentions()
	if err != nil || len(rs) != 2 || rs[0].Policy != "all 7d, yearly 5y" || rs[1].Policy != "last 3" {
		t.Fatalf("retentions %+v, %v", rs, err)
	}
	if err := c.SetRetention(RetentionRecord{Computer: "pc-1", Config: "home"}); err != nil {
		t.Fatal(err)
	}
	if rs, _ := c.Retentions(); len(rs) != 1 {
		t.Fatalf("an empty policy did not remove the configuration's: %+v", rs)
	}

	// The newest version is never pruned, and a refused prune changes nothing.
	if _, err := c.Prune(PruneCmd{Versions: []VersionKey{{"pc-1", "home", 1}, {"pc-1", "home", 4}}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("prune of the newest version: %v", err)
	}
	if vs, _ := c.Versions("pc-1", "home"); len(vs) != 4 {
		t.Fatalf("a refused prune removed versions: %d left", len(vs))
	}
	res, err := c.Prune(PruneCmd{
		Versions: []VersionKey{{"pc-1", "home", 1}, {"pc-1", "home", 2}, {"pc-1", "home", 9}},
		Journal:  []JournalKey{{"pc-1", "home", 2, 1}, {"pc-1", "home", 2, 2}},
	})
	if err != nil || res != (PruneResult{Versions: 2, Journal: 2, Missing: 1}) {
		t.Fatalf("prune: %+v, %v", res, err)
	}
	vs, _ := c.Versions("pc-1", "home")
	if len(vs) != 2 || vs[0].Seq != 3 || vs[1].Seq != 4 {
		t.Fatalf("after prune: %+v", vs)
	}
	if js, _ := c.Journal("pc-1", "home", 2); len(js) != 0 {
		t.Fatalf("journal records left: %+v", js)
	}
	if _, err := c.Prune(PruneCmd{Versions: make([]VersionKey, MaxPrune+1)}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("prune over the limit: %v", err)
	}
}

func TestJobHistory(t *testing.T) {
	start := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	c, err := Open(t.TempDir(), Options{Clock: clock.NewFake(start)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var h jobs.History = c // the catalog is the runner's history
	running := jobs.Record{ID: "verify-0", Kind: jobs.KindVerify, State: jobs.Running, Started: start}
	if err := h.PutJob(running); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= MaxJobs+5; i++ {
		r := jobs.Record{ID: "prune-" + string(rune('a'+i%26)) + time.Duration(i).String(), Kind: jobs.KindPrune, State: jobs.Done,
			Started: start.Add(time.Duration(i) * time.Minute)}
		if err := h.PutJob(r); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := h.Jobs()
	if err != nil || len(recs) != MaxJobs {
		t.Fatalf("%d records, %v; want %d", len(recs), err, MaxJobs)
	}
	if recs[0].ID != "verify-0" || recs[1].Started != start.Add(7*time.Minute) {
		t.Fatalf("the running job must stay and the oldest finished go: %+v %+v", recs[0], recs[1])
	}
	running.State, running.Ended = jobs.Done, start.Add(time.Hour)
	if err := h.PutJob(running); err != nil {
		t.Fatal(err)
	}
	if recs, _ := h.Jobs(); recs[0].State != jobs.Done || len(recs) != MaxJobs {
		t.Fatalf("updating a record did not replace it: %+v (%d)", recs[0], len(recs))
	}
	if err := h.PutJob(jobs.Record{Kind: jobs.KindPrune, Started: start}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a job without an id: %v", err)
	}
}

func FuzzLifecycleRecords(f *testing.F) {
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	j := jobs.Record{ID: "verify-1", Kind: jobs.KindVerify, State: jobs.Done, Started: now}
	f.Add(false, jobKey(j), mustJSON(j))
	f.Add(true, []byte("c/acme"), mustJSON(RetentionRecord{Company: "acme", Policy: "last 3"}))
	f.Add(true, []byte("v/pc-1/home"), mustJSON(RetentionRecord{Computer: "pc-1", Config: "home", Policy: "daily 3d"}))
	f.Add(true, []byte("c/acme"), mustJSON(RetentionRecord{Company: "acme", Policy: "daily"}))
	f.Fuzz(func(t *testing.T, ret bool, k, v []byte) {
		var err error
		if ret {
			_, err = decodeRetention(k, v)
		} else {
			_, err = decodeJob(k, v)
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error %v is not ErrCorrupt", err)
		}
	})
}

func TestJobSchedules(t *testing.T) {
	start := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	c, err := Open(t.TempDir(), Options{Clock: clock.NewFake(start)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetJobSchedule(JobSchedule{Kind: "verify", Schedule: "sat 02:00-04:00", Set: start}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"24x7", "sometimes", "daily 25:00-26:00"} {
		if err := c.SetJobSchedule(JobSchedule{Kind: "verify", Schedule: bad}); !errors.Is(err, ErrInvalid) {
			t.Errorf("schedule %q: %v", bad, err)
		}
	}
	if m, _ := c.JobSchedules(); m["verify"].Schedule != "sat 02:00-04:00" || len(m) != 1 {
		t.Fatalf("%+v", m)
	}
	if err := c.SetJobSchedule(JobSchedule{Kind: "verify"}); err != nil {
		t.Fatal(err)
	}
	if m, _ := c.JobSchedules(); len(m) != 0 {
		t.Fatalf("an empty schedule did not remove the record: %+v", m)
	}
}
