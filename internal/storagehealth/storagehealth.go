// Package storagehealth is the state of the appliance's data storage as the
// firmware's array controller sees it and the vault reads it: the firmware
// writes a Report to a small JSON file on /run every few seconds, vaultd
// reads it (vaultd -storage-state FILE) to say so in its status and to stop
// accepting writes when the storage failed. The file is the whole interface,
// so the vault never imports the firmware.
package storagehealth

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"vaultnode/internal/atomicfile"
)

// DefaultPath is where the firmware writes the report on the appliance.
const DefaultPath = "/run/vaultnode/storage.json"

// MaxReport bounds the report file a reader accepts.
const MaxReport = 64 << 10

// States of the storage, worst last.
const (
	Clean     = "clean"     // every member in sync
	Resyncing = "resyncing" // a resync or a rebuild onto a new member runs; redundancy is being restored
	Degraded  = "degraded"  // members missing, no rebuild running: data served, less (or no) redundancy left
	Failed    = "failed"    // too many members lost: the data volume cannot be read or written
)

// ErrTooLarge means a report file is over MaxReport.
var ErrTooLarge = errors.New("storage report over storagehealth.MaxReport")

// Report is the storage's state at Updated.
type Report struct {
	State   string    `json:"state"`
	Detail  string    `json:"detail"` // one sentence for an operator
	Updated time.Time `json:"updated"`
	Arrays  []Array   `json:"arrays,omitempty"`
	// Single is the data disk when the volume is one disk without RAID.
	Single string `json:"single,omitempty"`
	// Candidates are blank disks that could replace a missing member or
	// become spares; using one needs the operator's confirmation.
	Candidates []string `json:"candidates,omitempty"`
	Disks      []Disk   `json:"disks,omitempty"`
}

// Array is one md array.
type Array struct {
	Name    string   `json:"name"`
	Level   string   `json:"level"`
	UUID    string   `json:"uuid,omitempty"`
	State   string   `json:"state"`
	Disks   int      `json:"disks"`  // members a complete array has
	Active  int      `json:"active"` // members in sync
	Failed  int      `json:"failed"`
	Spares  int      `json:"spares"`
	Members []Member `json:"members"`
	// Action is md's sync_action: idle, resync, recover, check, repair.
	Action   string  `json:"action"`
	Progress float64 `json:"progress,omitempty"` // 0-1 of the running action
	// ETA of the running action, seconds (md's own estimate).
	ETA float64 `json:"eta_seconds,omitempty"`
	// Speed of the running action, KiB/s.
	Speed float64 `json:"speed_kib,omitempty"`
	// Mismatches is md's mismatch_cnt after the last check, in sectors.
	Mismatches int64     `json:"mismatches"`
	LastCheck  time.Time `json:"last_check,omitzero"`
}

// Member is a component of an array.
type Member struct {
	Device string `json:"device"`
	ID     string `json:"id,omitempty"` // the disk's serial
	State  string `json:"state"`        // md's: in_sync, faulty, spare, ...
}

// Disk is a data disk's SMART verdict.
type Disk struct {
	Device string `json:"device"`
	ID     string `json:"id,omitempty"`
	SMART  string `json:"smart"` // passed, FAILING, or why it is unknown
	Temp   int    `json:"temperature_c,omitempty"`
}

// Writable reports whether the vault may accept writes.
func (r Report) Writable() bool { return r.State != Failed }

// Save writes r to path atomically.
func Save(path string, r Report) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("save storage report: %w", err)
	}
	if err := atomicfile.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("save storage report: %w", err)
	}
	return nil
}

// Load reads the report at path.
func Load(path string) (Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return Report{}, fmt.Errorf("read storage report: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxReport+1))
	if err != nil {
		return Report{}, fmt.Errorf("read storage report %s: %w", path, err)
	}
	if len(b) > MaxReport {
		return Report{}, fmt.Errorf("read storage report %s: %w (%d bytes)", path, ErrTooLarge, MaxReport)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return Report{}, fmt.Errorf("read storage report %s: %w", path, err)
	}
	switch r.State {
	case Clean, Resyncing, Degraded, Failed:
	default:
		return Report{}, fmt.Errorf("read storage report %s: unknown state %q", path, r.State)
	}
	return r, nil
}
