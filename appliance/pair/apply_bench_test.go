package pair

import (
	"context"
	"fmt"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/pki"
)

// BenchmarkPairApply times one small catalog command through the raft log
// of two data members on loopback: the leader stores the entry, the member
// stores it, both answer, and the leader applies it to its catalog. Most
// of it is synced writes: the log store's on each member, in series, and
// the catalog's commit (docs/pair.md, "The log store").
func BenchmarkPairApply(b *testing.B) {
	ca, err := pki.LoadOrCreate(b.TempDir(), testStart)
	if err != nil {
		b.Fatal(err)
	}
	m := startMember(b, ca, "a", b.TempDir(), "", false, 8192)
	if err := m.node.Bootstrap(context.Background()); err != nil {
		b.Fatal(err)
	}
	o := startMember(b, ca, "b", b.TempDir(), "", false, 8192)
	if err := m.node.AddMember(context.Background(), Member{ID: o.id, Raft: o.addr, Agent: "agent-b"}); err != nil {
		b.Fatal(err)
	}
	promote(b, m.node, 1)
	if err := m.cat.CreateCompany(catalog.Company{Name: "acme", Sealed: []byte("sealed"), Created: testStart}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := m.cat.AddToken([]byte(fmt.Sprint("tok", i)), catalog.Token{Company: "acme", Expires: testStart.Add(time.Hour)}); err != nil {
			b.Fatal(err)
		}
	}
}
