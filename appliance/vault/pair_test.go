package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/jobs"
	"vaultnode/appliance/mail"
	"vaultnode/appliance/pair"
	"vaultnode/internal/wire"
)

// openTestPair opens two vaults of one pair in-process, each with its own
// raft instance on loopback: a forms the pair and leads, b shares its CA
// and master key (as a join sends them) and follows as a non-voter, so a
// commits alone and b applies the whole log.
func openTestPair(t *testing.T) (a, b *Vault) {
	p := newTestPair(t, 0)
	return p.a, p.b
}

type testPair struct {
	t      *testing.T
	a, b   *Vault
	da, db string
	opened map[*Vault]bool
	snap   uint64
}

func newTestPair(t *testing.T, snapshotThreshold uint64) *testPair {
	t.Helper()
	p := &testPair{t: t, da: t.TempDir(), db: t.TempDir(), opened: map[*Vault]bool{}, snap: snapshotThreshold}
	t.Cleanup(func() {
		for v, open := range p.opened {
			if open {
				v.Close()
			}
		}
	})
	p.a = p.open("a", p.da, "127.0.0.1:0", true)
	os.MkdirAll(filepath.Join(p.db, "tls"), 0o700)
	for _, f := range []string{"master.key", "tls/ca.pem", "tls/ca.key"} {
		raw, err := os.ReadFile(filepath.Join(p.da, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p.db, f), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p.b = p.open("b", p.db, "127.0.0.1:0", false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.a.pair.node.AddMember(ctx, pair.Member{ID: "b", Raft: p.b.pair.node.Addr(), Agent: "agent-b"}); err != nil {
		t.Fatal(err)
	}
	if err := p.a.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	caughtUp(t, p.a, p.b)
	return p
}

func (p *testPair) open(id, dir, listen string, form bool) *Vault {
	p.t.Helper()
	v, err := Open(Options{Dir: dir, Listen: "127.0.0.1:0", Log: zaptest.NewLogger(p.t).Named(id),
		Pair: &PairOptions{ID: id, Listen: listen, Agent: "agent-" + id, Form: form, HeartbeatTimeout: time.Second, SnapshotThreshold: p.snap}})
	if err != nil {
		p.t.Fatal(err)
	}
	p.opened[v] = true
	return v
}

func (p *testPair) close(v *Vault) {
	p.t.Helper()
	p.opened[v] = false
	if err := v.Close(); err != nil {
		p.t.Logf("close: %v", err)
	}
}

// caughtUp waits until b applied every entry a applied.
func caughtUp(t *testing.T, a, b *Vault) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := b.pair.node.WaitApplied(ctx, a.pair.node.Applied()); err != nil {
		t.Fatal(err)
	}
}

// replicated waits until the leader a's replication to b went past every
// snapshot it sent b, so no install is under way or still to come there:
// hashicorp/raft sends b entries again only once b answered an install
// (a member that stopped before it answered gets the snapshot again), so
// b applying an entry committed now says so. The entry records b's
// addresses again, as they are.
func replicated(t *testing.T, a, b *Vault) {
	t.Helper()
	ms, err := pair.Members(a.Catalog)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(ms, func(m pair.Member) bool { return m.ID == b.pair.node.ID() })
	if i < 0 {
		t.Fatalf("the catalog records no member %s: %v", b.pair.node.ID(), ms)
	}
	cmd, err := catalog.NewCommand(pair.KindMember, ms[i])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.pair.node.Submit(cmd); err != nil {
		t.Fatal(err)
	}
	caughtUp(t, a, b)
}

// submitSweepPlan puts a sweep command of any origin through a's log, as a
// buggy or hostile leader would.
func submitSweepPlan(t *testing.T, a *Vault, plan sweepPlan, ids [][32]byte) {
	t.Helper()
	for _, id := range ids {
		plan.IDs = append(plan.IDs, id[:]...)
	}
	cmd, err := catalog.NewCommand(KindSweep, plan)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.pair.node.Submit(cmd); err != nil {
		t.Fatal(err)
	}
}

func chunkIDs(t *testing.T, v *Vault) [][32]byte {
	t.Helper()
	ids, err := v.Store.ChunkIDs(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func testFiles(tag string, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "%s file %d %0500d", tag, i, i)
	}
	return out
}

// TestFollowerSweepCheck: the follower checks the leader's sweeps against
// its own catalog without marking the company again for each batch: one
// mark per collection, then only what was committed since. It still
// deletes nothing a committed version references, even when the sweep
// names it (a buggy or hostile leader) and the version was committed
// between two batches of the same collection.
func TestFollowerSweepCheck(t *testing.T) {
	old := sweepBatch
	sweepBatch = 8
	t.Cleanup(func() { sweepBatch = old })
	a, b := openTestPair(t)
	ctx := context.Background()
	ag := newGCAgent(t, a, "acme", "c1")
	for i := range 4 {
		if _, err := ag.backup(ctx, testFiles(fmt.Sprint("v", i), 30)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Catalog.Prune(catalog.PruneCmd{Versions: []catalog.VersionKey{{Computer: "c1", Config: "home", Seq: 1}, {Computer: "c1", Config: "home", Seq: 2}}}); err != nil {
		t.Fatal(err)
	}
	caughtUp(t, a, b)
	walked := b.listingsMarked.Load()
	res, err := a.Collect(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	caughtUp(t, a, b)
	walked = b.listingsMarked.Load() - walked
	t.Logf("the leader swept %d chunks in %d-id batches; the follower walked %d listings to check them", res.Swept, sweepBatch, walked)
	if res.Swept < 60 {
		t.Fatalf("the collection swept %d chunks; the two pruned versions held 60 files", res.Swept)
	}
	// Two versions live, one listing each: marked once for the whole
	// collection, not once per batch.
	if walked != 2 {
		t.Fatalf("the follower walked %d listings to check %d batches of a collection; want 2 (each live version once)", walked, (res.Swept+7)/8)
	}
	if ia, ib := chunkIDs(t, a), chunkIDs(t, b); !slices.Equal(ia, ib) {
		t.Fatalf("after the collection the leader holds %d chunks, the follower %d", len(ia), len(ib))
	}

	// A hostile collection: its first batch names nothing live; then a
	// version is committed whose chunks every member already held (the
	// session uploaded them before the first batch); its second batch
	// names them and the older live ones. Every member keeps them all.
	live := chunkIDs(t, b)
	sid, listing, err := ag.stage(ctx, testFiles("late", 10))
	if err != nil {
		t.Fatal(err)
	}
	caughtUp(t, a, b)
	all := chunkIDs(t, b)
	submitSweepPlan(t, a, sweepPlan{Collection: "hostile", Origin: "x", Company: "acme"}, [][32]byte{{1}})
	if _, err := a.Commit(ctx, ag.p, sid, wire.Commit{Listing: listing}); err != nil {
		t.Fatal(err)
	}
	caughtUp(t, a, b)
	named := all
	all = chunkIDs(t, b) // and the late version's manifest
	submitSweepPlan(t, a, sweepPlan{Collection: "hostile", Origin: "x", Company: "acme", Last: true}, named)
	caughtUp(t, a, b)
	for _, v := range []*Vault{a, b} {
		if got := chunkIDs(t, v); !slices.Equal(got, all) {
			t.Fatalf("%s: a sweep naming every referenced chunk left %d of %d (%d before the late version)", v.pair.node.ID(), len(got), len(all), len(live))
		}
	}
	if b.pair.gc.check != nil {
		t.Fatal("the follower kept its check after the collection's last batch")
	}
	want := map[string][][]byte{"c1@3": testFiles("v2", 30), "c1@4": testFiles("v3", 30), "c1@5": testFiles("late", 10)}
	restoreAll(t, a, want)
	restoreAll(t, b, want)
}

// TestSnapshotInstall: a member brought up to date by a catalog snapshot
// (it was down while the log was compacted) ends as one that replayed the
// log: the chunks swept meanwhile are gone from its store, its mail queue
// and SMTP settings are the leader's. Then the sweeps kept for it are
// forgotten once it applied them.
func TestSnapshotInstall(t *testing.T) {
	t.Run("finished at once", func(t *testing.T) { testSnapshotInstall(t, false) })
	t.Run("finished at the next start", func(t *testing.T) { testSnapshotInstall(t, true) })
}

// testSnapshotInstall: with crash, the member stops right after its
// catalog was replaced (before the sweeps and mail were applied) and
// finishes at its next start.
func testSnapshotInstall(t *testing.T, crash bool) {
	p := newTestPair(t, 4)
	a := p.a
	ctx := context.Background()
	ag := newGCAgent(t, a, "acme", "c1")
	for i := range 3 {
		if _, err := ag.backup(ctx, testFiles(fmt.Sprint("v", i), 20)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Catalog.Prune(catalog.PruneCmd{Versions: []catalog.VersionKey{{Computer: "c1", Config: "home", Seq: 1}}}); err != nil {
		t.Fatal(err)
	}
	m1 := mail.Message{ID: "m1", To: "ops@example.com", Subject: "one", Body: "first", Created: time.Now().UTC()}
	if _, err := a.Mail.Add(m1); err != nil {
		t.Fatal(err)
	}
	caughtUp(t, a, p.b)
	if _, err := p.b.Mail.Get("m1"); err != nil {
		t.Fatalf("the follower lacks the queued message: %v", err)
	}
	addr := p.b.pair.node.Addr()
	p.close(p.b)

	// While b is down: a collection, mail sent and queued, new settings,
	// and the log compacted behind a snapshot.
	res, err := a.Collect(ctx, nil)
	if err != nil || res.Swept < 20 {
		t.Fatalf("the collection swept %d chunks (%v); the pruned version held 20 files", res.Swept, err)
	}
	sent := m1
	sent.State, sent.Done = mail.StateSent, time.Now().UTC()
	cmd, _ := catalog.NewCommand(KindMailOp, mail.Op{Where: "done", Msg: sent})
	if _, err := a.pair.node.Submit(cmd); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Mail.Add(mail.Message{ID: "m2", To: "ops@example.com", Subject: "two", Body: "second", Created: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	if err := a.saveMailSettings(mail.Settings{Host: "smtp.example.com", From: "vault@example.com", Username: "vault", Password: "s3cret"}); err != nil {
		t.Fatal(err)
	}
	for i := range 8 { // entries past the trailing logs
		if err := a.NewCompany(fmt.Sprint("filler", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.pair.node.Snapshot(); err != nil {
		t.Fatal(err)
	}

	testRestoredCrash = crash
	p.b = p.open("b", p.db, addr, false)
	caughtUp(t, a, p.b)
	if crash {
		testRestoredCrash = false
		if _, err := os.Stat(filepath.Join(p.db, "pair", restoredFile)); err != nil {
			t.Fatalf("pair/%s after an unfinished install: %v", restoredFile, err)
		}
		p.close(p.b)
		p.b = p.open("b", p.db, addr, false)
		caughtUp(t, a, p.b)
	}
	b := p.b
	// With crash the leader may not have heard b answer the install (b
	// stopped right after its catalog was replaced), and then sends the
	// snapshot again now that b is back: b holds its state already, keeps
	// its catalog and counts no second install. The checks below read b's
	// files and count its installs once that is over too.
	replicated(t, a, b)
	if n := b.pair.gc.restores.Load(); n != 1 {
		t.Fatalf("the member installed %d catalog snapshots; the test wants it brought up to date by one", n)
	}
	if ia, ib := chunkIDs(t, a), chunkIDs(t, b); !slices.Equal(ia, ib) {
		t.Fatalf("after the snapshot the leader holds %d chunks, the member %d (the sweeps inside the snapshot not applied)", len(ia), len(ib))
	}
	qa, err := a.Mail.List()
	if err != nil {
		t.Fatal(err)
	}
	qb, err := b.Mail.List()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(qa) != fmt.Sprint(qb) {
		t.Fatalf("mail queues differ after the snapshot:\nleader %v\nmember %v", qa, qb)
	}
	sa, _ := a.Mail.Settings()
	sb, _ := b.Mail.Settings()
	if fmt.Sprint(sa) != fmt.Sprint(sb) || sb.Host != "smtp.example.com" {
		t.Fatalf("mail settings after the snapshot: leader %+v, member %+v", sa, sb)
	}
	if _, err := os.Stat(filepath.Join(p.db, "pair", restoredFile)); err == nil {
		t.Fatal("pair/restored.json left after the install finished")
	}
	restoreAll(t, b, map[string][][]byte{"c1@2": testFiles("v1", 20), "c1@3": testFiles("v2", 20)})
	// The SMTP password is in no member's files in clear (log, snapshots,
	// catalog, settings), yet each member can open it.
	for _, dir := range []string{p.da, p.db} {
		noClear(t, dir, "s3cret")
	}
	for _, v := range []*Vault{a, b} {
		if s, err := v.Mail.Settings(); err != nil || s.Password != "s3cret" {
			t.Fatalf("%s opens the SMTP password as %q (%v)", v.pair.node.ID(), s.Password, err)
		}
	}

	// Every member applied the sweeps: the leader forgets them.
	if err := a.forgetSweeps(ctx); err != nil {
		t.Fatal(err)
	}
	caughtUp(t, a, b)
	for _, v := range []*Vault{a, b} {
		n := 0
		v.keptSweeps(0, func(uint64, sweepPlan) error { n++; return nil })
		if n != 0 {
			t.Fatalf("%s keeps %d sweeps every member applied", v.pair.node.ID(), n)
		}
	}
}

// noClear fails if a file under dir holds secret. The member may run
// while it walks (a follower rewrites its packs after sweeps, raft writes
// and reaps its snapshots): a file or directory removed between its
// listing and its read is passed, as a file the walk found no more.
func noClear(t *testing.T, dir, secret string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && path != dir {
			return nil
		}
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		n++
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("%s holds the SMTP password in clear", path)
		}
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("read %s: %d files, %v", dir, n, err)
	}
}

// TestSMTPPasswordSealedAtRest: a single vault's settings saved with the
// password in clear (before passwords were sealed) are sealed at the next
// open; the sender still opens the password, MailInfo shows only that
// there is one.
func TestSMTPPasswordSealedAtRest(t *testing.T) {
	dir := t.TempDir()
	if _, err := mail.SaveSettings(filepath.Join(dir, "mail"), mail.Settings{Host: "smtp.example.com", From: "vault@example.com", Username: "vault", Password: "s3cret"}); err != nil {
		t.Fatal(err)
	}
	v, err := Open(Options{Dir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	noClear(t, filepath.Join(dir, "mail"), "s3cret")
	if s, err := v.Mail.Settings(); err != nil || s.Password != "s3cret" {
		t.Fatalf("the sender opens the password as %q (%v)", s.Password, err)
	}
	info, err := v.MailInfo(context.Background(), &Principal{Kind: Operator, Name: "root", Caps: []Capability{CapOperate}})
	if err != nil || !info.HasPassword || info.Settings.Password != "" || info.Settings.SealedPassword != nil {
		t.Fatalf("mail info: %+v, %v", info.Settings, err)
	}
}

// TestDeposedLeader: a leader deposed while a backup is under way (its
// leadership handed to the other data member) acknowledges nothing more:
// the session's upload and commit on it are refused with not_leader, as is
// any catalog write and its agent routes (naming the new leader). The new
// leader treats it as the deposed member until it takes a copy again; the
// agent's retry there commits, and the old leader, now a follower, holds
// the version and its chunks.
func TestDeposedLeader(t *testing.T) {
	p := newTestPair(t, 0)
	a, b := p.a, p.b
	ctx := context.Background()
	waitUntil(t, "b to become a voter", func() bool {
		ids, err := a.pair.node.PromoteReady(ctx)
		return err == nil && len(ids) == 1
	})
	ag := newGCAgent(t, a, "acme", "c1")
	files := testFiles("kept", 10)
	sid, listing, err := ag.stage(ctx, files)
	if err != nil {
		t.Fatal(err)
	}
	late := testFiles("after", 3)
	// b is recorded behind (a copy to it failed, say): the leader then
	// stores uploads without copying them, and only its leadership stands
	// between such an upload and an acknowledgement.
	cmd, _ := catalog.NewCommand(pair.KindBehind, pair.Behind{Member: "b", Since: time.Now().UTC(), Reason: "test"})
	if _, err := a.pair.node.Submit(cmd); err != nil {
		t.Fatal(err)
	}

	if err := a.pair.node.TransferLeadership("b"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "b to lead", func() bool { return b.pair.node.IsLeader() })
	if a.pair.node.IsLeader() {
		t.Fatal("two leaders after the transfer")
	}

	// The old leader acknowledges nothing.
	var body []byte
	for _, f := range late {
		body = wire.AppendFrame(body, &wire.Frame{ID: ag.hs.Sum(f), Kind: wire.FrameData, PlainLen: uint32(len(f)), Payload: f})
	}
	// (These calls passed the agent API's leader check as requests that
	// began while it led would; the answer is what the agent reads.)
	if _, err := a.Upload(ctx, ag.p, sid, int64(len(body)), bytes.NewReader(body)); answered(a, err) != wire.CodeNotLeader {
		t.Fatalf("an upload on the deposed leader answered %s (%v), want %s", answered(a, err), err, wire.CodeNotLeader)
	}
	if _, err := a.Commit(ctx, ag.p, sid, wire.Commit{Listing: listing}); answered(a, err) != wire.CodeNotLeader {
		t.Fatalf("a commit on the deposed leader answered %s (%v), want %s", answered(a, err), err, wire.CodeNotLeader)
	}
	if err := a.NewCompany("globex"); !errors.Is(err, catalog.ErrNotLeader) {
		t.Fatalf("a catalog write on the deposed leader: %v, want %v", err, catalog.ErrNotLeader)
	}
	rec := httptest.NewRecorder()
	a.agentHandler().ServeHTTP(rec, httptest.NewRequest("POST", wire.PathSessions, nil))
	if rec.Code != http.StatusMisdirectedRequest || rec.Header().Get(wire.HeaderLeader) != "agent-b" {
		t.Fatalf("the deposed leader's agent API answered %d naming %q, want %d naming agent-b",
			rec.Code, rec.Header().Get(wire.HeaderLeader), http.StatusMisdirectedRequest)
	}
	if d := b.pair.node.Deposed(); d != "a" {
		t.Fatalf("the new leader holds %q as the deposed member, want a", d)
	}

	// The agent's retry on the new leader: a new session, the same files.
	ag.v = b
	seq, err := ag.backup(ctx, files)
	if err != nil {
		t.Fatalf("the backup on the new leader: %v", err)
	}
	if d := b.pair.node.Deposed(); d != "" {
		t.Fatalf("the old leader took copies again, yet the new leader still holds %q deposed", d)
	}
	caughtUp(t, b, a)
	want := map[string][][]byte{fmt.Sprintf("c1@%d", seq): files}
	if n := restoreAll(t, a, want); n != 1 {
		t.Fatalf("the old leader holds %d versions, want the one the new leader committed", n)
	}
	restoreAll(t, b, want)
}

// TestBehindMemberStarts: a member recorded behind, whose log brought it
// a version the leader committed without copying its chunks there, starts
// again (its start-up check would otherwise refuse an index older than the
// catalog), and the catch-up then copies what it lacks: both versions
// restore from it. TestPairFailover (agentkit/e2e) met this when the
// restarted member's raft applied the new leader's entries before its
// store had opened.
func TestBehindMemberStarts(t *testing.T) {
	p := newTestPair(t, 0) // in-process, without Serve: no catch-up starts by itself
	a := p.a
	ctx := context.Background()
	ag := newGCAgent(t, a, "acme", "c1")
	first, second := testFiles("first", 10), testFiles("second", 10)
	s1, err := ag.backup(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	cmd, _ := catalog.NewCommand(pair.KindBehind, pair.Behind{Member: "b", Since: time.Now().UTC(), Reason: "test"})
	if _, err := a.pair.node.Submit(cmd); err != nil {
		t.Fatal(err)
	}
	s2, err := ag.backup(ctx, second) // not copied to b, which is behind
	if err != nil {
		t.Fatal(err)
	}
	caughtUp(t, a, p.b)
	if missing, err := missingFromIndex(p.b.Catalog, p.b.Store); err != nil || len(missing) == 0 {
		t.Fatalf("b lacks %v (%v); the test wants it to lack the second version's chunks", missing, err)
	}
	addr := p.b.pair.node.Addr()
	p.close(p.b)
	p.b = p.open("b", p.db, addr, false) // fails the test if b refuses to start
	b := p.b

	rec, err := a.Jobs.Start(KindCatchUp, "test")
	if err != nil {
		t.Fatal(err)
	}
	<-a.Jobs.Done(rec.ID)
	if j, err := a.Jobs.Get(rec.ID); err != nil || j.State != jobs.Done {
		t.Fatalf("the catch-up: %+v (%v)", j, err)
	}
	if bs, err := pair.BehindMembers(a.Catalog); err != nil || len(bs) > 0 {
		t.Fatalf("after the catch-up the pair records %v behind (%v)", bs, err)
	}
	caughtUp(t, a, b)
	if missing, err := missingFromIndex(b.Catalog, b.Store); err != nil || len(missing) > 0 {
		t.Fatalf("after the catch-up b lacks %v (%v)", missing, err)
	}
	restoreAll(t, b, map[string][][]byte{fmt.Sprintf("c1@%d", s1): first, fmt.Sprintf("c1@%d", s2): second})
}

// answered is the error code an agent reads for err.
func answered(v *Vault, err error) string {
	if err == nil {
		return "ok"
	}
	rec := httptest.NewRecorder()
	v.writeErr(rec, httptest.NewRequest("POST", wire.PathSessions, nil), err)
	var e wire.Error
	json.NewDecoder(rec.Body).Decode(&e)
	return e.Code
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited a minute for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
