package vault

import (
	"context"
	"fmt"
	"net/http"

	"vaultnode/internal/wire"
)

// ReportRestore records, for the audit log, a restore the agent p runs on
// its own (`vault-agent restore`): the vault otherwise sees only its chunk
// reads. The handler writes the audit entry (who: the computer; what:
// config@version[:path] into target; when; from where).
func (v *Vault) ReportRestore(ctx context.Context, p *Principal, rep wire.RestoreReport) error {
	c, err := self(p, CapRestore)
	if err != nil {
		return err
	}
	if err := wire.CheckRestoreReport(&rep); err != nil {
		return fail(http.StatusBadRequest, wire.CodeLimit, "%v", err)
	}
	noteTarget(ctx, c.Company, c.ID)
	what := fmt.Sprintf("%s@%d", rep.Config, rep.Version)
	if rep.Journal > 0 {
		what += fmt.Sprintf("+%d", rep.Journal)
	}
	if rep.Path != "" && rep.Path != "/" {
		what += ":" + rep.Path
	}
	d := fmt.Sprintf("restore %s on the computer (vault-agent restore %s) %s into %s, existing files: %s", rep.ID, what, rep.Phase, rep.Target, rep.Existing)
	if rep.Phase == wire.RestoreFinished {
		d += fmt.Sprintf(": %d files, %d bytes, %d skipped, %d failed", rep.Files, rep.Bytes, rep.Skipped, rep.Failed)
		if rep.Kept > 0 || rep.Reused > 0 {
			d += fmt.Sprintf(" (%d of the files kept as they were there, %d bytes taken from the files there)", rep.Kept, rep.Reused)
		}
		if rep.Error != "" {
			d += "; error: " + rep.Error
		}
	}
	noteDetail(ctx, truncate(d, maxDetail-100))
	return nil
}
