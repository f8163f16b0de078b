package vault

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/store"
	"vaultnode/internal/pack"
)

// ErrRunning is a vault whose data directory is in use by vaultd.
var ErrRunning = errors.New("the vault is running")

// storeOptions lets the store authenticate entries it indexes by scanning
// with the company's pack key.
func (v *Vault) storeOptions() store.Options {
	return store.Options{Clock: v.clk, DirectReads: v.opts.DirectReads, Keys: func(company string) (*pack.Sealer, error) {
		k, err := v.companyKeys(company)
		if err != nil {
			return nil, err
		}
		return k.aead, nil
	}}
}

// RebuildIndex rebuilds DATA/index.db from the packs alone, with the vault
// stopped: it refuses while vaultd holds the directory. The old index is
// kept beside it as index.db.old-UNIXTIME. Entries are authenticated with
// their company's key when the catalog and master key are there.
func RebuildIndex(ctx context.Context, dir string, log *zap.Logger, progress func(store.RebuildProgress)) (store.RebuildProgress, error) {
	var pr store.RebuildProgress
	if err := checkStopped(dir); err != nil {
		return pr, err
	}
	v := &Vault{log: log, keys: map[string]*companyKeys{}}
	mkPath := filepath.Join(dir, "master.key")
	if _, err := os.Stat(mkPath); err == nil {
		mk, err := loadMasterKey(mkPath)
		if err != nil {
			return pr, err
		}
		v.master = pack.NewAEAD(mk)
		if _, err := os.Stat(filepath.Join(dir, "catalog.db")); err == nil {
			if v.Catalog, err = catalog.Open(dir, catalog.Options{Log: log.Named("catalog")}); err != nil {
				return pr, err
			}
			defer v.Catalog.Close()
		}
	}
	opts := store.Options{}
	if v.Catalog != nil {
		opts = v.storeOptions()
	} else {
		log.Warn("no catalog or master key: entries are checked by their headers only")
	}
	idx := filepath.Join(dir, "index.db")
	if _, err := os.Stat(idx); err == nil {
		old := fmt.Sprintf("%s.old-%d", idx, time.Now().Unix())
		if err := os.Rename(idx, old); err != nil {
			return pr, fmt.Errorf("move the old index aside: %w", err)
		}
		log.Info("old index kept", zap.String("path", old))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return pr, fmt.Errorf("stat index: %w", err)
	}
	// Open indexes every pack the new, empty index does not know.
	opts.Progress = func(p store.RebuildProgress) {
		pr = p
		if progress != nil {
			progress(p)
		}
	}
	s, err := store.Open(dir, log, opts)
	if err != nil {
		return pr, err
	}
	return pr, s.Close()
}

// checkStopped refuses a data directory that vaultd is serving: its admin
// socket answers, or it holds the index's lock.
func checkStopped(dir string) error {
	sock := filepath.Join(dir, "admin.sock")
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%w on %s (its admin socket answers): stop vaultd first", ErrRunning, dir)
	}
	f, err := os.Open(filepath.Join(dir, "index.db"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open index: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("%w on %s (index.db is locked): stop vaultd first", ErrRunning, dir)
		}
		return fmt.Errorf("lock index: %w", err)
	}
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}
