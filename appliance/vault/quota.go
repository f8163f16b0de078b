package vault

import (
	"context"
	"net/http"
	"sort"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// Quotas per company: the bytes of a company's packs (after deduplication
// and compression), as the store's index records them (store.Usage: a
// count rebuilt from the index at open and kept as packs grow and go).
// Over the hard limit, uploads are
// refused with quota_exceeded; restores, verify, commits of chunks already
// stored and other companies go on. Garbage collection brings the count
// down once prune has removed versions.

// QuotaRequest sets a company's quota (both 0: remove it).
type QuotaRequest struct {
	Company string `json:"company"`
	Hard    int64  `json:"hard"`
	Warn    int64  `json:"warn,omitempty"`
}

// QuotaInfo is a company's usage and quota.
type QuotaInfo struct {
	Company string `json:"company"`
	Used    int64  `json:"used"` // bytes of the company's packs
	Hard    int64  `json:"hard,omitempty"`
	Warn    int64  `json:"warn,omitempty"`
	State   string `json:"state"` // "ok", "warning" (past Warn), "over" (at or past Hard: uploads refused)
}

func quotaState(used int64, q catalog.Quota) string {
	switch {
	case q.Hard > 0 && used >= q.Hard:
		return "over"
	case q.Warn > 0 && used >= q.Warn:
		return "warning"
	}
	return "ok"
}

// SetQuota sets a company's quota.
func (v *Vault) SetQuota(ctx context.Context, p *Principal, req QuotaRequest) error {
	if !p.Has(CapOperate) {
		return forbid(p, CapOperate)
	}
	return catalogErr(v.Catalog.SetQuota(catalog.Quota{Company: req.Company, Hard: req.Hard, Warn: req.Warn}))
}

// Quotas reports every company's usage and quota.
func (v *Vault) Quotas(ctx context.Context, p *Principal) ([]QuotaInfo, error) {
	if !p.Has(CapView) {
		return nil, forbid(p, CapView)
	}
	qs, err := v.Catalog.Quotas()
	if err != nil {
		return nil, err
	}
	cos, err := v.Catalog.Companies()
	if err != nil {
		return nil, err
	}
	out := []QuotaInfo{}
	for _, co := range cos {
		if p.Company != "" && p.Company != co.Name {
			continue
		}
		q := qs[co.Name]
		used := v.Store.Usage(co.Name)
		out = append(out, QuotaInfo{Company: co.Name, Used: used, Hard: q.Hard, Warn: q.Warn, State: quotaState(used, q)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Company < out[j].Company })
	return out, nil
}

// checkQuota refuses an upload of a company at or past its hard limit.
func (v *Vault) checkQuota(company string) error {
	qs, err := v.Catalog.Quotas()
	if err != nil {
		return err
	}
	q, ok := qs[company]
	if !ok || q.Hard == 0 {
		return nil
	}
	if used := v.Store.Usage(company); used >= q.Hard {
		return fail(http.StatusInsufficientStorage, wire.CodeQuotaExceeded,
			"company %s uses %d bytes of its %d-byte quota: nothing was stored. Remove old versions (vaultctl prune, then vaultctl collect) or ask the vault's administrator to raise the quota (vaultctl quota %s BYTES); restores keep working",
			company, used, q.Hard, company)
	}
	return nil
}
