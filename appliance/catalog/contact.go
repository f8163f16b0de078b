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

// lastSeen merges a pending contact into cp.
func (c *Catalog) lastSeen(cp *Computer) {
	c.seen.mu.Lock()
	t, ok := c.seen.pending[cp.ID]
	c.seen.mu.Unlock()
	if ok && t.After(cp.LastSeen) {
		cp.LastSeen = t
	}
}

// FlushContacts writes every pending contact in one command.
func (c *Catalog) FlushContacts() error {
	c.seen.mu.Lock()
	batch := c.seen.pending
	c.seen.pending = map[string]time.Time{}
	c.seen.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	_, err := c.apply(KindContact, ContactCmd{Seen: batch})
	if err != nil {
		// Put them back (unless newer contacts came meanwhile) for the next flush.
		for id, t := range batch {
			c.Seen(id, t)
		}
	}
	return err
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
