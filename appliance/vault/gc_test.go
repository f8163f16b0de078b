package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// gcAgent backs up through the operations, as an agent does over HTTP.
type gcAgent struct {
	v  *Vault
	p  *Principal
	hs *keys.Hasher
}

func newGCAgent(t testing.TB, v *Vault, company, id string) *gcAgent {
	t.Helper()
	enrolDirect(t, v, company, id)
	k, err := v.companyKeys(company)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := v.Catalog.Computer(id)
	if err != nil {
		t.Fatal(err)
	}
	return &gcAgent{v: v, p: agentPrincipal(&caller{Computer: cp, keys: k}), hs: keys.NewHasher(k.set.ChunkID)}
}

// stage opens a session and stores (lack, upload) the files' chunks and
// the listing, as one listing chunk; it returns the session and the
// listing's references.
func (a *gcAgent) stage(ctx context.Context, files [][]byte) (string, []tree.ChunkRef, error) {
	return a.stageCut(ctx, files, 0)
}

// stageCut is gcAgent.stage with the listing cut into pieces of cut bytes
// (mid-node, as a content-defined chunker cuts), each piece a listing
// chunk (one piece when cut is 0); only what the vault lacks is uploaded.
func (a *gcAgent) stageCut(ctx context.Context, files [][]byte, cut int) (string, []tree.ChunkRef, error) {
	s, err := a.v.OpenSession(ctx, a.p, "home")
	if err != nil {
		return "", nil, err
	}
	var frames []wire.Frame
	var lst bytes.Buffer
	w, _ := tree.NewWriter(&lst)
	for i, f := range files {
		id := a.hs.Sum(f)
		frames = append(frames, wire.Frame{ID: id, Kind: wire.FrameData, PlainLen: uint32(len(f)), Payload: f})
		n := &tree.Node{Path: fmt.Appendf(nil, "f%04d", i), Type: tree.TypeFile, Mode: 0o644, Size: int64(len(f)),
			Chunks: []tree.ChunkRef{{ID: id, Len: uint32(len(f))}}}
		if err := w.Write(n); err != nil {
			return "", nil, err
		}
	}
	if cut <= 0 {
		cut = lst.Len()
	}
	var refs []tree.ChunkRef
	for b := lst.Bytes(); len(b) > 0; {
		p := b[:min(cut, len(b))]
		b = b[len(p):]
		id := a.hs.Sum(p)
		frames = append(frames, wire.Frame{ID: id, Kind: wire.FrameListing, PlainLen: uint32(len(p)), Payload: p})
		refs = append(refs, tree.ChunkRef{ID: id, Len: uint32(len(p))})
	}
	return s.ID, refs, a.storeFrames(ctx, s.ID, frames)
}

// storeFrames uploads to session sid the frames the vault lacks.
func (a *gcAgent) storeFrames(ctx context.Context, sid string, frames []wire.Frame) error {
	ids := make([][32]byte, len(frames))
	for i := range frames {
		ids[i] = frames[i].ID
	}
	bm, err := a.v.Lack(ctx, a.p, sid, ids)
	if err != nil {
		return err
	}
	var body []byte
	for i := range frames {
		if bm[i/8]&(1<<(i%8)) != 0 {
			body = wire.AppendFrame(body, &frames[i])
		}
	}
	if len(body) > 0 {
		if _, err := a.v.Upload(ctx, a.p, sid, int64(len(body)), bytes.NewReader(body)); err != nil {
			return err
		}
	}
	return nil
}

func (a *gcAgent) backup(ctx context.Context, files [][]byte) (uint64, error) {
	sid, listing, err := a.stage(ctx, files)
	if err != nil {
		return 0, err
	}
	c, err := a.v.Commit(ctx, a.p, sid, wire.Commit{Listing: listing})
	return c.Seq, err
}

