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
	return line + "\n"
}
