package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/jobs"
	"vaultnode/appliance/store"
	"vaultnode/internal/clock"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

func openClockVault(t *testing.T, clk clock.Clock, dir string) *Vault {
	t.Helper()
	return openClockVaultWith(t, clk, dir, nil)
}

func openClockVaultWith(t *testing.T, clk clock.Clock, dir string, onScheduled func(jobs.Record)) *Vault {
	t.Helper()
	v, err := Open(Options{Dir: dir, Listen: "127.0.0.1:0", Clock: clk, Zone: time.UTC, onScheduled: onScheduled})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// realVersion stores a version with a real listing (one file of one data
// chunk) and manifest through the store, and records it; journal adds n
// journal records with real listings on top of base.
func realVersion(t *testing.T, v *Vault, computer, config string, seq uint64, started time.Time) {
	t.Helper()
	k, err := v.companyKeys("acme")
	if err != nil {
		t.Fatal(err)
	}
	m := wire.Manifest{Magic: wire.ManifestMagic, Company: "acme", Computer: computer, Config: config, Seq: seq,
		Started: started.UTC(), Finished: started.Add(time.Minute).UTC(), Listing: realListing(t, v, k, fmt.Sprintf("%s@%d", config, seq))}
	mb, err := tree.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Catalog.AddVersion(m, putChunk(t, v, k, pack.KindManifest, mb)); err != nil {
		t.Fatal(err)
	}
}

func realJournal(t *testing.T, v *Vault, computer, config string, base uint64, at time.Time) {
	t.Helper()
	k, _ := v.companyKeys("acme")
	if _, err := v.Catalog.AddJournal(computer, config, wire.Journal{Base: base, Time: at, Listing: realListing(t, v, k, fmt.Sprintf("j%d %s", base, at))}); err != nil {
		t.Fatal(err)
	}
}

func putChunk(t *testing.T, v *Vault, k *companyKeys, kind pack.Kind, p []byte) [32]byte {
	t.Helper()
	h := pack.EntryHeader{Kind: kind, ID: keys.NewHasher(k.set.ChunkID).Sum(p), PlainLen: uint32(len(p))}
	if err := v.Store.Put("acme", []store.Entry{{Header: h, Data: pack.AppendEntry(nil, k.aead, &h, p)}}); err != nil {
		t.Fatal(err)
	}
	return h.ID
}

func realListing(t *testing.T, v *Vault, k *companyKeys, content string) []tree.ChunkRef {
	t.Helper()
	data := []byte("file content of " + content)
	id := putChunk(t, v, k, pack.KindData, data)
	var buf bytes.Buffer
	b, _ := tree.Marshal(tree.ListingMagic)
	buf.Write(b)
	b, _ = tree.Marshal(&tree.Node{Path: []byte("f"), Type: tree.TypeFile, Size: int64(len(data)), Chunks: []tree.ChunkRef{{ID: id, Len: uint32(len(data))}}})
	buf.Write(b)
	return []tree.ChunkRef{{ID: putChunk(t, v, k, pack.KindListing, buf.Bytes()), Len: uint32(buf.Len())}}
}

func waitJob(t testing.TB, v *Vault, id string) jobs.View {
	t.Helper()
	<-v.Jobs.Done(id)
	view, err := v.Jobs.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return view
}

// TestPruneJob: a policy set by the operator, a dry run that says which
// rule keeps each version, and a prune job that removes the rest (and the
// journal records whose next checkpoint aged out) in one command; an
// agent may do none of it.
func TestPruneJob(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clock.NewFake(start)
	v := openClockVault(t, clk, t.TempDir())
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Ten daily versions started at 12:00, Jan 1 to Jan 10; two
	// journal records on each of versions 2 and 9.
	for seq := uint64(1); seq <= 10; seq++ {
		realVersion(t, v, "pc-1", "home", seq, start.AddDate(0, 0, int(seq)-1).Add(12*time.Hour))
	}
	for _, b := range []uint64{2, 9} {
		for i := 0; i < 2; i++ {
			realJournal(t, v, "pc-1", "home", b, start.AddDate(0, 0, int(b)-1).Add(13*time.Hour+time.Duration(i)*time.Minute))
		}
	}
	if err := v.Catalog.RecordComputer(catalog.Computer{ID: "pc-1", Company: "acme", Name: "pc-1"}); err != nil {
		t.Fatal(err)
	}
	clk.Set(time.Date(2026, 1, 11, 0, 0, 0, 0, time.UTC))

	agent := agentPrincipal(&caller{Computer: catalog.Computer{ID: "pc-1", Company: "acme"}})
	if err := v.SetRetention(ctx, agent, RetentionRequest{Computer: "pc-1", Config: "home", Policy: "last 1"}); !isForbidden(err) {
		t.Fatalf("an agent set retention: %v", err)
	}
	if _, err := v.PlanPrune(ctx, agent); !isForbidden(err) {
		t.Fatalf("an agent planned a prune: %v", err)
	}
	if _, err := v.StartJob(ctx, agent, jobs.KindPrune); !isForbidden(err) {
		t.Fatalf("an agent pruned: %v", err)
	}
	if err := v.SetRetention(ctx, operator, RetentionRequest{Company: "acme", Policy: "all 3d, weekly 2"}); err != nil {
		t.Fatal(err)
	}
	if err := v.SetRetention(ctx, operator, RetentionRequest{Computer: "pc-1", Config: "home", Policy: "daily 5"}); err != nil {
		t.Fatal(err)
	}
	if err := v.SetRetention(ctx, operator, RetentionRequest{Company: "acme", Policy: "daily"}); err == nil {
		t.Fatal("a policy that does not parse was taken")
	}
	// The configuration's policy wins: "all 3d, weekly 2" would be asked of
	// the company; "daily 5" keeps Jan 6-10 (versions 6-10), and version 1
	// is the first complete one.
	plan, err := v.PlanPrune(ctx, operator)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Configs) != 1 || plan.Configs[0].Source != "configuration" || plan.Configs[0].Policy != "daily 5" {
		t.Fatalf("plan %+v", plan.Configs)
	}
	var kept []uint64
	for _, pv := range plan.Configs[0].Versions {
		if pv.Keep {
			kept = append(kept, pv.Seq)
		}
	}
	if !slices.Equal(kept, []uint64{1, 6, 7, 8, 9, 10}) || plan.Remove != 4 || plan.Keep != 6 {
		t.Fatalf("kept %v, remove %d, keep %d", kept, plan.Remove, plan.Keep)
	}
	if r := plan.Configs[0].Versions[0].Reasons; !slices.Equal(r, []string{"first complete version"}) {
		t.Fatalf("version 1 kept for %q", r)
	}
	if r := plan.Configs[0].Versions[9].Reasons; !slices.Equal(r, []string{"daily 5", "newest complete version"}) {
		t.Fatalf("version 10 kept for %q", r)
	}
	// Journal: on 2 both go with their base; on 9 they go too, as the
	// policy has no all rule and a next checkpoint (10) exists.
	if plan.Journal != 4 || !strings.Contains(plan.Configs[0].Journal[0].Why, "base version home@2 goes") {
		t.Fatalf("journal plan %+v", plan.Configs[0].Journal)
	}
	// With an all span, records on 9 stay while version 10 is young.
	if err := v.SetRetention(ctx, operator, RetentionRequest{Computer: "pc-1", Config: "home", Policy: "all 3d, daily 5"}); err != nil {
		t.Fatal(err)
	}
	if plan, err = v.PlanPrune(ctx, operator); err != nil || plan.Journal != 2 || plan.Remove != 4 {
		t.Fatalf("plan with all 3d: %d journal, %d versions, %v", plan.Journal, plan.Remove, err)
	}
	if vs, _ := v.Catalog.Versions("pc-1", "home"); len(vs) != 10 {
		t.Fatalf("a dry run removed versions: %d left", len(vs))
	}
	// A portal user with the capability sees its own company's plan only.
	for company, want := range map[string]int{"globex": 0, "acme": 1} {
		user := &Principal{Kind: User, Name: "user of " + company, Company: company, Caps: []Capability{CapManageRetention}}
		up, err := v.PlanPrune(ctx, user)
		if err != nil || len(up.Configs) != want || (want == 1 && up.Remove != 4) {
			t.Fatalf("plan for a user of %s: %d configurations, %d to remove, %v", company, len(up.Configs), up.Remove, err)
		}
	}

	st, err := v.StartJob(ctx, operator, jobs.KindPrune)
	if err != nil {
		t.Fatal(err)
	}
	view := waitJob(t, v, st.Job.ID)
	if view.State != jobs.Done || view.Progress.Items != 6 {
		t.Fatalf("prune job %+v", view)
	}
	vs, _ := v.Catalog.Versions("pc-1", "home")
	var seqs []uint64
	for _, m := range vs {
		seqs = append(seqs, m.Seq)
	}
	if !slices.Equal(seqs, []uint64{1, 6, 7, 8, 9, 10}) {
		t.Fatalf("after prune: %v", seqs)
	}
	if js, _ := v.Catalog.Journal("pc-1", "home", 9); len(js) != 2 {
		t.Fatalf("journal on 9: %d", len(js))
	}
	if js, _ := v.Catalog.Journal("pc-1", "home", 2); len(js) != 0 {
		t.Fatalf("journal on 2: %d", len(js))
	}
	// Pruning never deleted a chunk: verify finds every remaining version
	// whole, and the store untouched.
	rep, err := v.Verify(ctx)
	if err != nil || !rep.OK() || rep.Versions != 6 {
		t.Fatalf("verify after prune: %v %+v", err, rep.Problems)
	}
	// The history is in the catalog.
	recs, _ := v.Catalog.Jobs()
	if len(recs) != 1 || recs[0].State != jobs.Done || recs[0].By != operator.String() {
		t.Fatalf("history %+v", recs)
	}
}

