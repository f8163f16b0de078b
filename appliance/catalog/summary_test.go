package catalog

import (
	"testing"
	"time"

	"vaultnode/internal/wire"
)

// TestVersionSummary: the count, the newest and the newest complete
// version, for a configuration whose newest versions are incomplete, one
// with none complete, one with none at all, and a configuration whose name
// begins another's.
func TestVersionSummary(t *testing.T) {
	c, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	c.CreateCompany(Company{Name: "acme", Sealed: []byte("sealed")})
	if err := c.RecordComputer(Computer{ID: "pc-1", Company: "acme", Name: "pc", Enrolled: now}); err != nil {
		t.Fatal(err)
	}
	add := func(config string, seq uint64, unreadable int64) {
		t.Helper()
		m := wire.Manifest{Company: "acme", Computer: "pc-1", Config: config, Seq: seq, Started: now.Add(time.Duration(seq) * time.Hour),
			Totals: wire.Totals{Files: int64(seq), Unreadable: unreadable}}
		if err := c.AddVersion(m, [32]byte{}); err != nil {
			t.Fatal(err)
		}
	}
	for s := uint64(1); s <= 300; s++ {
		add("home", s, map[bool]int64{true: 1}[s > 297]) // 298..300 incomplete
	}
	add("homework", 1, 1)
	n, newest, complete, err := c.VersionSummary("pc-1", "home")
	if err != nil || n != 300 || newest == nil || newest.Seq != 300 || complete == nil || complete.Seq != 297 {
		t.Fatalf("home: %d versions, newest %v, complete %v, %v; want 300, 300, 297", n, newest, complete, err)
	}
	n, newest, complete, _ = c.VersionSummary("pc-1", "homework")
	if n != 1 || newest.Seq != 1 || complete != nil {
		t.Fatalf("homework: %d, %v, %v; want 1 version, none complete", n, newest, complete)
	}
	if n, newest, complete, _ = c.VersionSummary("pc-1", "none"); n != 0 || newest != nil || complete != nil {
		t.Fatalf("a configuration without versions: %d %v %v", n, newest, complete)
	}
}
