package catalog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"vaultnode/internal/clock"
	"vaultnode/internal/wire"
)

// dump lists every key and value of every bucket.
func dump(t *testing.T, c *Catalog) string {
	t.Helper()
	var b bytes.Buffer
	err := c.db.View(func(tx *bbolt.Tx) error {
		return tx.ForEach(func(name []byte, bk *bbolt.Bucket) error {
			return bk.ForEach(func(k, v []byte) error {
				fmt.Fprintf(&b, "%s %x %s\n", name, k, v)
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestCommandsReplay: the commands a catalog's methods build, encoded,
// decoded and applied in the same order to another catalog, give the same
// catalog and the same files beside it: what raft needs of them.
func TestCommandsReplay(t *testing.T) {
	start := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	clk := clock.NewFake(start)
	var log [][]byte
	var a *Catalog
	dirA, dirB := t.TempDir(), t.TempDir()
	var err error
	a, err = Open(dirA, Options{Clock: clk, Submit: func(cmd Command) (any, error) {
		b, err := cmd.Marshal()
		if err != nil {
			return nil, err
		}
		log = append(log, b)
		return a.ApplyResult(cmd)
	}})
	if err != nil {
		t.Fatal(err)
	}
	enrolled(t, a, start, "pc-1", "pc-2")
	if _, err := a.PutConfig("pc-1", wire.Config{Name: "home", Paths: []string{"/home"}}, start); err != nil {
		t.Fatal(err)
	}
	if _, err := a.PutConfig("pc-1", wire.Config{Name: "home", Paths: []string{"/srv"}}, start.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		if err := a.AddVersion(wire.Manifest{Company: "acme", Computer: "pc-1", Config: "home", Seq: seq, Finished: start}, [32]byte{byte(seq)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.AddVersion(wire.Manifest{Company: "acme", Computer: "pc-1", Config: "home", Seq: 3}, [32]byte{}); !errors.Is(err, ErrExists) {
		t.Fatalf("a version twice: %v", err)
	}
	for i := 0; i < 3; i++ {
		if _, err := a.AddJournal("pc-1", "home", wire.Journal{Base: 3, Time: start}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.UpdateComputer("pc-1", func(cp *Computer) error {
		cp.Settings.RunNow = map[string]int64{"home": 1}
		cp.Settings.Bandwidth = "1Mbit/s"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.UpdateComputer("pc-1", func(cp *Computer) error { cp.Name = "renamed"; return nil }); !errors.Is(err, ErrInvalid) {
		t.Fatalf("UpdateComputer changed more than settings: %v", err)
	}
	if err := a.PutReport("pc-2", wire.Report{Config: "etc", State: wire.AgentIdle, Time: start.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	a.Seen("pc-1", start.Add(2*time.Hour))
	if err := a.FlushContacts(); err != nil {
		t.Fatal(err)
	}
	if err := a.Revoke("pc-2", start.Add(3*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteConfig("pc-1", "home"); err != nil {
		t.Fatal(err)
	}

	b, err := Open(dirB, Options{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i, raw := range log {
		cmd, err := DecodeCommand(raw)
		if err != nil {
			t.Fatalf("command %d: %v", i, err)
		}
		b.Apply(cmd) // failed commands fail the same way on both
	}
	if da, db := dump(t, a), dump(t, b); da != db {
		t.Fatalf("replayed catalog differs:\n--- original\n%s--- replayed\n%s", da, db)
	}
	for _, f := range []string{RevocationFile, filepath.Join(KeysDir, "acme.sealed")} {
		fa, _ := os.ReadFile(filepath.Join(dirA, f))
		fb, _ := os.ReadFile(filepath.Join(dirB, f))
		if len(fa) == 0 || !bytes.Equal(fa, fb) {
			t.Fatalf("%s differs after replay: %q vs %q", f, fa, fb)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestEnrollRace: a token consumed between reading it and applying the
// enroll command is refused, and the computer made for it is not recorded.
func TestEnrollRace(t *testing.T) {
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	c, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	enrolled(t, c, now)
	secret := []byte("tok")
	c.AddToken(secret, Token{Company: "acme", Expires: now.Add(time.Hour)})
	_, err = c.Enroll(secret, now, func(company string) (Computer, error) {
		// Another enrolment wins meanwhile.
		if err := c.EnrollComputer(secret, now, Computer{ID: "pc-first", Company: company}); err != nil {
			t.Fatal(err)
		}
		return Computer{ID: "pc-second", Company: company}, nil
	})
	if !errors.Is(err, ErrToken) {
		t.Fatalf("second enrolment with one token: %v", err)
	}
	if _, err := c.Computer("pc-second"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the losing computer was recorded: %v", err)
	}
	if err := c.EnrollComputer([]byte("other"), now, Computer{ID: "pc-x", Company: "acme"}); !errors.Is(err, ErrToken) {
		t.Fatalf("enrol with an unknown token: %v", err)
	}
	c.AddToken([]byte("t2"), Token{Company: "acme", Expires: now.Add(time.Hour)})
	if err := c.EnrollComputer([]byte("t2"), now, Computer{ID: "pc-y", Company: "other"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("enrol into another company than the token's: %v", err)
	}
}

// TestBadRecords: a damaged record is named when asked for and skipped
// when listing; nothing panics.
func TestBadRecords(t *testing.T) {
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	c, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	enrolled(t, c, now, "pc-1", "pc-2")
	c.AddVersion(wire.Manifest{Company: "acme", Computer: "pc-1", Config: "home", Seq: 1}, [32]byte{1})
	err = c.db.Update(func(tx *bbolt.Tx) error {
		tx.Bucket(bComputers).Put([]byte("pc-2"), []byte(`{"id":"pc-3"}`))
		tx.Bucket(bVersions).Put(verKey("pc-1", "home", 2), []byte(`{"computer":`))
		tx.Bucket(bVersions).Put([]byte("pc-1/x"), []byte(`{}`))
		tx.Bucket(bJournal).Put([]byte("short"), []byte(`{}`))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Computer("pc-2"); !errors.Is(err, ErrCorrupt) || !bytes.Contains([]byte(err.Error()), []byte(`computers/"pc-2"`)) {
		t.Fatalf("damaged computer record: %v", err)
	}
	if cps, err := c.Computers(""); err != nil || len(cps) != 1 {
		t.Fatalf("listing with a damaged record: %v %v", cps, err)
	}
	if vs, err := c.Versions("pc-1", ""); err != nil || len(vs) != 1 {
		t.Fatalf("versions with damaged records: %v %v", vs, err)
	}
	if err := c.AllJournal(func(string, string, wire.Journal) error { return nil }); err != nil {
		t.Fatal(err)
	}
}

// TestApplyLogOnce: a log entry applies once (a replay after a restart
// is skipped, so a journal record is not numbered twice), and a refused
// command is rolled back whole while its index is recorded.
func TestApplyLogOnce(t *testing.T) {
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	c, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	enrolled(t, c, now, "pc-1")
	cmd, err := NewCommand(KindAddJournal, AddJournalCmd{Computer: "pc-1", Config: "home", Journal: wire.Journal{Base: 1, Time: now}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		_, skipped, err := c.ApplyLog(100, cmd)
		if err != nil || skipped != (i == 1) {
			t.Fatalf("apply %d: skipped %v, %v", i, skipped, err)
		}
	}
	if js, _ := c.Journal("pc-1", "home", 1); len(js) != 1 {
		t.Fatalf("a replayed entry applied twice: %d journal records", len(js))
	}
	bad, _ := NewCommand(KindAddVersion, AddVersionCmd{Version: Version{Manifest: wire.Manifest{Computer: "pc-1", Config: "home"}}})
	if _, _, err := c.ApplyLog(101, bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a refused command: %v", err)
	}
	if n, _ := c.AppliedIndex(); n != 101 {
		t.Fatalf("applied index %d after a refused command, want 101", n)
	}
	if _, skipped, _ := c.ApplyLog(99, cmd); !skipped {
		t.Fatal("an older entry applied")
	}
}