func isForbidden(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.code == wire.CodeForbidden
}

// slowProgress stops a verify at its first pack until the test lets go.
type slowProgress struct {
	*jobs.Progress
	reached chan struct{}
	release chan struct{}
	once    bool
}

func (s *slowProgress) Add(items, bytes int64) {
	s.Progress.Add(items, bytes)
	if !s.once {
		s.once = true
		s.reached <- struct{}{}
		<-s.release
	}
}

// TestCancelVerifyMidway: a verify cancelled in the middle of its packs
// ends as canceled, and the store is consistent: a full verify after it is
// clean. A second verify while one runs is refused as busy.
func TestCancelVerifyMidway(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	v := openClockVault(t, clk, t.TempDir())
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		realVersion(t, v, "pc-1", "home", seq, clk.Now())
	}
	sp := &slowProgress{reached: make(chan struct{}), release: make(chan struct{})}
	v.Jobs.Register("verify-slow", func(ctx context.Context, p *jobs.Progress) (any, error) {
		sp.Progress = p
		return v.VerifyProgress(ctx, sp)
	})
	rec, err := v.Jobs.Start("verify-slow", "test")
	if err != nil {
		t.Fatal(err)
	}
	<-sp.reached
	if _, err := v.Jobs.Start("verify-slow", "test"); !errors.Is(err, jobs.ErrBusy) {
		t.Fatalf("second verify: %v", err)
	}
	if _, err := v.CancelJob(context.Background(), operator, rec.ID); err != nil {
		t.Fatal(err)
	}
	close(sp.release)
	view := waitJob(t, v, rec.ID)
	if view.State != jobs.Canceled || view.Progress.Items != 1 {
		t.Fatalf("cancelled verify: %+v", view)
	}
	st, err := v.StartJob(context.Background(), operator, jobs.KindVerify)
	if err != nil {
		t.Fatal(err)
	}
	full := waitJob(t, v, st.Job.ID)
	if full.State != jobs.Done || !strings.Contains(string(full.Result), `"problems":[]`) || !strings.Contains(string(full.Result), `"versions":3`) {
		t.Fatalf("verify after a cancel: %+v %s", full.Record, full.Result)
	}
}

