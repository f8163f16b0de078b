package catalog

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"vaultnode/internal/clock"
)

// TestContactAndAudit: a contact must be one bare address of a known
// computer; the audit log numbers its entries, lists them newest first
// from any point, keeps only the newest maxAudit, and replays to the same
// catalog.
func TestContactAndAudit(t *testing.T) {
	start := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	var log []Command
	var a *Catalog
	a, err := Open(t.TempDir(), Options{Clock: clock.NewFake(start), Submit: func(cmd Command) (any, error) {
		log = append(log, cmd)
		return a.ApplyResult(cmd)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	enrolled(t, a, start, "pc-1")
	for _, bad := range []string{"not an address", "Ann <ann@example.com>", "a@b.c, d@e.f", string(make([]byte, 300)) + "@x.y"} {
		if err := a.SetContact("pc-1", bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("contact %q: %v, want invalid", bad, err)
		}
	}
	if err := a.SetContact("pc-none", "ann@example.com"); !errors.Is(err, ErrNotFound) {
		t.Errorf("contact of an unknown computer: %v", err)
	}
	if err := a.SetContact("pc-1", "ann@example.com"); err != nil {
		t.Fatal(err)
	}
	if cp, _ := a.Computer("pc-1"); cp.Contact != "ann@example.com" {
		t.Fatalf("contact %q", cp.Contact)
	}

	old := maxAudit
	maxAudit = 5
	defer func() { maxAudit = old }()
	if err := a.Audit(AuditEntry{Time: start}); !errors.Is(err, ErrInvalid) {
		t.Errorf("an entry naming no one: %v", err)
	}
	for i := 1; i <= 8; i++ {
		if err := a.Audit(AuditEntry{Time: start.Add(time.Duration(i) * time.Minute), Principal: "operator admin", Kind: "operator",
			Action: "POST /x", Detail: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	seqs := func(before uint64, n int) []uint64 {
		var out []uint64
		if err := a.AuditLog(before, func(e AuditEntry) bool { out = append(out, e.Seq); return len(out) < n }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := fmt.Sprint(seqs(0, 100)); got != "[8 7 6 5 4]" {
		t.Errorf("the log keeps %s, want the newest five [8 7 6 5 4]", got)
	}
	if got := fmt.Sprint(seqs(7, 2)); got != "[6 5]" {
		t.Errorf("before 7, two: %s", got)
	}
	if got := fmt.Sprint(seqs(100, 1)); got != "[8]" {
		t.Errorf("before 100: %s", got)
	}
	if got := fmt.Sprint(seqs(4, 10)); got != "[]" {
		t.Errorf("before the oldest kept: %s", got)
	}
	b, err := Open(t.TempDir(), Options{Clock: clock.NewFake(start)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, cmd := range log {
		enc, _ := cmd.Marshal()
		dec, err := DecodeCommand(enc)
		if err == nil {
			err = b.Apply(dec)
		}
		if err != nil && cmd.Kind != KindSetContact && cmd.Kind != KindAudit {
			t.Fatalf("replay %s: %v", cmd.Kind, err)
		}
	}
	if da, db := dump(t, a), dump(t, b); da != db {
		t.Errorf("replayed catalog differs:\n%s\n---\n%s", da, db)
	}
}
