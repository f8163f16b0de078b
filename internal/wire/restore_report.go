package wire

import (
	"fmt"
	"strings"
)

// PathRestoreReport is where an agent reports a restore it runs on its own
// (`vault-agent restore`), as it starts and as it ends, so the vault's audit
// log shows every restore, not only those queued from the portal: POST
// RestoreReport (at most MaxRestoreReport bytes), answer 204.
const PathRestoreReport = "/v1/restores/report"

// MaxRestoreReport bounds a RestoreReport's encoded body.
const MaxRestoreReport = 16 << 10

// Phases of a RestoreReport.
const (
	RestoreStarted  = "started"
	RestoreFinished = "finished"
)

// RestoreReport is one phase of a restore an agent runs on its own.
type RestoreReport struct {
	// ID joins the started and finished reports of one restore (the
	// agent's random id, at most 64 bytes).
	ID    string `json:"id"`
	Phase string `json:"phase"` // RestoreStarted or RestoreFinished
	// What: the configuration, version and journal records on top of it,
	// and the version's path restored ("" or "/": all of it).
	Config  string `json:"config"`
	Version uint64 `json:"version"`
	Journal int    `json:"journal,omitempty"`
	Path    string `json:"path,omitempty"`
	// Target is the directory restored into ("/": the original place);
	// Existing the policy for files already there.
	Target   string `json:"target"`
	Existing string `json:"existing,omitempty"`
	// How it ended (RestoreFinished): counts and the error, if any.
	Files   int64 `json:"files,omitempty"`
	Bytes   int64 `json:"bytes,omitempty"`
	Skipped int64 `json:"skipped,omitempty"`
	Failed  int64 `json:"failed,omitempty"`
	// Kept and Reused: as in CommandResult (existing "overwrite").
	Kept   int64  `json:"kept,omitempty"`
	Reused int64  `json:"reused,omitempty"`
	Error  string `json:"error,omitempty"`
}

// CheckRestoreReport checks a report's fields against their bounds.
func CheckRestoreReport(r *RestoreReport) error {
	switch {
	case r.ID == "" || len(r.ID) > 64:
		return fmt.Errorf("restore report id of %d bytes: want 1 to 64", len(r.ID))
	case r.Phase != RestoreStarted && r.Phase != RestoreFinished:
		return fmt.Errorf("restore report phase %q: want %s or %s", r.Phase, RestoreStarted, RestoreFinished)
	case r.Config == "" || len(r.Config) > 256:
		return fmt.Errorf("restore report config of %d bytes: want 1 to 256", len(r.Config))
	case len(r.Path) > 4096 || len(r.Target) > 4096:
		return fmt.Errorf("restore report path or target over 4096 bytes")
	case !strings.HasPrefix(r.Target, "/"):
		return fmt.Errorf("restore report target %q: want an absolute directory", r.Target)
	case len(r.Existing) > 32 || len(r.Error) > MaxCommandText:
		return fmt.Errorf("restore report existing or error over its bound (32, %d bytes)", MaxCommandText)
	case r.Journal < 0 || r.Files < 0 || r.Bytes < 0 || r.Skipped < 0 || r.Failed < 0 || r.Kept < 0 || r.Reused < 0:
		return fmt.Errorf("restore report with a negative count")
	}
	return nil
}
