package firmware

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"vaultnode/internal/storagehealth"
)

// raidControl answers "raid ..." on the control socket (init ctl raid,
// vaultctl disk, the front panel):
//
//	raid | raid status        the storage state in words
//	raid json                 the storagehealth report as JSON
//	raid replace DISK [erase] add DISK in a missing member's place (or as a spare);
//	                          "erase" confirms wiping a disk that is not blank (a former member too)
//	raid scrub                start md's check now
//	raid speed MIN MAX        md sync speed limits, KiB/s per disk, until the next boot
//	raid candidates           JSON [{array, disk, size, holds_data}]: disks raid replace accepts
//	                          (holds_data: it needs "erase")
//	raid schedule [SCHEDULE]  the scrub schedule (monthly DAY HH:MM, weekly DAY HH:MM, never), saved
//
// "disk candidates" and "disk replace DISK" are the same (the front panel).
func (m *Machine) raidControl(ctx context.Context, args []string, w io.Writer) error {
	c := m.raidController()
	if c == nil {
		return errors.New("the data volume is not up: no array to control")
	}
	if len(args) == 0 {
		args = []string{"status"}
	}
	switch {
	case args[0] == "status" && len(args) == 1:
		io.WriteString(w, storageText(c.Report()))
	case args[0] == "json" && len(args) == 1:
		return json.NewEncoder(w).Encode(c.Report())
	case args[0] == "candidates" && len(args) == 1:
		type candidate struct {
			Array     string `json:"array"`
			Disk      string `json:"disk"`
			Size      int64  `json:"size"`
			HoldsData bool   `json:"holds_data,omitempty"` // raid replace needs "erase"
		}
		out := []candidate{}
		for _, d := range c.CandidateDisks() {
			if c.IsArray() {
				out = append(out, candidate{Array: filepath.Base(DataMD), Disk: d.Name, Size: d.Size, HoldsData: d.HoldsData})
			}
		}
		return json.NewEncoder(w).Encode(out)
	case args[0] == "replace" && (len(args) == 2 || len(args) == 3 && args[2] == "erase"):
		msg, err := c.Replace(ctx, args[1], len(args) == 3)
		if err != nil {
			return err
		}
		fmt.Fprintln(w, msg)
	case args[0] == "scrub" && len(args) == 1:
		if err := c.Scrub(); err != nil {
			return err
		}
		fmt.Fprintln(w, "scrub started")
	case args[0] == "schedule":
		if len(args) > 1 {
			if err := c.SetSchedule(strings.Join(args[1:], " ")); err != nil {
				return err
			}
		}
		sched, next := c.Schedule()
		if next.IsZero() {
			fmt.Fprintf(w, "scrub schedule: %s\n", sched)
		} else {
			fmt.Fprintf(w, "scrub schedule: %s; next %s\n", sched, next.Format("2006-01-02 15:04 MST"))
		}
	case args[0] == "speed" && len(args) == 3:
		lo, err1 := strconv.Atoi(args[1])
		hi, err2 := strconv.Atoi(args[2])
		if err1 != nil || err2 != nil {
			return fmt.Errorf("raid speed %s %s: write two numbers of KiB/s", args[1], args[2])
		}
		if err := c.SetSpeed(lo, hi); err != nil {
			return err
		}
		fmt.Fprintf(w, "md sync speed %d-%d KiB/s\n", lo, hi)
	default:
		return fmt.Errorf("raid %s: use raid status, raid json, raid candidates, raid replace DISK [erase], raid scrub, raid schedule [SCHEDULE] or raid speed MIN MAX", strings.Join(args, " "))
	}
	return nil
}

// storageText is the storage part of the status screen.
func storageText(r storagehealth.Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "storage: %s: %s\n", r.State, r.Detail)
	for _, a := range r.Arrays {
		var ms []string
		for _, mb := range a.Members {
			ms = append(ms, fmt.Sprintf("%s(%s) %s", mb.Device, mb.ID, mb.State))
		}
		fmt.Fprintf(&b, "  %s %s %d/%d in sync, action %s", a.Name, a.Level, a.Active, a.Disks, a.Action)
		if a.Action != "idle" {
			fmt.Fprintf(&b, " %.1f %%", 100*a.Progress)
			if a.ETA > 0 {
				fmt.Fprintf(&b, " eta %s", (time.Duration(a.ETA) * time.Second).Round(time.Second))
			}
		}
		fmt.Fprintf(&b, "\n  members: %s\n", strings.Join(ms, ", "))
		if !a.LastCheck.IsZero() {
			fmt.Fprintf(&b, "  last scrub %s: %d mismatched sectors\n", a.LastCheck.UTC().Format(time.DateTime), a.Mismatches)
		}
	}
	same := len(r.Disks) > 1
	for _, d := range r.Disks {
		same = same && d.SMART == r.Disks[0].SMART && !strings.HasPrefix(d.SMART, "FAILING")
	}
	if same {
		fmt.Fprintf(&b, "  SMART of every data disk: %s\n", r.Disks[0].SMART)
	} else {
		for _, d := range r.Disks {
			fmt.Fprintf(&b, "  disk %s (%s): SMART %s\n", d.Device, d.ID, d.SMART)
		}
	}
	for _, n := range r.Candidates {
		fmt.Fprintf(&b, "  disk %s is unused: 'disk replace %s' adds it to the array\n", n, n)
	}
	return b.String()
}
