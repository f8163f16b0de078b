package catalog

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRevocationFileTorn: a revocation line torn by a crash is skipped with
// a warning, and the next revocation still lands on a line of its own.
func TestRevocationFileTorn(t *testing.T) {
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	enrolled(t, c, now, "pc-1", "pc-2")
	if err := c.Revoke("pc-1", now); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, RevocationFile), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"computer":"pc-2","comp`) // the crash
	f.Close()
	if err := c.Revoke("pc-2", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	var bad []int
	rs, err := ReadRevocations(dir, func(line int, err error) {
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("line %d: %v", line, err)
		}
		bad = append(bad, line)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || rs[0].Computer != "pc-1" || rs[1].Computer != "pc-2" || len(bad) != 1 || bad[0] != 2 {
		t.Fatalf("revocations %+v, bad lines %v", rs, bad)
	}
}

// TestRevocationLinesRestoredAtOpen: a revocation the catalog holds and
// DATA/revoked lacks (a crash after a pair member's catalog was replaced,
// before the files beside it were rewritten) is written at the next open,
// once.
func TestRevocationLinesRestoredAtOpen(t *testing.T) {
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	enrolled(t, c, now, "pc-1", "pc-2")
	if err := c.Revoke("pc-1", now); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := os.Remove(filepath.Join(dir, RevocationFile)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		c, err := Open(dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	rs, err := ReadRevocations(dir, func(line int, err error) { t.Errorf("line %d: %v", line, err) })
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].Computer != "pc-1" || !rs[0].Time.Equal(now) {
		t.Fatalf("DATA/revoked after two opens: %+v, want pc-1's revocation once", rs)
	}
}

// FuzzRevocations: any DATA/revoked decodes to revocations of valid
// computer ids and errors marked corrupt, never a panic.
func FuzzRevocations(f *testing.F) {
	f.Add([]byte(`{"computer":"pc-1","company":"acme","name":"web","time":"2026-12-01T08:00:00Z"}` + "\n"))
	f.Add([]byte("{\"computer\":\"pc-1\"}\n{\"comp\n\n{\"computer\":\"../x\"}\n"))
	f.Add(make([]byte, MaxRevocationLine+10))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, RevocationFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
		rs, err := ReadRevocations(dir, func(line int, err error) {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("line %d: %v", line, err)
			}
		})
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatal(err)
		}
		for _, r := range rs {
			if ValidComputerID(r.Computer) != nil {
				t.Fatalf("revocation of %q accepted", r.Computer)
			}
		}
	})
}

// TestSealedKept: a company's sealed secret is written beside the catalog
// when the company is made, and for companies of an older catalog at open.
func TestSealedKept(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CreateCompany(Company{Name: "acme", Sealed: []byte("sealed-acme")}); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadSealed(dir, "acme"); err != nil || string(b) != "sealed-acme" {
		t.Fatalf("sealed secret beside the catalog: %q %v", b, err)
	}
	c.Close()
	os.RemoveAll(filepath.Join(dir, KeysDir)) // a catalog from before DATA/keys
	if c, err = Open(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if names, err := SealedCompanies(dir); err != nil || len(names) != 1 || names[0] != "acme" {
		t.Fatalf("sealed companies after open: %v %v", names, err)
	}
	if err := os.WriteFile(SealedPath(dir, "big"), make([]byte, MaxSealed+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSealed(dir, "big"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("oversized sealed file: %v", err)
	}
}
