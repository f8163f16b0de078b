package vault

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"go.etcd.io/bbolt"
	"go.uber.org/zap"

	"vaultnode/appliance/mail"
	"vaultnode/internal/atomicfile"
)

// A member brought up to date by a catalog snapshot (docs/pair.md,
// "Snapshots") skipped the entries inside it, and with them what those
// entries did outside the catalog: the sweeps' deletions from its store and
// the mail queue's changes to DATA/mail. The catalog keeps both (the sweeps
// until every data member applied them, pairgc.go; each message's last
// change and the settings, pairmail.go), so after a snapshot the member
// applies the sweeps kept after its old applied index, in log order, as it
// would have applied their entries (checked against its own catalog), and
// rewrites DATA/mail from the catalog. DATA/pair/restored.json, written
// before the catalog is replaced and removed once this is done, makes a
// crash in between finish the work at the next start.

// restoredFile names the old applied index while a restore is unfinished.
const restoredFile = "restored.json"

type restoredMark struct {
	Prev uint64 `json:"prev"`
}

func (v *Vault) restoredPath() string { return filepath.Join(v.opts.Dir, "pair", restoredFile) }

// pairRestoring is pair.Config.Restoring: the old applied index is written
// down (the smaller, when an earlier restore is still unfinished).
func (v *Vault) pairRestoring(prev uint64) error {
	select { // Open finishes an earlier restore first
	case <-v.pair.gc.storeReady:
	case <-v.pair.gc.quit:
		return fmt.Errorf("restore a catalog snapshot: the vault is closing")
	}
	if m, ok, err := v.readRestored(); err != nil {
		return err
	} else if ok && m.Prev < prev {
		return nil
	}
	b, _ := json.Marshal(restoredMark{Prev: prev})
	if err := atomicfile.WriteFile(v.restoredPath(), b, 0o600); err != nil {
		return fmt.Errorf("write pair/%s: %w", restoredFile, err)
	}
	return nil
}

func (v *Vault) readRestored() (restoredMark, bool, error) {
	var m restoredMark
	b, err := os.ReadFile(v.restoredPath())
	if errors.Is(err, os.ErrNotExist) {
		return m, false, nil
	}
	if err != nil {
		return m, false, fmt.Errorf("read pair/%s: %w", restoredFile, err)
	}
	if len(b) > 1024 || json.Unmarshal(b, &m) != nil {
		return m, false, fmt.Errorf("read pair/%s: does not decode: remove it and restart the member", restoredFile)
	}
	return m, true, nil
}

// testRestoredCrash, tests only: pairRestored leaves the work undone, as
// a crash right after the catalog was replaced does.
var testRestoredCrash bool

// pairRestored is pair.Config.Restored.
func (v *Vault) pairRestored(uint64) error {
	if testRestoredCrash {
		return nil
	}
	select {
	case <-v.pair.gc.storeReady:
	case <-v.pair.gc.quit:
		return fmt.Errorf("finish a catalog snapshot's install: the vault is closing")
	}
	return v.finishRestore()
}

// finishRestore applies what the snapshot's entries did outside the
// catalog, if a restore is unfinished; the store and mail queue are open.
// A sweep whose check fails here (a listing this member lacks yet) deletes
// nothing and is passed, as when its entry is applied (beforeApply); an
// error reading the catalog or writing DATA/mail is answered, and the work
// is done again at the next install or start.
func (v *Vault) finishRestore() error {
	m, ok, err := v.readRestored()
	if err != nil || !ok {
		return err
	}
	applied, _ := v.Catalog.AppliedIndex()
	var swept, sweeps int
	err = v.keptSweeps(m.Prev, func(index uint64, plan sweepPlan) error {
		if index > applied {
			return nil
		}
		n, _, err := v.applySweep(plan)
		if err != nil {
			v.log.Warn("garbage collection sweep of a catalog snapshot not applied here", zap.Uint64("index", index),
				zap.String("company", plan.Company), zap.Error(err))
		}
		swept += n
		sweeps++
		return nil
	})
	if err == nil {
		err = v.restoreMail()
	}
	if err != nil {
		// Left for the next try: the sweeps and mail changes apply again
		// alike.
		return fmt.Errorf("finish a catalog snapshot's install: %w", err)
	}
	if applied > v.pair.gc.sweepIndex.Load() {
		v.pair.gc.sweepIndex.Store(applied)
	}
	if sweeps > 0 {
		v.pair.gc.repackDue.Store(true)
	}
	v.pair.gc.restores.Add(1)
	if err := os.Remove(v.restoredPath()); err != nil {
		return fmt.Errorf("finish a catalog snapshot's install: %w", err)
	}
	v.log.Info("catalog snapshot installed: its sweeps and mail changes applied here", zap.Uint64("from", m.Prev),
		zap.Uint64("to", applied), zap.Int("sweeps", sweeps), zap.Int("removed", swept))
	return nil
}

// restoreMail rewrites DATA/mail from the catalog: each message's last
// change, and the SMTP settings.
func (v *Vault) restoreMail() error {
	var ops []mail.Op
	var settings []byte
	err := v.Catalog.View(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(bucketMail); b != nil {
			if raw := b.Get(keyMailSettings); raw != nil {
				settings = append([]byte(nil), raw...)
			}
		}
		b := tx.Bucket(bucketMailQueue)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, val []byte) error {
			var op mail.Op
			if err := json.Unmarshal(val, &op); err != nil {
				return fmt.Errorf("mail change kept in the catalog: %w", err)
			}
			ops = append(ops, op)
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("read the mail queue kept in the catalog: %w", err)
	}
	for _, op := range ops {
		if err := v.Mail.Apply(op); err != nil {
			return fmt.Errorf("rewrite the mail queue: %w", err)
		}
	}
	if settings != nil {
		if err := v.applyMailSettings(settings); err != nil {
			return fmt.Errorf("rewrite the mail settings: %w", err)
		}
	}
	return nil
}
