package catalog

import (
	"sync"
	"time"

	"go.uber.org/zap"

	"vaultnode/internal/clock"
)

// DefaultContactFlush is how often remembered contacts are written when
// Options.ContactFlush is zero.
const DefaultContactFlush = 30 * time.Second

// contacts is the in-memory last-contact table: every authenticated agent
// request lands here, and an owned goroutine writes the table to the
// catalog in one command per flush (docs/format.md, "Catalog").
type contacts struct {
	mu      sync.Mutex
	pending map[string]time.Time // computer id -> newest contact not yet written
}

// Seen records that a computer made an authenticated request at t. It only
// touches memory; the contact reaches the catalog at the next flush, and
// Computer and Computers see it at once.
func (c *Catalog) Seen(computer string, t time.Time) {
	c.seen.mu.Lock()
	if old, ok := c.seen.pending[computer]; !ok || t.After(old) {
		c.seen.pending[computer] = t
	}
	c.seen.mu.Unlock()
}

// pendingContacts copies the table. Readers copy it before they read the
// catalog: an entry leaves the table only after its write committed, so
// one of the two always holds the newest contact.
func (c *Catalog) pendingContacts() map[string]time.Time {
	c.seen.mu.Lock()
	defer c.seen.mu.Unlock()
	out := make(map[string]time.Time, len(c.seen.pending))
	for id, t := range c.seen.pending {
		out[id] = t
	}
	return out
}

// pendingContact is one computer's entry of the table.
func (c *Catalog) pendingContact(id string) time.Time {
	c.seen.mu.Lock()
	defer c.seen.mu.Unlock()
	return c.seen.pending[id]
}

func mergeSeen(cp *Computer, t time.Time) {
	if t.After(cp.LastSeen) {
		cp.LastSeen = t
	}
}

// FlushContacts writes every pending contact in one command. The entries
// stay in memory until the command has applied, so a reader never sees a
// contact disappear between the table and the catalog.
func (c *Catalog) FlushContacts() error {
	c.seen.mu.Lock()
	batch := make(map[string]time.Time, len(c.seen.pending))
	for id, t := range c.seen.pending {
		batch[id] = t
	}
	c.seen.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	if _, err := c.apply(KindContact, ContactCmd{Seen: batch}); err != nil {
		return err // kept for the next flush
	}
	c.seen.mu.Lock()
	for id, t := range batch {
		if c.seen.pending[id].Equal(t) { // not moved on meanwhile
			delete(c.seen.pending, id)
		}
	}
	c.seen.mu.Unlock()
	return nil
}

// flushLoop writes pending contacts every opts.ContactFlush until stop
// closes. The timer is made by Open, so a fake clock advanced right after
// Open fires it.
func (c *Catalog) flushLoop(t clock.Timer, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		select {
		case <-stop:
			t.Stop()
			return
		case <-t.C():
		}
		t.Reset(c.opts.ContactFlush)
		if err := c.FlushContacts(); err != nil {
			c.log.Warn("write last contacts", zap.Error(err))
		}
		if c.flushed != nil {
			c.flushed <- struct{}{}
		}
	}
}
