package vault

import (
	"net/http"

	"vaultnode/appliance/pair"
	"vaultnode/internal/wire"
)

// portalAppliance registers the operator's view of the appliance: the
// pair (members, leader, term, log index, lag; docs/pair.md, "Status"),
// as a page and as JSON.
func (v *Vault) portalAppliance(rt *router) {
	rt.handle("GET /appliance", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		m := map[string]any{}
		if v.pair != nil {
			st, err := v.PairStatus(r.Context(), p)
			if err != nil {
				return err
			}
			m["Pair"] = st
		} else if !p.Has(CapOperate) || p.Kind == Agent {
			return forbid(p, CapOperate)
		}
		return render(w, "appliance.html", v.pageData(r, p, "Appliance", m))
	})
	rt.handle("GET "+PortalAPI+"pair", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		if v.pair == nil {
			if !p.Has(CapOperate) || p.Kind == Agent {
				return forbid(p, CapOperate)
			}
			return fail(http.StatusNotFound, wire.CodeNotFound, "this vault is a single appliance, not a member of a pair")
		}
		st, err := v.PairStatus(r.Context(), p)
		if err != nil {
			return err
		}
		writeJSON(w, st)
		return nil
	})
}

// pairStatusOf is for templates: a member's lag in MiB.
func lagMiB(m pair.MemberStatus) int64 { return m.LagBytes >> 20 }
