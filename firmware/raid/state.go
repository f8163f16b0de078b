package raid

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
	"github.com/prometheus/procfs/sysfs"

	sh "vaultnode/internal/storagehealth"
)

// readArrays reads every md array from /proc/mdstat and sysfs under the
// given roots.
func readArrays(procRoot, sysRoot string) ([]sh.Array, error) {
	sfs, err := sysfs.NewFS(sysRoot)
	if err != nil {
		return nil, fmt.Errorf("read md state: %w", err)
	}
	mds, err := sfs.Mdraids()
	if err != nil {
		return nil, fmt.Errorf("read md state in %s: %w", sysRoot, err)
	}
	stats := map[string]procfs.MDStat{}
	if pfs, err := procfs.NewFS(procRoot); err == nil {
		if all, err := pfs.MDStat(); err == nil {
			for _, s := range all {
				stats[s.Name] = s
			}
		}
	}
	var out []sh.Array
	for _, md := range mds {
		st, ok := stats[md.Device]
		var stp *procfs.MDStat
		if ok {
			stp = &st
		}
		a := arrayState(md, stp)
		if b, err := os.ReadFile(filepath.Join(sysRoot, "block", md.Device, "md", "mismatch_cnt")); err == nil {
			a.Mismatches, _ = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		}
		out = append(out, a)
	}
	return out, nil
}

// arrayState classifies one array: failed when it lost more members than
// its level survives (or md stopped it), resyncing while md resyncs or
// rebuilds, degraded when members are missing, else clean.
func arrayState(md sysfs.Mdraid, st *procfs.MDStat) sh.Array {
	a := sh.Array{Name: md.Device, Level: md.Level, UUID: md.UUID, Action: md.SyncAction}
	if md.Disks != nil {
		a.Disks = int(*md.Disks)
	}
	spare := map[string]bool{}
	if st != nil {
		for _, d := range st.Devices {
			if d.Spare {
				spare[d.Name] = true
			}
		}
	}
	for _, c := range md.Components {
		st := c.State
		if spare[c.Device] && !strings.Contains(st, "faulty") {
			st += ",spare"
		}
		a.Members = append(a.Members, sh.Member{Device: c.Device, State: st})
	}
	if a.Action == "" {
		a.Action = "idle"
	}
	if running(a.Action) {
		a.Progress = md.SyncCompleted
		if st != nil {
			a.ETA = st.BlocksSyncedFinishTime * 60
			a.Speed = st.BlocksSyncedSpeed
		}
	}
	classify(&a, md.ArrayState == "inactive" || md.ArrayState == "clear")
	return a
}

// classify counts the members by state and sets the array's state.
func classify(a *sh.Array, stopped bool) {
	a.Active, a.Failed, a.Spares = 0, 0, 0
	for _, m := range a.Members {
		states := strings.Split(m.State, ",")
		switch {
		case slices.Contains(states, "faulty"):
			a.Failed++
		case slices.Contains(states, "in_sync"):
			a.Active++
		case slices.Contains(states, "spare") && a.Action != "recover":
			a.Spares++
		}
	}
	missing := a.Disks - a.Active
	switch {
	case stopped || a.Disks == 0 || missing > Tolerance(a.Level, a.Disks):
		a.State = sh.Failed
	case a.Action == "resync" || a.Action == "recover" || a.Action == "reshape":
		a.State = sh.Resyncing
	case missing > 0:
		a.State = sh.Degraded
	default:
		a.State = sh.Clean
	}
}

func running(action string) bool { return action != "idle" && action != "frozen" && action != "" }

// describe is the operator sentence for an array's state.
func describe(a sh.Array) string {
	missing := a.Disks - a.Active
	switch a.State {
	case sh.Failed:
		return fmt.Sprintf("array %s (%s) FAILED: %d of %d disks in sync, it survives the loss of %d; the data volume cannot be read or written",
			a.Name, a.Level, a.Active, a.Disks, Tolerance(a.Level, a.Disks))
	case sh.Resyncing:
		what := "resyncing"
		if a.Action == "recover" {
			what = "rebuilding"
		}
		s := fmt.Sprintf("array %s (%s) %s: %.1f %%", a.Name, a.Level, what, 100*a.Progress)
		if a.ETA > 0 {
			s += fmt.Sprintf(", about %s left", (time.Duration(a.ETA) * time.Second).Round(time.Second))
		}
		if missing > 0 {
			s += fmt.Sprintf("; %d of %d disks in sync", a.Active, a.Disks)
		}
		return s
	case sh.Degraded:
		return fmt.Sprintf("array %s (%s) is degraded: %d of %d disks in sync; backups continue; replace the missing disk (vaultctl disk replace)",
			a.Name, a.Level, a.Active, a.Disks)
	}
	s := fmt.Sprintf("array %s (%s) clean: %d of %d disks", a.Name, a.Level, a.Active, a.Disks)
	if a.Spares > 0 {
		s += fmt.Sprintf(", %d hot spare(s)", a.Spares)
	}
	if a.Action == "check" || a.Action == "repair" {
		s += fmt.Sprintf("; scrub %.1f %%", 100*a.Progress)
	}
	return s
}
