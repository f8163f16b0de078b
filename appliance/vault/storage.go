package vault

import (
	"fmt"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"vaultnode/internal/storagehealth"
	"vaultnode/internal/wire"
)

// The state of the storage under the vault, as the appliance's firmware
// reports it (Options.StorageState, internal/storagehealth). With a
// degraded or rebuilding array the vault works as usual and says so in its
// status; with a failed one every agent route but health answers 503
// storage_failed: nothing is written, and nothing is reported or served
// from a disk that cannot be read.

// storageStale is the age past which the report is no longer trusted (the
// firmware writes it every few seconds).
const storageStale = time.Minute

// errStorageIO answers a request that met an I/O error of the data disk.
var errStorageIO = &apiError{status: http.StatusServiceUnavailable, code: wire.CodeStorageFailed,
	msg: "storage failed: the vault's disk answered an I/O error; tell the vault's administrator"}

// StorageInfo is the storage state for vaultctl status (GET AdminStorage).
type StorageInfo struct {
	Known  bool                  `json:"known"`
	Stale  bool                  `json:"stale,omitempty"`
	Report *storagehealth.Report `json:"report,omitempty"`
	Error  string                `json:"error,omitempty"`
}

type storageWatch struct {
	path string
	mu   sync.Mutex
	mod  time.Time // the file's modification time, size and inode when read
	size int64     // (the firmware renames a new file in: a new inode)
	ino  uint64
	info StorageInfo
	last string // state logged last
}

// Storage is the storage state now: the report is read again whenever the
// file changed (a stat per call: the file is on tmpfs).
func (v *Vault) Storage() StorageInfo {
	s := v.storage
	if s == nil || s.path == "" {
		return StorageInfo{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fi, err := os.Stat(s.path)
	if err != nil {
		s.mod, s.size, s.ino = time.Time{}, 0, 0
		s.info = StorageInfo{Error: fmt.Sprintf("read storage report: %v", err)}
		return s.info
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	if !fi.ModTime().Equal(s.mod) || fi.Size() != s.size || ino != s.ino || !s.info.Known {
		s.mod, s.size, s.ino = fi.ModTime(), fi.Size(), ino
		r, err := storagehealth.Load(s.path)
		if err != nil {
			s.info = StorageInfo{Error: err.Error()}
			return s.info
		}
		s.info = StorageInfo{Known: true, Report: &r}
		if r.State != s.last {
			v.log.Warn("storage state", zap.String("state", r.State), zap.String("detail", r.Detail))
			s.last = r.State
		}
	}
	info := s.info
	info.Stale = v.clk.Now().Sub(info.Report.Updated) > storageStale
	return info
}

// storageFailed says why writes and reads are refused, or "".
func (v *Vault) storageFailed() string {
	st := v.Storage()
	if !st.Known || st.Stale || st.Report.Writable() {
		return ""
	}
	return st.Report.Detail
}

// storageGuard answers 503 storage_failed to every agent route but health
// while the storage has failed.
func (v *Vault) storageGuard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != wire.PathHealth {
			if why := v.storageFailed(); why != "" {
				v.writeErr(w, r, fail(http.StatusServiceUnavailable, wire.CodeStorageFailed,
					"storage failed: %s. The vault accepts no backup and serves no data until its disks are repaired; tell the vault's administrator", why))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