// TestInterruptedJobRecordedAtStart: a job record left running (the vault
// died under it) is recorded as interrupted when the vault opens again;
// a job still running at Close is recorded as interrupted too.
func TestInterruptedJobRecordedAtStart(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clock.NewFake(t0)
	v, err := Open(Options{Dir: dir, Listen: "127.0.0.1:0", Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Catalog.PutJob(jobs.Record{ID: "prune-dead", Kind: jobs.KindPrune, State: jobs.Running, Started: t0}); err != nil {
		t.Fatal(err)
	}
	reached := make(chan struct{})
	v.Jobs.Register("hang", func(ctx context.Context, p *jobs.Progress) (any, error) {
		close(reached)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	hang, err := v.Jobs.Start("hang", "test")
	if err != nil {
		t.Fatal(err)
	}
	<-reached
	v.Close()
	v = openClockVault(t, clk, dir)
	recs, err := v.Catalog.Jobs()
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]jobs.State{}
	for _, r := range recs {
		states[r.ID] = r.State
	}
	if states["prune-dead"] != jobs.Interrupted || states[hang.ID] != jobs.Interrupted {
		t.Fatalf("states after reopening: %v", states)
	}
}

// TestScheduleStartsJobs: under a fake clock, prune starts at its nightly
// window and verify at its weekly one; a changed schedule takes effect;
// /metrics on the admin socket shows the runs.
func TestScheduleStartsJobs(t *testing.T) {
	// Saturday 2026-01-03 00:30 UTC.
	clk := clock.NewFake(time.Date(2026, 1, 3, 0, 30, 0, 0, time.UTC))
	started := make(chan jobs.Record, 10)
	sv := serveTestVaultWith(t, Options{Clock: clk, Zone: time.UTC, onScheduled: func(r jobs.Record) { started <- r }}, "acme")
	clk.Advance(30 * time.Minute) // 01:00: prune's window opens
	r := <-started
	if r.Kind != jobs.KindPrune || r.By != "schedule" {
		t.Fatalf("started %+v", r)
	}
	waitJob(t, sv.Vault, r.ID)
	if err := sv.SetJobSchedule(context.Background(), operator, JobScheduleRequest{Kind: jobs.KindVerify, Schedule: "sat 02:00-03:00"}); err != nil {
		t.Fatal(err)
	}
	if err := sv.SetJobSchedule(context.Background(), operator, JobScheduleRequest{Kind: jobs.KindVerify, Schedule: "24x7"}); err == nil {
		t.Fatal("a 24x7 job schedule was taken")
	}
	clk.Set(time.Date(2026, 1, 3, 2, 0, 0, 0, time.UTC))
	// 02:00 opens verify's window and garbage collection's nightly one.
	for kinds := map[jobs.Kind]bool{}; len(kinds) < 2; {
		r = <-started
		if r.Kind != jobs.KindVerify && r.Kind != jobs.KindCollect || kinds[r.Kind] {
			t.Fatalf("started %+v", r)
		}
		kinds[r.Kind] = true
		waitJob(t, sv.Vault, r.ID)
	}
	infos, err := sv.JobSchedules(context.Background(), operator)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range infos {
		if in.Kind == jobs.KindVerify && (in.Default || !in.Next.Equal(time.Date(2026, 1, 10, 2, 0, 0, 0, time.UTC))) {
			t.Errorf("verify schedule %+v", in)
		}
		if in.Kind == jobs.KindPrune && !in.Next.Equal(time.Date(2026, 1, 4, 1, 0, 0, 0, time.UTC)) {
			t.Errorf("prune schedule %+v", in)
		}
	}
	resp, err := sv.adminClient().Get("http://vault" + AdminMetrics)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`vaultnode_job_runs_total{kind="prune",state="done"} 1`, `vaultnode_job_runs_total{kind="verify",state="done"} 1`, `vaultnode_job_running{kind="prune"} 0`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, b)
		}
	}
	select {
	case r := <-started:
		t.Fatalf("a job started twice in one window: %+v", r)
	default:
	}
}

