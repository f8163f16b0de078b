package catalog

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"

	"vaultnode/internal/clock"
)

// TestUsers: the user and session commands' rules, and that a replay of
// their commands gives the same catalog.
func TestUsers(t *testing.T) {
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
	hash := "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
	ann := User{Name: "ann", Kind: UserCompany, Company: "acme", Caps: []string{"view"}, Password: hash, Created: start}
	for _, bad := range []User{
		{Name: "Bad Name", Kind: UserCompany, Company: "acme", Password: hash},
		{Name: "x", Kind: "root", Password: hash},
		{Name: "x", Kind: UserOperator, Company: "acme", Password: hash},
		{Name: "x", Kind: UserCompany, Company: "nope", Password: hash},
		{Name: "x", Kind: UserCompany, Company: "acme"},
		{Name: "x", Kind: UserCompany, Company: "acme", Password: hash, Limited: true, Computers: []string{"pc-none"}},
		{Name: "x", Kind: UserCompany, Company: "acme", Password: hash, Computers: []string{"pc-1"}},
	} {
		if err := a.PutUser(bad, true, false); err == nil {
			t.Errorf("user %+v accepted", bad)
		}
	}
	if err := a.PutUser(ann, true, false); err != nil {
		t.Fatal(err)
	}
	if err := a.PutUser(ann, true, false); !errors.Is(err, ErrExists) {
		t.Fatalf("a second create: %v", err)
	}
	// Lockout: the third failure (max 3) locks, and counting starts again.
	for i := 0; i < 3; i++ {
		if err := a.LoginFailed("ann", start, 3, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	u, _ := a.User("ann")
	if !u.LockedUntil.Equal(start.Add(time.Hour)) || u.Failures != 0 {
		t.Fatalf("after 3 failures: locked until %v, failures %d", u.LockedUntil, u.Failures)
	}
	// A replacement keeps the lockout unless it unlocks.
	ann.Caps = []string{"view", "restore"}
	a.PutUser(ann, false, false)
	if u, _ = a.User("ann"); u.LockedUntil.IsZero() || len(u.Caps) != 2 {
		t.Fatalf("replacement: %+v", u)
	}
	a.PutUser(ann, false, true)
	if u, _ = a.User("ann"); !u.LockedUntil.IsZero() {
		t.Fatal("unlock kept the lockout")
	}
	// Sessions: stored by hash; expired ones and those beyond the cap go.
	sess := func(i int) [32]byte { return sha256.Sum256([]byte(fmt.Sprint("s", i))) }
	for i := 0; i < MaxSessionsPerUser+5; i++ {
		at := start.Add(time.Duration(i) * time.Minute)
		if err := a.PutSession(sess(i), Session{User: "ann", Created: at, Expires: at.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.PutSession(sess(1000), Session{User: "nobody", Created: start, Expires: start.Add(time.Hour)}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a session of an unknown user: %v", err)
	}
	if _, err := a.Session(sess(0)); !errors.Is(err, ErrNotFound) {
		t.Errorf("the oldest session beyond the cap is still there: %v", err)
	}
	if _, err := a.Session(sess(MaxSessionsPerUser + 4)); err != nil {
		t.Errorf("the newest session: %v", err)
	}
	late := start.Add(3 * time.Hour)
	a.PutSession(sess(2000), Session{User: "ann", Created: late, Expires: late.Add(time.Hour)})
	if _, err := a.Session(sess(MaxSessionsPerUser + 4)); !errors.Is(err, ErrNotFound) {
		t.Errorf("an expired session survived the next sign-in: %v", err)
	}
	if err := a.DeleteSessionsOf("ann"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Session(sess(2000)); !errors.Is(err, ErrNotFound) {
		t.Error("a session survived sign-out everywhere")
	}
	a.PutSession(sess(3000), Session{User: "ann", Created: late, Expires: late.Add(time.Hour)})
	a.PutSession(sess(3001), Session{User: "ann", Created: late, Expires: late.Add(2 * time.Hour)})
	if n, err := a.ExpireSessions(late.Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("expire at the first's expiry: %d %v, want 1", n, err)
	}
	if _, err := a.Session(sess(3001)); err != nil {
		t.Fatalf("an unexpired session went: %v", err)
	}
	if _, err := a.Session(sess(3000)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an expired session stayed: %v", err)
	}
	a.PutSession(sess(3000), Session{User: "ann", Created: late, Expires: late.Add(time.Hour)})
	if err := a.DeleteUser("ann"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Session(sess(3000)); !errors.Is(err, ErrNotFound) {
		t.Error("a deleted user's session survived")
	}

	// Replay into a catalog with the same company and computer.
	b, err := Open(t.TempDir(), Options{Clock: clock.NewFake(start)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, cmd := range log {
		enc, _ := cmd.Marshal()
		dec, err := DecodeCommand(enc)
		if err != nil {
			t.Fatal(err)
		}
		b.ApplyResult(dec) // refused ones are refused again
	}
	if da, db := dump(t, a), dump(t, b); da != db {
		t.Fatalf("replayed catalog differs:\n%s\n---\n%s", da, db)
	}
}
