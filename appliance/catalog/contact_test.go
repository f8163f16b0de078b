package catalog

import (
	"errors"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"vaultnode/internal/clock"
	"vaultnode/internal/wire"
)

// storedLastSeen reads a computer's last contact as written in the
// database, bypassing the in-memory table.
func storedLastSeen(t *testing.T, c *Catalog, id string) time.Time {
	t.Helper()
	var cp Computer
	err := c.db.View(func(tx *bbolt.Tx) error {
		var err error
		cp, err = getComputer(tx, id)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return cp.LastSeen
}

func enrolled(t testing.TB, c *Catalog, now time.Time, ids ...string) {
	t.Helper()
	if err := c.CreateCompany(Company{Name: "acme", Sealed: []byte("sealed")}); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		secret := []byte("token-" + id)
		if err := c.AddToken(secret, Token{Company: "acme", Expires: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if err := c.EnrollComputer(secret, now, Computer{ID: id, Company: "acme", Name: id, Enrolled: now}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestContactBatched: contacts are visible at once, reach the database
// only at the periodic flush (one command for many requests), and Close
// writes what is pending.
func TestContactBatched(t *testing.T) {
	start := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	clk := clock.NewFake(start)
	dir := t.TempDir()
	c, err := Open(dir, Options{Clock: clk, ContactFlush: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	c.flushed = make(chan struct{})
	enrolled(t, c, start, "pc-1", "pc-2")

	for i := 0; i < 100; i++ {
		c.Seen("pc-1", start.Add(time.Duration(i)*time.Second))
	}
	c.Seen("pc-2", start.Add(5*time.Second))
	c.Seen("pc-1", start) // an older contact never moves it back
	if got, _ := c.Computer("pc-1"); !got.LastSeen.Equal(start.Add(99 * time.Second)) {
		t.Fatalf("pending contact not visible: %v", got.LastSeen)
	}
	if cps, _ := c.Computers("acme"); len(cps) != 2 || cps[1].LastSeen.IsZero() {
		t.Fatalf("Computers misses pending contacts: %+v", cps)
	}
	if got := storedLastSeen(t, c, "pc-1"); !got.IsZero() {
		t.Fatalf("contact written before the flush: %v", got)
	}
	clk.Advance(time.Minute)
	<-c.flushed
	if got := storedLastSeen(t, c, "pc-1"); !got.Equal(start.Add(99 * time.Second)) {
		t.Fatalf("after a flush pc-1 stored %v", got)
	}
	if got := storedLastSeen(t, c, "pc-2"); !got.Equal(start.Add(5 * time.Second)) {
		t.Fatalf("after a flush pc-2 stored %v", got)
	}
	// The flusher keeps going.
	c.Seen("pc-2", start.Add(time.Hour))
	clk.Advance(time.Minute)
	<-c.flushed
	if got := storedLastSeen(t, c, "pc-2"); !got.Equal(start.Add(time.Hour)) {
		t.Fatalf("second flush: pc-2 stored %v", got)
	}
	// Close writes what is pending; a contact of an unknown computer is dropped.
	c.Seen("pc-1", start.Add(2*time.Hour))
	c.Seen("pc-gone", start)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c, err = Open(dir, Options{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := storedLastSeen(t, c, "pc-1"); !got.Equal(start.Add(2 * time.Hour)) {
		t.Fatalf("Close lost a pending contact: %v", got)
	}
}

// TestHeartbeatIsContact: a report that repeats the stored one writes
// nothing; a changed one is a command.
func TestHeartbeatIsContact(t *testing.T) {
	start := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	var c *Catalog
	var n int
	c, err := Open(t.TempDir(), Options{Submit: func(cmd Command) (any, error) {
		if cmd.Kind == KindPutReport {
			n++
		}
		return c.ApplyResult(cmd)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	enrolled(t, c, start, "pc-1")
	for i := 0; i < 10; i++ {
		if err := c.PutReport("pc-1", wire.Report{Config: "home", State: wire.AgentIdle, Time: start.Add(time.Duration(i) * time.Minute)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PutReport("pc-1", wire.Report{Config: "home", State: wire.AgentError, Reason: "disk", Time: start.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("%d report commands for 10 heartbeats and one change, want 2", n)
	}
	if cp, _ := c.Computer("pc-1"); !cp.LastSeen.Equal(start.Add(time.Hour)) {
		t.Fatalf("last contact %v", cp.LastSeen)
	}
	if r, _ := c.Report("pc-1", "home"); r.State != wire.AgentError || !r.Time.Equal(start.Add(time.Hour)) {
		t.Fatalf("stored report %+v", r)
	}
	if err := c.PutReport("pc-gone", wire.Report{Config: "home", Time: start}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("report of an unknown computer: %v", err)
	}
}

// TestContactNeverStale: while flushes run, a reader always sees the
// newest contact, in the table or in the catalog.
func TestContactNeverStale(t *testing.T) {
	start := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	c, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	enrolled(t, c, start, "pc-1")
	done := make(chan struct{})
	go func() { // owner: this test, which waits for it
		defer close(done)
		for i := 1; i <= 300; i++ {
			c.Seen("pc-1", start.Add(time.Duration(i)*time.Second))
			if err := c.FlushContacts(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var last time.Time
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		cp, err := c.Computer("pc-1")
		if err != nil {
			t.Fatal(err)
		}
		cps, _ := c.Computers("")
		if cp.LastSeen.Before(last) || len(cps) != 1 || cps[0].LastSeen.Before(cp.LastSeen) {
			t.Fatalf("last contact went back: %v after %v (listed %v)", cp.LastSeen, last, cps)
		}
		last = cp.LastSeen
	}
	if !last.Equal(start.Add(300 * time.Second)) {
		t.Fatalf("last contact %v", last)
	}
}

// BenchmarkContact compares what an authenticated request costs as contact
// (memory) with one command written per request (a bbolt commit).
func BenchmarkContact(b *testing.B) {
	start := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	c, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	enrolled(b, c, start, "pc-1")
	b.Run("seen", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			c.Seen("pc-1", start.Add(time.Duration(i)))
		}
	})
	b.Run("command", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := c.apply(KindContact, ContactCmd{Seen: map[string]time.Time{"pc-1": start.Add(time.Duration(i))}}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
