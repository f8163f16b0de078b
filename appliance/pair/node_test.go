package pair

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/pki"
	"vaultnode/internal/wire"
)

type testMember struct {
	id   string
	dir  string
	cat  *catalog.Catalog
	node *Node
	addr string
}

var testStart = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

// startMember starts (or restarts) a member on loopback; witness members
// have no catalog.
func startMember(t testing.TB, ca *pki.Authority, id, dir, addr string, witness bool, threshold uint64) *testMember {
	t.Helper()
	m := &testMember{id: id, dir: dir}
	cert, err := ca.LoadOrCreateMember(filepath.Join(dir, "tls"), id, testStart)
	if err != nil {
		t.Fatal(err)
	}
	var cur atomic.Pointer[Node]
	if !witness {
		m.cat, err = catalog.Open(dir, catalog.Options{Log: zaptest.NewLogger(t).Named(id), Submit: func(cmd catalog.Command) (any, error) {
			if n := cur.Load(); n != nil {
				return n.Submit(cmd)
			}
			return nil, catalog.ErrNotLeader
		}})
		if err != nil {
			t.Fatal(err)
		}
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	m.node, err = Start(Config{ID: id, Dir: filepath.Join(dir, "pair"), Bind: addr, Agent: "agent-" + id,
		TLS: MemberTLS(cert, ca.Pool()), Catalog: m.cat, Log: zaptest.NewLogger(t).Named(id),
		HeartbeatTimeout: time.Second, SnapshotThreshold: threshold})
	if err != nil {
		t.Fatal(err)
	}
	cur.Store(m.node)
	m.addr = m.node.Addr()
	return m
}

func (m *testMember) stop(t testing.TB) {
	t.Helper()
	if err := m.node.Close(); err != nil {
		t.Logf("close %s: %v", m.id, err)
	}
	if m.cat != nil {
		if err := m.cat.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// promote waits until the leader made every non-voter a voter.
func promote(t testing.TB, n *Node, want int) {
	t.Helper()
	got := 0
	waitFor(t, "members to become voters", func() bool {
		ids, err := n.PromoteReady(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		got += len(ids)
		return got >= want
	})
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// state is what the test compares between members' catalogs.
func state(t *testing.T, c *catalog.Catalog) string {
	t.Helper()
	var b strings.Builder
	cos, err := c.Companies()
	if err != nil {
		t.Fatal(err)
	}
	for _, co := range cos {
		fmt.Fprintf(&b, "company %s %x\n", co.Name, co.Sealed)
	}
	cps, _ := c.Computers("")
	for _, cp := range cps {
		fmt.Fprintf(&b, "computer %s %s revoked=%v\n", cp.ID, cp.Company, cp.Revoked != nil)
		vs, _ := c.VersionRecords(cp.ID, "")
		for _, v := range vs {
			fmt.Fprintf(&b, "  version %s@%d %x\n", v.Config, v.Seq, v.ManifestID[:4])
		}
	}
	ms, _ := Members(c)
	for _, m := range ms {
		fmt.Fprintf(&b, "member %s %s %s\n", m.ID, m.Agent, m.Raft)
	}
	return b.String()
}

func leaderOf(ms ...*testMember) *testMember {
	for _, m := range ms {
		if m != nil && m.node.IsLeader() {
			return m
		}
	}
	return nil
}

// TestPairCatalog: a catalog of two data members and a witness over
// loopback TLS. Commands go through the leader, a follower refuses writes
// naming the leader, both catalogs end identical; the leader's death
// elects the other data member with the witness's vote; the dead member
// restarts, catches up, and a member added late gets a snapshot.
func TestPairCatalog(t *testing.T) {
	ca, err := pki.LoadOrCreate(t.TempDir(), testStart)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := startMember(t, ca, "a", t.TempDir(), "", false, 32)
	if err := a.node.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	b := startMember(t, ca, "b", t.TempDir(), "", false, 32)
	w := startMember(t, ca, "w", t.TempDir(), "", true, 32)
	for _, m := range []*testMember{b, w} {
		if err := a.node.AddMember(ctx, Member{ID: m.id, Raft: m.addr, Agent: "agent-" + m.id, Witness: m.cat == nil}); err != nil {
			t.Fatal(err)
		}
	}
	promote(t, a.node, 2)
	if err := a.cat.CreateCompany(catalog.Company{Name: "acme", Sealed: []byte("sealed"), Created: testStart}); err != nil {
		t.Fatal(err)
	}
	if err := a.cat.AddToken([]byte("tok"), catalog.Token{Company: "acme", Expires: testStart.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := a.cat.EnrollComputer([]byte("tok"), testStart, catalog.Computer{ID: "pc-1", Company: "acme", Enrolled: testStart}); err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 40; seq++ { // past the snapshot threshold
		if err := a.cat.AddVersion(wire.Manifest{Company: "acme", Computer: "pc-1", Config: "home", Seq: seq, Finished: testStart}, [32]byte{byte(seq)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.cat.AddVersion(wire.Manifest{Company: "acme", Computer: "pc-1", Config: "home", Seq: 3}, [32]byte{}); !errors.Is(err, catalog.ErrExists) {
		t.Fatalf("a refused command through the log: %v", err)
	}
	err = b.cat.CreateCompany(catalog.Company{Name: "other", Sealed: []byte("x")})
	if !errors.Is(err, catalog.ErrNotLeader) || !strings.Contains(err.Error(), "leader is a at agent-a") {
		t.Fatalf("a write on the follower: %v", err)
	}
	waitFor(t, "b to apply the leader's log", func() bool { return b.node.Applied() >= a.node.Applied() })
	if diff := cmp.Diff(state(t, a.cat), state(t, b.cat)); diff != "" {
		t.Fatalf("catalogs differ (-a +b):\n%s", diff)
	}
	if _, err := catalog.ReadSealed(b.dir, "acme"); err != nil {
		t.Fatalf("the follower lacks the sealed company secret beside its catalog: %v", err)
	}

	// The leader dies: b leads with the witness's vote.
	aDir, aAddr := a.dir, a.addr
	a.stop(t)
	waitFor(t, "b to lead", func() bool { return b.node.IsLeader() })
	if err := b.cat.AddVersion(wire.Manifest{Company: "acme", Computer: "pc-1", Config: "home", Seq: 41}, [32]byte{41}); err != nil {
		t.Fatal(err)
	}
	if err := b.cat.Revoke("pc-1", testStart.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// a comes back on its address and catches up from the log.
	a = startMember(t, ca, "a", aDir, aAddr, false, 32)
	waitFor(t, "a to catch up", func() bool { return a.node.Applied() >= b.node.Applied() })
	if diff := cmp.Diff(state(t, b.cat), state(t, a.cat)); diff != "" {
		t.Fatalf("restarted member differs (-leader +a):\n%s", diff)
	}
	// An empty member added now gets the catalog as a snapshot: the log
	// before it is compacted away.
	if err := b.node.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	var restored atomic.Int64
	testRestored = func() { restored.Add(1) }
	defer func() { testRestored = nil }()
	c := startMember(t, ca, "c", t.TempDir(), "", false, 32)
	if err := b.node.AddMember(ctx, Member{ID: "c", Raft: c.addr, Agent: "agent-c"}); err != nil {
		t.Fatal(err)
	}
	promote(t, b.node, 1)
	waitFor(t, "c to catch up", func() bool { return c.node.Applied() >= b.node.Applied() })
	if diff := cmp.Diff(state(t, b.cat), state(t, c.cat)); diff != "" {
		t.Fatalf("member made from a snapshot differs (-leader +c):\n%s", diff)
	}
	if restored.Load() == 0 {
		t.Fatal("the new member was not made from a snapshot")
	}
	if rs, _ := catalog.ReadRevocations(c.dir, func(int, error) {}); len(rs) != 1 || rs[0].Computer != "pc-1" {
		t.Fatalf("revocations beside the restored catalog: %v", rs)
	}
	st := b.node.Status()
	if st.State != "Leader" || len(st.Members) != 4 || st.Leader != "b" {
		t.Fatalf("status: %+v", st)
	}
	for _, m := range []*testMember{a, b, c, w} {
		m.stop(t)
	}
}
