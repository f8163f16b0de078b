package vault

import (
	"context"

	"go.uber.org/zap"
)

// warmListingMax is the most of a previous version's listing a session
// reads ahead (warmListing): past it, the rest is read cold by the commit
// as before. 256 MiB of sealed listing is well over a million files.
const warmListingMax = 256 << 20

// startWarm reads the configuration's newest version's listing chunks into
// the page cache while the session's agent walks its tree, so that the
// commit, which reads the new listing's chunks (most of them the same
// ones), finds them there instead of waiting on scattered cold reads one
// after another at its end (docs/performance.md, item 33). It only reads:
// the commit checks everything it reads as before. The session's end, or
// the vault's Close, stops it. Called with v.smu held, s just added.
func (v *Vault) startWarm(s *session) {
	if s.previous == 0 || v.closing {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopWarm = cancel
	v.warmWG.Add(1)
	go func() {
		defer v.warmWG.Done()
		defer cancel()
		m, ok, err := v.Catalog.Newest(s.computer, s.config)
		if err != nil || !ok {
			return
		}
		ids := make([][32]byte, len(m.Listing))
		for i, r := range m.Listing {
			ids[i] = r.ID
		}
		if err := v.Store.Warm(ctx, s.company, ids, warmListingMax); err != nil {
			v.log.Debug("reading the previous listing ahead failed; the commit reads it cold", zap.Error(err))
		}
	}()
}

// stopWarmLocked stops a session's read-ahead (startWarm), if any; v.smu
// held.
func (s *session) stopWarmLocked() {
	if s.stopWarm != nil {
		s.stopWarm()
	}
}

// stopWarms stops every session's read-ahead and waits for them: before
// the store closes.
func (v *Vault) stopWarms() {
	v.smu.Lock()
	v.closing = true
	for _, s := range v.sessions {
		s.stopWarmLocked()
	}
	v.smu.Unlock()
	v.warmWG.Wait()
}