// restoreAll reads every file of every version in the catalog back and
// compares it with what was backed up.
func restoreAll(t *testing.T, v *Vault, want map[string][][]byte) int {
	t.Helper()
	n := 0
	err := v.Catalog.AllVersions(func(m wire.Manifest) error {
		files, ok := want[fmt.Sprintf("%s@%d", m.Computer, m.Seq)]
		if !ok {
			return fmt.Errorf("version %s@%d was never committed by the test", m.Computer, m.Seq)
		}
		k, err := v.companyKeys(m.Company)
		if err != nil {
			return err
		}
		lr := v.listingReader(m.Company, k, m.Listing, nil)
		defer lr.Close()
		rd, err := tree.NewListingReader(lr, m.Listing)
		if err != nil {
			return fmt.Errorf("version %s@%d: listing: %w", m.Computer, m.Seq, err)
		}
		for i := 0; ; i++ {
			node, err := rd.Next()
			if err != nil {
				if i != len(files) {
					return fmt.Errorf("version %s@%d: %d files, want %d (%v)", m.Computer, m.Seq, i, len(files), err)
				}
				break
			}
			got, loc, err := v.Store.Get(m.Company, k.aead, node.Chunks[0].ID, nil)
			if err == nil {
				got, err = wire.Decompress(nil, loc.Flags, got, loc.PlainLen)
			}
			if err != nil || !bytes.Equal(got, files[i]) {
				return fmt.Errorf("version %s@%d: file %s does not restore identical: %v", m.Computer, m.Seq, node.Path, err)
			}
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCollectDuringBackups: computers back up (reusing most chunks of
// their previous version) while versions are pruned and garbage is
// collected again and again; every version kept restores identical, verify
// is clean, and two collections with nothing running leave exactly the
// live chunks.
func TestCollectDuringBackups(t *testing.T) {
	v := openTestVault(t)
	v.opts.RepackThreshold = 0.05
	ctx := context.Background()
	var mu sync.Mutex
	want := map[string][][]byte{}
	agents := []*gcAgent{newGCAgent(t, v, "acme", "c1"), newGCAgent(t, v, "acme", "c2"), newGCAgent(t, v, "acme", "c3")}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, len(agents))
	for ai, a := range agents {
		wg.Add(1)
		go func() { // owner: this test, stopped by close(stop)
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(ai), 7))
			files := make([][]byte, 40)
			for i := range files {
				files[i] = fmt.Appendf(nil, "%s file %d version 0 %s", a.p.Name, i, bytes.Repeat([]byte{byte(i)}, 3000))
			}
			for round := 1; ; round++ {
				select {
				case <-stop:
					return
				default:
				}
				// A few files change each round; a changed file may go
				// back to a content of an older (maybe pruned) version.
				for j := 0; j < 4; j++ {
					i := rng.IntN(len(files))
					files[i] = fmt.Appendf(nil, "%s file %d version %d %s", a.p.Name, i, rng.IntN(round+1), bytes.Repeat([]byte{byte(i)}, 3000))
				}
				seq, err := a.backup(ctx, files)
				if err != nil {
					errs <- fmt.Errorf("%s round %d: %w", a.p.Name, round, err)
					return
				}
				mu.Lock()
				want[fmt.Sprintf("%s@%d", a.p.agent.ID, seq)] = slices.Clone(files)
				mu.Unlock()
			}
		}()
	}
	prune := func(keep int) {
		var pc catalog.PruneCmd
		for _, a := range agents {
			vs, err := v.Catalog.Versions(a.p.agent.ID, "home")
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i+keep < len(vs); i++ {
				pc.Versions = append(pc.Versions, catalog.VersionKey{Computer: a.p.agent.ID, Config: "home", Seq: vs[i].Seq})
			}
		}
		if _, err := v.Catalog.Prune(pc); err != nil {
			t.Fatal(err)
		}
	}
	var total CollectResult
	committed := func() int { mu.Lock(); defer mu.Unlock(); return len(want) }
	for i := 0; i < 25 || committed() < 60 && len(errs) == 0; i++ {
		prune(3)
		res, err := v.Collect(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		total.Swept += res.Swept
		total.Protected += res.Protected
		total.PacksRewritten += res.PacksRewritten
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Whether a pack passed the rewrite threshold while the backups ran
	// depends on how the rounds interleaved; with them stopped, a few more
	// prunes make packs dead enough to be rewritten for sure.
	for i := 0; i < 3 && total.PacksRewritten == 0; i++ {
		prune(1)
		res, err := v.Collect(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		total.Swept += res.Swept
		total.PacksRewritten += res.PacksRewritten
	}
	t.Logf("%d versions committed; collections swept %d chunks, kept %d for open sessions, rewrote %d packs",
		len(want), total.Swept, total.Protected, total.PacksRewritten)
	if total.Swept == 0 || total.PacksRewritten == 0 {
		t.Fatalf("the collections swept %d chunks and rewrote %d packs: the test did not exercise them", total.Swept, total.PacksRewritten)
	}
	rep, err := v.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("verify after collections during backups: %d problems, first: %s", len(rep.Problems), rep.Problems[0])
	}
	if n := restoreAll(t, v, want); n == 0 {
		t.Fatal("no version left to restore")
	}

	// Two whole collections with nothing running: only live chunks stay.
	for i := 0; i < 2; i++ {
		if _, err := v.Collect(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	live := map[string][][32]byte{}
	bad, err := v.mark(ctx, "", nil, func(company string, ids ...[32]byte) { live[company] = append(live[company], ids...) })
	if err != nil || len(bad) > 0 {
		t.Fatal(err, bad)
	}
	for co, ids := range live {
		slices.SortFunc(ids, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
		live[co] = slices.Compact(ids)
	}
	ids, err := v.Store.ChunkIDs(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if extra := minus(ids, live["acme"]); len(extra) > 0 {
		t.Fatalf("%d chunks unreferenced for two whole collections remain, first %x", len(extra), extra[0][:8])
	}
	if missing := minus(live["acme"], ids); len(missing) > 0 {
		t.Fatalf("%d live chunks are gone, first %x", len(missing), missing[0][:8])
	}
	restoreAll(t, v, want)
}

// TestLackThenCollectThenCommit: a session hears from lack that the vault
// has a chunk no version references any more; a collection runs; the
// commit that references the chunk succeeds and the chunk is still there.
func TestLackThenCollectThenCommit(t *testing.T) {
	v := openTestVault(t)
	ctx := context.Background()
	a := newGCAgent(t, v, "acme", "c1")
	old := [][]byte{[]byte("the old content, pruned away"), []byte("kept")}
	if _, err := a.backup(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := a.backup(ctx, [][]byte{[]byte("newer"), []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Catalog.Prune(catalog.PruneCmd{Versions: []catalog.VersionKey{{Computer: "c1", Config: "home", Seq: 1}}}); err != nil {
		t.Fatal(err)
	}
	// The agent goes back to the old content: lack says the vault has it.
	sid, listing, err := a.stage(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	res, err := v.Collect(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Protected == 0 {
		t.Fatalf("the collection protected nothing for the open session: %+v", res)
	}
	if _, err := v.Commit(ctx, a.p, sid, wire.Commit{Listing: listing}); err != nil {
		t.Fatalf("commit after a collection: %v", err)
	}
	// The session ended; a collection now sees the version.
	if _, err := v.Collect(ctx, nil); err != nil {
		t.Fatal(err)
	}
	restoreAll(t, v, map[string][][]byte{"c1@2": {[]byte("newer"), []byte("kept")}, "c1@3": old})
	// Without a session, the pruned version's manifest is gone.
	res, err = v.Collect(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Swept != 0 {
		t.Fatalf("a third collection swept %d chunks: the second left garbage", res.Swept)
	}
}

// TestCommitOfReplacedSession: an agent restarts while its commit is being
// checked (its new session replaces the old one, no collection running),
// and a collection runs before the old commit writes its version. The
// replaced session's protect set was dropped and the collection's mark did
// not see the version, so its chunks were swept: the commit must be
// refused rather than record a version whose chunks are gone.
func TestCommitOfReplacedSession(t *testing.T) {
	v := openTestVault(t)
	ctx := context.Background()
	a := newGCAgent(t, v, "acme", "c1")
	files := [][]byte{[]byte("uploaded by the session that gets replaced"), []byte("and a second file")}
	sid, listing, err := a.stage(ctx, files)
	if err != nil {
		t.Fatal(err)
	}
	swept := int64(0)
	testHookBeforeRecord = func() {
		testHookBeforeRecord = nil
		if _, err := v.OpenSession(ctx, a.p, "home"); err != nil { // the agent restarted
			t.Error(err)
		}
		res, err := v.Collect(ctx, nil)
		if err != nil {
			t.Error(err)
		}
		swept = res.Swept
	}
	t.Cleanup(func() { testHookBeforeRecord = nil })
	_, err = v.Commit(ctx, a.p, sid, wire.Commit{Listing: listing})
	if swept == 0 {
		t.Fatalf("the collection swept nothing: the test no longer reaches the race")
	}
	if err == nil {
		restoreAll(t, v, map[string][][]byte{"c1@1": files})
		t.Fatalf("a commit whose session was replaced and whose chunks were swept (%d) was accepted", swept)
	}
	if ae, ok := err.(*apiError); !ok || ae.code != wire.CodeUnknownSession {
		t.Fatalf("commit of a replaced session: %v, want %s", err, wire.CodeUnknownSession)
	}
	// The agent commits again through a new session: everything is
	// uploaded again and the version restores.
	if _, err := a.backup(ctx, files); err != nil {
		t.Fatal(err)
	}
	restoreAll(t, v, map[string][][]byte{"c1@1": files})
}

// TestWalksLeaveTheCatalogWritable: a collection and a verify walk the
// listings of versions and journal records outside any catalog read
// transaction, so a catalog write that grows the file (bbolt remaps it) is
// not held up by the walk. Inside the transaction, the write made by the
// hook below, on the walking goroutine, deadlocks on the remap: the shape of
// a commit stalled behind a long walk, and of the walk's own read of the
// record's computer stuck behind that commit.
func TestWalksLeaveTheCatalogWritable(t *testing.T) {
	v := openTestVault(t)
	ctx := context.Background()
	a := newGCAgent(t, v, "acme", "c1")
	sid, listing, err := a.stage(ctx, [][]byte{[]byte("journalled file")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Commit(ctx, a.p, sid, wire.Commit{Listing: listing}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Catalog.AddJournal("c1", "home", wire.Journal{Base: 1, Time: time.Now(), Listing: listing}); err != nil {
		t.Fatal(err)
	}
	seq := uint64(100)
	testHookWalk = func() {
		// About 2 MB in one record: more than the catalog's mapping.
		big := make([]tree.ChunkRef, 20000)
		for i := range big {
			big[i] = tree.ChunkRef{ID: [32]byte{byte(i), byte(i >> 8), 1}, Len: 1}
		}
		seq++
		m := wire.Manifest{Magic: wire.ManifestMagic, Company: "acme", Computer: "c1", Config: "other", Seq: seq,
			Started: time.Now().UTC(), Finished: time.Now().UTC(), Listing: big}
		if err := v.Catalog.AddVersion(m, [32]byte{byte(seq)}); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() { testHookWalk = nil })
	for _, run := range []struct {
		name string
		fn   func() error
	}{
		{"collect", func() error { _, err := v.Collect(ctx, nil); return err }},
		{"verify", func() error { _, err := v.Verify(ctx); return err }},
	} {
		done := make(chan error, 1)
		go func() { done <- run.fn() }() // owner: this test; a hang is the failure
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s: %v", run.name, err)
			}
		case <-time.After(2 * time.Minute): // a bound on a hang, not a timing check
			// panic, not Fatal: closing the vault would hang too.
			panic(run.name + " hung: a catalog write during its walk waited for the walk's read transaction")
		}
	}
	if seq < 103 {
		t.Fatalf("the hook ran %d times: the walks no longer reach it", seq-100)
	}
}

// minus returns the ids of sorted a not in sorted b.
func minus(a, b [][32]byte) [][32]byte {
	var out [][32]byte
	j := 0
	for _, id := range a {
		for j < len(b) && bytes.Compare(b[j][:], id[:]) < 0 {
			j++
		}
		if j < len(b) && b[j] == id {
			continue
		}
		out = append(out, id)
	}
	return out
}

// TestMarks: the mark set marks only snapshot ids, each once, whatever the
// repeats, and leaves the rest as candidates in order.
func TestMarks(t *testing.T) {
	id := func(b byte) [32]byte { return [32]byte{b} }
	m := newMarks([][32]byte{id(1), id(3), id(5), id(7)})
	m.add(id(3), id(3), id(4), id(7), id(9))
	m.add(id(7))
	if m.n != 2 {
		t.Fatalf("marked %d, want 2", m.n)
	}
	if got := m.unmarked(); !slices.Equal(got, [][32]byte{id(1), id(5)}) {
		t.Fatalf("unmarked %x", got)
	}
}

// TestSaturatedProtectSet: a session that names more chunks than a protect
// set keeps (maxProtectKeys) protects everything of its company: a
// collection while it is open sweeps nothing there, and the next one after
// its commit sweeps the garbage.
func TestSaturatedProtectSet(t *testing.T) {
	defer func(n int) { maxProtectKeys = n }(maxProtectKeys)
	maxProtectKeys = 2
	v := openTestVault(t)
	ctx := context.Background()
	a := newGCAgent(t, v, "acme", "c1")
	if _, err := a.backup(ctx, [][]byte{[]byte("the old content, pruned away")}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.backup(ctx, [][]byte{[]byte("newer")}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Catalog.Prune(catalog.PruneCmd{Versions: []catalog.VersionKey{{Computer: "c1", Config: "home", Seq: 1}}}); err != nil {
		t.Fatal(err)
	}
	// Neither chunk of the new session is the pruned version's garbage.
	sid, listing, err := a.stage(ctx, [][]byte{[]byte("one"), []byte("two"), []byte("three"), []byte("four")})
	if err != nil {
		t.Fatal(err)
	}
	res, err := v.Collect(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Swept != 0 || res.Protected == 0 {
		t.Fatalf("a collection beside a saturated session swept %d, protected %d: want nothing swept", res.Swept, res.Protected)
	}
	if _, err := v.Commit(ctx, a.p, sid, wire.Commit{Listing: listing}); err != nil {
		t.Fatalf("commit after a collection: %v", err)
	}
	if res, err = v.Collect(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if res.Swept == 0 {
		t.Fatalf("the collection after the commit swept nothing: %+v", res)
	}
	restoreAll(t, v, map[string][][]byte{"c1@2": {[]byte("newer")}, "c1@3": {[]byte("one"), []byte("two"), []byte("three"), []byte("four")}})
}

// TestCommitSameListing: a commit whose listing is the newest version's (a
// no-change backup of an agent whose cache says every chunk is stored) is
// not read again; its session protects the whole company meanwhile. A
// quarantined chunk or a pruned newest version sends it through the full
// check, which names what the vault lacks.
func TestCommitSameListing(t *testing.T) {
	v := openTestVault(t)
	ctx := context.Background()
	a := newGCAgent(t, v, "acme", "c1")
	files := [][]byte{[]byte("first file"), []byte("second file")}
	if _, err := a.backup(ctx, files); err != nil {
		t.Fatal(err)
	}
	first, ok, err := v.Catalog.Newest("c1", "home")
	if err != nil || !ok {
		t.Fatalf("newest version: %v, %v", ok, err)
	}
	// commit sends the first version's listing again, without a lack or an
	// upload; saturated tells whether the session protected its company.
	commit := func() (wire.Committed, bool, error) {
		s, err := v.OpenSession(ctx, a.p, "home")
		if err != nil {
			t.Fatal(err)
		}
		saturated := false
		testHookBeforeRecord = func() {
			v.smu.Lock()
			if ss := v.sessions[s.ID]; ss != nil {
				ss.mu.Lock()
				saturated = ss.protect.all
				ss.mu.Unlock()
			}
			v.smu.Unlock()
		}
		defer func() { testHookBeforeRecord = nil }()
		c, err := v.Commit(ctx, a.p, s.ID, wire.Commit{Listing: first.Listing})
		return c, saturated, err
	}
	c, saturated, err := commit()
	if err != nil || c.Seq != 2 || !saturated {
		t.Fatalf("same listing: seq %d, company protected %v, %v; want seq 2 taken without reading", c.Seq, saturated, err)
	}
	second, _, err := v.Catalog.Newest("c1", "home")
	if err != nil || second.Totals.Files != first.Totals.Files || second.Totals.Bytes != first.Totals.Bytes || second.Totals.ChunksSent != 0 {
		t.Fatalf("totals %+v after %+v (%v): want the same files and bytes, nothing sent", second.Totals, first.Totals, err)
	}

	restoreAll(t, v, map[string][][]byte{"c1@1": files, "c1@2": files})

	// A damaged chunk: the commit must still ask for its good copy.
	if _, err := v.Store.Quarantine("acme", a.hs.Sum(files[0]), "test"); err != nil {
		t.Fatal(err)
	}
	var ae *apiError
	if _, saturated, err := commit(); !errors.As(err, &ae) || ae.code != wire.CodeMissingChunk || saturated {
		t.Fatalf("same listing with a quarantined chunk: %v (company protected %v); want the missing chunk named", err, saturated)
	}
}