// TestScheduleWaitsForAnOpeningOnANewVault: a vault that never ran a kind
// and starts inside its window does not start it at once; it runs at the
// next opening. One whose last run is older than the window catches up.
func TestScheduleWaitsForAnOpeningOnANewVault(t *testing.T) {
	// Sunday 2026-01-04 04:00 UTC: inside verify's default window.
	clk := clock.NewFake(time.Date(2026, 1, 4, 4, 0, 0, 0, time.UTC))
	oldDir := t.TempDir()
	v, err := Open(Options{Dir: oldDir, Listen: "127.0.0.1:0", Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Catalog.PutJob(jobs.Record{ID: "verify-old", Kind: jobs.KindVerify, State: jobs.Done, Started: clk.Now().AddDate(0, 0, -30)}); err != nil {
		t.Fatal(err)
	}
	v.Close()

	newStarted, oldStarted := make(chan jobs.Record, 10), make(chan jobs.Record, 10)
	serveTestVaultWith(t, Options{Clock: clk, Zone: time.UTC, onScheduled: func(r jobs.Record) { newStarted <- r }}, "acme")
	old := openClockVaultWith(t, clk, oldDir, func(r jobs.Record) { oldStarted <- r })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); old.runSchedule(ctx) }()
	defer func() { cancel(); <-done }()

	// The vault with a verify in its history catches up at once.
	r := <-oldStarted
	if r.Kind != jobs.KindVerify {
		t.Fatalf("catch-up started %+v", r)
	}
	waitJob(t, old, r.ID)
	// The new vault waits: the first job it starts is prune at Monday
	// 01:00, not verify.
	clk.Set(time.Date(2026, 1, 5, 1, 0, 0, 0, time.UTC))
	if r := <-newStarted; r.Kind != jobs.KindPrune {
		t.Fatalf("the new vault started %+v first; want prune at the next opening", r)
	}
	waitJob(t, old, (<-oldStarted).ID) // the old vault's prune too
}
