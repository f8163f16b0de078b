package pair

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/pki"
	"vaultnode/appliance/store"
	"vaultnode/internal/pack"
)

type dataMember struct {
	*testMember
	st  *store.Store
	rep *Replicator
}

func startData(t testing.TB, ca *pki.Authority, id, dir, addr string) *dataMember {
	t.Helper()
	m := &dataMember{testMember: startMember(t, ca, id, dir, addr, false, 0)}
	m.rep = NewReplicator(m.node, nil, nil, zaptest.NewLogger(t).Named(id), 2*time.Second)
	st, err := store.Open(filepath.Join(dir, "store"), zaptest.NewLogger(t), store.Options{Replicate: m.rep.Replicate, Replica: m.rep.Replica})
	if err != nil {
		t.Fatal(err)
	}
	m.st = st
	m.rep.SetStore(st)
	m.rep.SetOpener(func(string) (*pack.Sealer, error) { return pack.NewSealer([32]byte{7}), nil })
	m.node.SetHandler(m.rep.Handler())
	m.node.SetCopyHandler(m.rep.ServeCopy)
	return m
}

func (m *dataMember) stop(t testing.TB) {
	m.testMember.stop(t)
	m.st.Close()
}

// startLeader starts data member id on a pair of its own (bootstrapped,
// so it leads) holding company acme.
func startLeader(t testing.TB, ca *pki.Authority, id string) *dataMember {
	t.Helper()
	x := startData(t, ca, id, t.TempDir(), "")
	if err := x.node.Bootstrap(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := x.cat.CreateCompany(catalog.Company{Name: "acme", Sealed: []byte("s"), Created: testStart}); err != nil {
		t.Fatal(err)
	}
	return x
}

// join adds members to leader a's pair and waits until they vote.
func join(t testing.TB, a *dataMember, ms ...Member) {
	t.Helper()
	for _, m := range ms {
		if err := a.node.AddMember(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	promote(t, a.node, len(ms))
}

func entries(t *testing.T, n int) ([]store.Entry, [][32]byte) {
	aead := pack.NewSealer([32]byte{7})
	var out []store.Entry
	var ids [][32]byte
	for i := 0; i < n; i++ {
		payload := make([]byte, 1000+i)
		rand.Read(payload)
		h := pack.EntryHeader{Kind: pack.KindData, PlainLen: uint32(len(payload))}
		rand.Read(h.ID[:])
		data := pack.AppendEntry(nil, aead, &h, payload)
		out = append(out, store.Entry{Header: h, Data: data})
		ids = append(ids, h.ID)
	}
	return out, ids
}

func hasAll(t *testing.T, st *store.Store, ids [][32]byte) bool {
	t.Helper()
	has, err := st.Has("acme", ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range has {
		if !h {
			return false
		}
	}
	return true
}

// TestReplication: a commit on the leader is on the other data member
// when Put returns; with the other member down, Put waits DegradeAfter,
// records it behind (leader and witness are a majority) and acknowledges;
// restarted, the member catches up and the record goes.
func TestReplication(t *testing.T) {
	ca, err := pki.LoadOrCreate(t.TempDir(), testStart)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := startLeader(t, ca, "a")
	b := startData(t, ca, "b", t.TempDir(), "")
	w := startMember(t, ca, "w", t.TempDir(), "", true, 0)
	join(t, a, Member{ID: "b", Raft: b.addr, Agent: "agent-b"}, Member{ID: "w", Raft: w.addr, Witness: true})
	waitFor(t, "b to learn the members", func() bool { ms, _ := Members(b.cat); return len(ms) == 3 })
	waitFor(t, "a to know b as a member", func() bool { ms, _ := Members(a.cat); return len(ms) == 3 })

	es, ids := entries(t, 20)
	if err := a.st.Put("acme", es); err != nil {
		t.Fatal(err)
	}
	if !hasAll(t, b.st, ids) {
		t.Fatal("acknowledged chunks are not on the other data member")
	}

	bDir, bAddr := b.dir, b.addr
	b.stop(t)
	es2, ids2 := entries(t, 5)
	if err := a.st.Put("acme", es2); err != nil {
		t.Fatalf("put with the other member down, the witness up: %v", err)
	}
	bs, _ := BehindMembers(a.cat)
	if len(bs) != 1 || bs[0].Member != "b" {
		t.Fatalf("behind records: %+v", bs)
	}
	es3, ids3 := entries(t, 5)
	if err := a.st.Put("acme", es3); err != nil { // degraded: no wait now
		t.Fatal(err)
	}

	b = startData(t, ca, "b", bDir, bAddr)
	if hasAll(t, b.st, ids2) {
		t.Fatal("b has chunks stored while it was down")
	}
	waitFor(t, "a to lead", func() bool { return a.node.IsLeader() })
	var last CatchUpProgress
	if err := a.rep.CatchUp(ctx, "b", func(p CatchUpProgress) { last = p }); err != nil {
		t.Fatal(err)
	}
	if !hasAll(t, b.st, append(append(ids, ids2...), ids3...)) {
		t.Fatal("b lacks chunks after catching up")
	}
	if last.Copied != 10 || last.Checked != 30 {
		t.Fatalf("catch-up progress %+v, want 10 copied of 30 checked", last)
	}
	if bs, _ := BehindMembers(a.cat); len(bs) != 0 {
		t.Fatalf("still behind after catching up: %+v", bs)
	}
	es4, ids4 := entries(t, 3)
	if err := a.st.Put("acme", es4); err != nil {
		t.Fatal(err)
	}
	if !hasAll(t, b.st, ids4) {
		t.Fatal("after the catch-up, new chunks are not copied at once")
	}

	// Without the witness and the other member, nothing can be recorded:
	// the put fails and the gate stays shut.
	w.stop(t)
	b.stop(t)
	es5, _ := entries(t, 2)
	if err := a.st.Put("acme", es5); !errors.Is(err, ErrNotCopied) {
		t.Fatalf("put with no majority: %v", err)
	}
	if err := a.rep.Gate(); !errors.Is(err, ErrNotCopied) {
		t.Fatalf("gate with no majority: %v", err)
	}
	a.stop(t)
}

// TestStreamedCopy: entries are copied while they are written, in one
// request per appender: acknowledged, they are on the other member
// without a second copy; an aborted appender leaves nothing there; a
// stream cut by the member's death is made again or the member recorded
// behind.
func TestStreamedCopy(t *testing.T) {
	ca, err := pki.LoadOrCreate(t.TempDir(), testStart)
	if err != nil {
		t.Fatal(err)
	}
	a := startLeader(t, ca, "a")
	b := startData(t, ca, "b", t.TempDir(), "")
	w := startMember(t, ca, "w", t.TempDir(), "", true, 0)
	join(t, a, Member{ID: "b", Raft: b.addr, Agent: "agent-b"}, Member{ID: "w", Raft: w.addr, Witness: true})
	waitFor(t, "a to know b as a member", func() bool { ms, _ := Members(a.cat); return len(ms) == 3 })

	for i := 0; i < 3; i++ {
		es, ids := entries(t, 50)
		if err := a.st.Put("acme", es); err != nil {
			t.Fatal(err)
		}
		if !hasAll(t, b.st, ids) {
			t.Fatal("acknowledged chunks are not on the other data member")
		}
	}
	if s, r := a.rep.streamed.Load(), a.rep.recopied.Load(); s != 3 || r != 0 {
		t.Fatalf("%d copies streamed, %d made again; want 3 and 0", s, r)
	}

	// A garbage collection sweep applied here while entries streamed:
	// the member may have stored some before it applied the sweep, which
	// may delete them there, so the copy is made again.
	var sweepIdx atomic.Uint64
	sweepIdx.Store(1)
	a.rep.SetSweepIndex(sweepIdx.Load)
	es0, ids0 := entries(t, 4)
	app, err := a.st.Append("acme")
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range es0 {
		if i == 2 {
			sweepIdx.Store(2)
		}
		if err := app.Add(e.Header, e.Data); err != nil {
			t.Fatal(err)
		}
	}
	if err := app.Commit(); err != nil {
		t.Fatal(err)
	}
	if s, r := a.rep.streamed.Load(), a.rep.recopied.Load(); s != 3 || r != 1 || !hasAll(t, b.st, ids0) {
		t.Fatalf("after a sweep: %d copies streamed, %d made again; want 3 and 1, and the chunks on the member", s, r)
	}
	a.rep.recopied.Store(0)

	// An aborted appender: the member commits none of what it was sent.
	es, ids := entries(t, 10)
	app, err = a.st.Append("acme")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if err := app.Add(e.Header, e.Data); err != nil {
			t.Fatal(err)
		}
	}
	app.Abort()
	es2, ids2 := entries(t, 5)
	if err := a.st.Put("acme", es2); err != nil {
		t.Fatal(err)
	}
	if !hasAll(t, b.st, ids2) {
		t.Fatal("acknowledged chunks are not on the other data member")
	}
	has, err := b.st.Has("acme", ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range has {
		if h {
			t.Fatal("the other member stored entries of an aborted upload")
		}
	}

	// The member dies in the middle of a stream: the commit meets the
	// failed stream, copies again for DegradeAfter, then records it
	// behind (with the witness) and acknowledges.
	es3, ids3 := entries(t, 10)
	app, err = a.st.Append("acme")
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range es3 {
		if i == 5 {
			b.stop(t)
		}
		if err := app.Add(e.Header, e.Data); err != nil {
			t.Fatal(err)
		}
	}
	if err := app.Commit(); err != nil {
		t.Fatalf("commit with the other member gone mid-stream: %v", err)
	}
	if a.rep.recopied.Load() != 1 {
		t.Fatalf("%d copies made again, want 1", a.rep.recopied.Load())
	}
	bs, _ := BehindMembers(a.cat)
	if len(bs) != 1 || bs[0].Member != "b" {
		t.Fatalf("behind records: %+v", bs)
	}
	if !hasAll(t, a.st, ids3) {
		t.Fatal("the leader lacks what it acknowledged")
	}
	w.stop(t)
	a.stop(t)
}

func TestJoinToken(t *testing.T) {
	for i := 0; i < 50; i++ {
		var tok JoinToken
		rand.Read(tok.Secret[:])
		rand.Read(tok.CAPin[:])
		tok.Leader = "192.168.1.10:7443"
		got, err := ParseJoinToken(" " + tok.String() + "\n")
		if err != nil || got != tok {
			t.Fatalf("token %q: %v %+v", tok.String(), err, got)
		}
	}
	for _, bad := range []string{"", "vnpair1.", "vnpair1.a.b.c", "x" + strings.Repeat("a", 600)} {
		if _, err := ParseJoinToken(bad); !errors.Is(err, ErrInvalid) {
			t.Fatalf("token %q: %v", bad, err)
		}
	}
	sealed, err := SealSecrets([]byte("secret"), Secrets{CAKey: []byte("k"), MasterKey: make([]byte, 32)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenSecrets([]byte("other"), sealed); err == nil {
		t.Fatal("secrets opened with another token's secret")
	}
	if s, err := OpenSecrets([]byte("secret"), sealed); err != nil || string(s.CAKey) != "k" {
		t.Fatalf("open secrets: %v", err)
	}
}

// TestCopyWaitsForTheSweep: a copy (or a lack question) that names the
// leader's last sweep index is stored only once the member applied its log
// up to there, so a sweep it applies late never deletes a chunk the leader
// stored again after its own sweep.
func TestCopyWaitsForTheSweep(t *testing.T) {
	ca, err := pki.LoadOrCreate(t.TempDir(), testStart)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := startLeader(t, ca, "a")
	b := startData(t, ca, "b", t.TempDir(), "")
	join(t, a, Member{ID: "b", Raft: b.addr, Agent: "agent-b"})
	waitFor(t, "b to apply a's log", func() bool { return b.node.Applied() >= a.node.Applied() })

	es, ids := entries(t, 3)
	var body []byte
	for _, e := range es {
		body = append(body, e.Data...)
	}
	post := func(sweep uint64) error {
		return copyTo(ctx, a, b, "acme", sweep, body)
	}
	next := a.node.Applied() + 1 // a sweep b has not applied: not even in the log yet
	err = post(next)
	if err == nil || !strings.Contains(err.Error(), "not yet applied") || hasAll(t, b.st, ids[:1]) {
		t.Fatalf("a copy naming sweep %d, b at %d: %v, stored %v", next, b.node.Applied(), err, hasAll(t, b.st, ids[:1]))
	}
	if err := a.cat.CreateCompany(catalog.Company{Name: "globex", Sealed: []byte("s"), Created: testStart}); err != nil {
		t.Fatal(err)
	}
	if err := post(next); err != nil || !hasAll(t, b.st, ids) {
		t.Fatalf("the copy once b can apply %d: %v", next, err)
	}
}

// copyTo sends body (whole sealed entries) from a to b on a copy stream,
// in one frame and one commit.
func copyTo(ctx context.Context, a, b *dataMember, company string, sweep uint64, body []byte) error {
	q, err := a.node.copies.openEntries(ctx, b.node.cfg.ID, b.addr, company, sweep)
	if err != nil {
		return err
	}
	if _, err := q.add(body); err != nil {
		q.abort()
		return err
	}
	if err := q.commit(); err != nil {
		q.abort()
		return err
	}
	return q.end()
}

// TestCopyChecked: the member stores no entry whose tag does not open
// with the company's key (a leader sending garbage, or an entry whose
// header it altered), and refuses a frame past its bound, naming it; a
// good copy on the same pooled connection still goes through after.
func TestCopyChecked(t *testing.T) {
	ca, err := pki.LoadOrCreate(t.TempDir(), testStart)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := startLeader(t, ca, "a")
	b := startData(t, ca, "b", t.TempDir(), "")
	join(t, a, Member{ID: "b", Raft: b.addr, Agent: "agent-b"})

	es, ids := entries(t, 3)
	body := func() []byte {
		var b []byte
		for _, e := range es {
			b = append(b, e.Data...)
		}
		return b
	}
	flipBody := body()
	flipBody[len(es[0].Data)+pack.EntryHeaderSize+pack.NonceSize+5] ^= 1 // the second entry's ciphertext
	otherKey := pack.AppendEntry(nil, pack.NewSealer([32]byte{8}), &es[2].Header, []byte("sealed by someone else"))
	wrongID := bytes.Clone(es[1].Data)
	h := es[1].Header
	h.ID[0] ^= 1 // a valid header naming another id: its CRC is made again, not its tag
	hb := h.Marshal()
	copy(wrongID, hb[:])
	for name, bad := range map[string][]byte{"flipped": flipBody, "other key": otherKey, "wrong id": wrongID} {
		err := copyTo(ctx, a, b, "acme", 0, bad)
		if err == nil || !errors.Is(err, pack.ErrAuth) && !strings.Contains(err.Error(), "authentication") {
			t.Fatalf("%s: copy answered %v, want an authentication failure", name, err)
		}
		if n := stored(t, b.st, ids); n != 0 {
			t.Fatalf("%s: b stored %d entries of a refused copy", name, n)
		}
	}
	// A frame over the bound is refused before it is read.
	q, err := a.node.copies.openEntries(ctx, "b", b.addr, "acme", 0)
	if err != nil {
		t.Fatal(err)
	}
	q.cc.meta().Write([]byte{frameEntries, 0xff, 0xff, 0xff, 0x7f})
	q.cc.flush()
	q.pending++
	if err := q.end(); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("a frame of 2 GiB: %v, want the bound named", err)
	}
	if err := copyTo(ctx, a, b, "acme", 0, body()); err != nil || !hasAll(t, b.st, ids) {
		t.Fatalf("a good copy after the refused ones: %v", err)
	}
}

func stored(t *testing.T, st *store.Store, ids [][32]byte) int {
	t.Helper()
	has, err := st.Has("acme", ids)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, h := range has {
		if h {
			n++
		}
	}
	return n
}

// TestCatchUpStreams: a catch-up of many runs goes over several streams at
// once and the member ends with every chunk; an entry damaged on the
// leader's disk is refused by the member, the catch-up fails, and the
// member stays recorded behind.
func TestCatchUpStreams(t *testing.T) {
	ca, err := pki.LoadOrCreate(t.TempDir(), testStart)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := startLeader(t, ca, "a")
	b := startData(t, ca, "b", t.TempDir(), "")
	w := startMember(t, ca, "w", t.TempDir(), "", true, 0)
	join(t, a, Member{ID: "b", Raft: b.addr, Agent: "agent-b"}, Member{ID: "w", Raft: w.addr, Witness: true})
	waitFor(t, "a to know b as a member", func() bool { ms, _ := Members(a.cat); return len(ms) == 3 })
	defer w.stop(t)
	defer a.stop(t)

	bDir, bAddr := b.dir, b.addr
	b.stop(t)
	// 24 MiB of 512 KiB entries: runs of at most catchUpRun, several
	// for each stream.
	aead := pack.NewSealer([32]byte{7})
	var ids [][32]byte
	for range 3 {
		var es []store.Entry
		for range 16 {
			payload := make([]byte, 512<<10)
			rand.Read(payload)
			h := pack.EntryHeader{Kind: pack.KindData, PlainLen: uint32(len(payload))}
			rand.Read(h.ID[:])
			es = append(es, store.Entry{Header: h, Data: pack.AppendEntry(nil, aead, &h, payload)})
			ids = append(ids, h.ID)
		}
		if err := a.st.Put("acme", es); err != nil {
			t.Fatal(err)
		}
	}
	if bs, _ := BehindMembers(a.cat); len(bs) != 1 {
		t.Fatalf("behind records: %+v", bs)
	}

	// One entry's body damaged on the leader's disk (its header intact,
	// so the leader reads and sends it): the member refuses it.
	victim := ids[29]
	loc, err := a.st.Lookup("acme", victim)
	if err != nil {
		t.Fatal(err)
	}
	packs, _ := filepath.Glob(filepath.Join(a.dir, "store", "*", "*", fmt.Sprintf("%08x.pack", loc.Pack)))
	if len(packs) != 1 {
		t.Fatalf("pack %08x of the victim: %v", loc.Pack, packs)
	}
	flip := func() {
		f, err := os.OpenFile(packs[0], os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		at := int64(loc.Offset) + pack.EntryHeaderSize + int64(loc.BodyLen)/2
		var c [1]byte
		f.ReadAt(c[:], at)
		c[0] ^= 1
		if _, err := f.WriteAt(c[:], at); err != nil {
			t.Fatal(err)
		}
	}
	flip()
	b = startData(t, ca, "b", bDir, bAddr)
	defer func() { b.stop(t) }()
	waitFor(t, "a to lead", func() bool { return a.node.IsLeader() })
	err = a.rep.CatchUp(ctx, "b", nil)
	if err == nil || !strings.Contains(err.Error(), "authentication") {
		t.Fatalf("catch-up of a damaged entry: %v, want the member's refusal", err)
	}
	if has, _ := b.st.Has("acme", [][32]byte{victim}); has[0] {
		t.Fatal("the member stored a damaged entry")
	}
	if bs, _ := BehindMembers(a.cat); len(bs) != 1 {
		t.Fatalf("behind records after a failed catch-up: %+v", bs)
	}

	flip() // repaired
	var last CatchUpProgress
	if err := a.rep.CatchUp(ctx, "b", func(p CatchUpProgress) { last = p }); err != nil {
		t.Fatal(err)
	}
	if !hasAll(t, b.st, ids) {
		t.Fatal("b lacks chunks after catching up")
	}
	if last.Checked != int64(len(ids)) || last.Copied == 0 || last.Copied > int64(len(ids)) {
		t.Fatalf("catch-up progress %+v, want %d checked", last, len(ids))
	}
	if bs, _ := BehindMembers(a.cat); len(bs) != 0 {
		t.Fatalf("still behind after catching up: %+v", bs)
	}
}

// TestCopyBeforeStore: a member whose pair address serves while its store
// still opens (a restart) refuses a lack question or a copy, naming why,
// rather than serve it from no store (a catch-up asks as soon as the
// member answers its status).
func TestCopyBeforeStore(t *testing.T) {
	ca, err := pki.LoadOrCreate(t.TempDir(), testStart)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := startLeader(t, ca, "a")
	defer a.stop(t)
	b := &dataMember{testMember: startMember(t, ca, "b", t.TempDir(), "", false, 0)}
	defer b.testMember.stop(t)
	b.rep = NewReplicator(b.node, nil, nil, zaptest.NewLogger(t).Named("b"), 2*time.Second)
	b.rep.SetOpener(func(string) (*pack.Sealer, error) { return pack.NewSealer([32]byte{7}), nil })
	b.node.SetCopyHandler(b.rep.ServeCopy)
	_, ids := entries(t, 2)
	_, err = a.node.copies.lack(ctx, "b", b.addr, "acme", 0, append(ids[0][:], ids[1][:]...))
	if err == nil || !strings.Contains(err.Error(), "store is not open") {
		t.Fatalf("lack before the store: %v, want a refusal naming the store", err)
	}
	es, _ := entries(t, 2)
	err = copyTo(ctx, a, b, "acme", 0, append(es[0].Data, es[1].Data...))
	if err == nil || !strings.Contains(err.Error(), "store is not open") {
		t.Fatalf("copy before the store: %v, want a refusal naming the store", err)
	}
}
