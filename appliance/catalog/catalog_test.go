package catalog

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"vaultnode/internal/wire"
)

func TestCatalog(t *testing.T) {
	c, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	if err := c.CreateCompany(Company{Name: "Bad Name"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid company name: %v", err)
	}
	if err := c.CreateCompany(Company{Name: "acme", Sealed: []byte("sealed")}); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateCompany(Company{Name: "acme", Sealed: []byte("sealed")}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate company: %v", err)
	}
	if err := c.AddToken([]byte("s1"), Token{Company: "nope", Expires: now.Add(time.Hour)}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("token for an unknown company: %v", err)
	}
	c.AddToken([]byte("s1"), Token{Company: "acme", Expires: now.Add(time.Hour)})
	c.AddToken([]byte("old"), Token{Company: "acme", Expires: now.Add(-time.Second)})
	mk := func(company string) (Computer, error) {
		return Computer{ID: NewComputerID(), Company: company, Name: "pc", Enrolled: now}, nil
	}
	cp, err := c.Enroll([]byte("s1"), now, mk)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Enroll([]byte("s1"), now, mk); !errors.Is(err, ErrToken) {
		t.Fatalf("a token worked twice: %v", err)
	}
	if _, err := c.Enroll([]byte("old"), now, mk); !errors.Is(err, ErrToken) {
		t.Fatalf("an expired token worked: %v", err)
	}
	if _, err := c.Enroll([]byte("never"), now, mk); !errors.Is(err, ErrToken) {
		t.Fatalf("an unknown token worked: %v", err)
	}
	if got, err := c.FindComputer("pc"); err != nil || got.ID != cp.ID {
		t.Fatalf("find by name: %v %v", got, err)
	}

	cfg, err := c.PutConfig(cp.ID, wire.Config{Name: "home", Paths: []string{"/home"}}, now)
	if err != nil || cfg.Revision != 1 || !cfg.Created.Equal(now) {
		t.Fatalf("first config: %+v %v", cfg, err)
	}
	cfg, _ = c.PutConfig(cp.ID, wire.Config{Name: "home", Paths: []string{"/srv"}}, now.Add(time.Hour))
	if cfg.Revision != 2 || !cfg.Created.Equal(now) {
		t.Fatalf("a changed configuration keeps its creation time and bumps its revision: %+v", cfg)
	}
	c.PutConfig(cp.ID, wire.Config{Name: "homes", Paths: []string{"/x"}}, now) // a prefix of no other name
	for seq := uint64(1); seq <= 3; seq++ {
		if err := c.AddVersion(wire.Manifest{Computer: cp.ID, Config: "home", Seq: seq}, [32]byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	c.AddVersion(wire.Manifest{Computer: cp.ID, Config: "homes", Seq: 1}, [32]byte{1})
	if err := c.AddVersion(wire.Manifest{Computer: cp.ID, Config: "home", Seq: 3}, [32]byte{1}); !errors.Is(err, ErrExists) {
		t.Fatalf("a version committed twice: %v", err)
	}
	if last, _ := c.LastSeq(cp.ID, "home"); last != 3 {
		t.Fatalf("LastSeq = %d, want 3", last)
	}
	if vs, _ := c.Versions(cp.ID, "home"); len(vs) != 3 || vs[0].Seq != 1 || vs[2].Seq != 3 {
		t.Fatalf("versions of home: %+v", vs)
	}
	for i := 1; i <= 2; i++ {
		j, err := c.AddJournal(cp.ID, "home", wire.Journal{Base: 3, Time: now})
		if err != nil || j.N != uint64(i) {
			t.Fatalf("journal record %d: %+v %v", i, j, err)
		}
	}
	if js, _ := c.Journal(cp.ID, "home", 3); len(js) != 2 {
		t.Fatalf("journal on version 3: %d records", len(js))
	}
	if js, _ := c.Journal(cp.ID, "home", 2); len(js) != 0 {
		t.Fatalf("journal on version 2: %d records, want none", len(js))
	}
	if err := c.Revoke(cp.ID, now); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Computer(cp.ID); got.Revoked == nil {
		t.Fatal("revocation not recorded")
	}
}

func TestNewestVersions(t *testing.T) {
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	c, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	enrolled(t, c, now, "pc-1", "pc-2")
	add := func(cp, cfg string, seq uint64) {
		t.Helper()
		if err := c.AddVersion(wire.Manifest{Company: "acme", Computer: cp, Config: cfg, Seq: seq}, [32]byte{byte(seq)}); err != nil {
			t.Fatal(err)
		}
	}
	for seq := uint64(1); seq <= 300; seq++ {
		add("pc-1", "home", seq)
	}
	add("pc-1", "homes", 1)
	add("pc-1", "homes", 2)
	add("pc-2", "etc", 7)
	vs, err := c.NewestVersions()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vs {
		got = append(got, fmt.Sprintf("%s/%s@%d", v.Computer, v.Config, v.Seq))
	}
	if want := "pc-1/home@300 pc-1/homes@2 pc-2/etc@7"; strings.Join(got, " ") != want {
		t.Fatalf("newest versions %v, want %s", got, want)
	}
}
