package firmware

import (
	"fmt"
	"strings"
	"time"
)

// tapeLine is the status screen's tape line, read from vaultd's admin
// socket (GET /admin/tape, docs/tape.md); "" when vaultd does not answer
// or found no tape library.
func tapeLine(dataDir string) string {
	var o struct {
		Library bool `json:"library"`
		Status  struct {
			Busy       bool     `json:"busy"`
			Operation  string   `json:"operation"`
			Barcode    string   `json:"barcode"`
			Bytes      int64    `json:"bytes"`
			Rate       float64  `json:"bytes_per_second"`
			Cartridges []string `json:"cartridges"`
			Alerts     []string `json:"alerts"`
			Last       string   `json:"last"`
			Drives     []struct {
				Drive   uint16  `json:"drive"`
				Barcode string  `json:"barcode"`
				Pool    string  `json:"pool"`
				Bytes   int64   `json:"bytes"`
				Busy    bool    `json:"busy"`
				Rate    float64 `json:"bytes_per_second"`
				Error   string  `json:"error"`
			} `json:"drives"`
		} `json:"status"`
	}
	if !adminGet(dataDir, "/admin/tape", time.Second, &o) || !o.Library {
		return ""
	}
	st := o.Status
	line := "tape: idle"
	if st.Busy {
		line = fmt.Sprintf("tape: %s on %s, %d MiB at %.1f MiB/s", st.Operation, st.Barcode, st.Bytes>>20, st.Rate/(1<<20))
	} else if st.Last != "" {
		line += " (last: " + st.Last + ")"
	}
	if len(st.Cartridges) > 0 {
		line += ", cartridges " + strings.Join(st.Cartridges, " ")
	}
	if len(st.Alerts) > 0 {
		line += fmt.Sprintf("; %d TapeAlert flags: %s", len(st.Alerts), strings.Join(st.Alerts, "; "))
	}
	line += "\n"
	// One line per drive: what it does, its bytes and rate (of the
	// running job, or of the last one when idle).
	for _, d := range st.Drives {
		dl := fmt.Sprintf("  drive %d: idle", d.Drive)
		if d.Busy {
			dl = fmt.Sprintf("  drive %d: busy", d.Drive)
		}
		if d.Barcode != "" {
			dl += ", " + d.Barcode + " loaded"
		}
		if d.Pool != "" {
			dl += ", pool " + d.Pool
		}
		if d.Bytes > 0 || d.Busy {
			what := "wrote"
			if !d.Busy {
				what = "last job wrote"
			}
			dl += fmt.Sprintf(", %s %d MiB at %.1f MiB/s", what, d.Bytes>>20, d.Rate/(1<<20))
		}
		if d.Error != "" {
			dl += "; error: " + d.Error
		}
		line += dl + "\n"
	}
	return line
}
