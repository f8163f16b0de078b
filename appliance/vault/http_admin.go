package vault

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"vaultnode/appliance/jobs"
	"vaultnode/internal/wire"
)

// The admin socket (DATA/admin.sock, used by vaultctl): routes and handlers
// that decode, call an operation as the operator, and encode.

// Admin API paths.
const (
	AdminCompanies = "/admin/companies"
	AdminQuota     = "/admin/quota"
	AdminTokens    = "/admin/tokens"
	AdminComputers = "/admin/computers"
	AdminVersions  = "/admin/versions"
	AdminRevoke    = "/admin/revoke"
	AdminVerify    = "/admin/verify"
	AdminStatus    = "/admin/status"
	AdminStorage   = "/admin/storage"
	AdminRunNow    = "/admin/run-now"  // queues a backup command (ops_commands.go)
	AdminCommands  = "/admin/commands" // ?computer=C&id=ID&wait=S: one command, as the portal's route
	AdminSettings  = "/admin/settings"

	AdminRetention    = "/admin/retention"
	AdminPrune        = "/admin/prune" // ?dry-run=1 answers the plan; else starts a prune job
	AdminJobs         = "/admin/jobs"
	AdminJobSchedules = "/admin/job-schedules"
	AdminMetrics      = "/metrics"     // Prometheus text format (docs/jobs.md)
	AdminUsers        = "/admin/users" // portal users (docs/api.md)
	AdminContact      = "/admin/contact"
	AdminAudit        = "/admin/audit" // ?company=C&before=SEQ&limit=N&q=TEXT
	AdminTape         = "/admin/tape"  // GET: status; POST: a TapeRequest (docs/tape.md)
	AdminPair         = "/admin/pair"  // GET: pair status; POST /admin/pair/token: a join token (docs/pair.md)
)

// RunNowRequest asks a computer to synchronize a configuration once now.
type RunNowRequest struct {
	Computer string `json:"computer"`
	Config   string `json:"config"`
}

// SettingsRequest sets a computer's bandwidth profile.
type SettingsRequest struct {
	Computer  string `json:"computer"`
	Bandwidth string `json:"bandwidth"`
}

// TokenRequest asks for an enrolment token.
type TokenRequest struct {
	Company string        `json:"company"`
	TTL     time.Duration `json:"ttl"`
}

// authenticateAdmin is the admin socket's authenticator: whoever can open
// the socket (mode 0600, in the data directory) is the operator.
func authenticateAdmin(*http.Request) (*Principal, error) { return operator, nil }

func (v *Vault) adminHandler() http.Handler { return v.adminRoutes(authenticateAdmin).handler() }

// adminRoutes registers the admin socket's routes; each route's capability
// is in routeCaps (authz.go).
func (v *Vault) adminRoutes(authn authenticator) *router {
	rt := v.newRouter(authn)
	rt.handle("POST "+AdminCompanies, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req struct {
			Name string `json:"name"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if err := v.CreateCompany(r.Context(), p, req.Name); err != nil {
			return err
		}
		writeJSON(w, map[string]string{"name": req.Name})
		return nil
	})
	rt.handle("GET "+AdminCompanies, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		names, err := v.Companies(r.Context(), p)
		if err != nil {
			return err
		}
		writeJSON(w, names)
		return nil
	})
	rt.handle("GET "+AdminPair, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		st, err := v.PairStatus(r.Context(), p)
		if err != nil {
			return err
		}
		writeJSON(w, st)
		return nil
	})
	rt.handle("POST "+AdminPair+"/remove", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req struct {
			ID string `json:"id"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if err := v.PairRemove(r.Context(), p, req.ID); err != nil {
			return err
		}
		writeJSON(w, map[string]string{"removed": req.ID})
		return nil
	})
	rt.handle("POST "+AdminPair+"/token", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req struct {
			TTL string `json:"ttl"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		ttl := time.Hour
		if req.TTL != "" {
			d, err := time.ParseDuration(req.TTL)
			if err != nil {
				return fail(http.StatusBadRequest, wire.CodeBadRequest, "ttl: %v", err)
			}
			ttl = d
		}
		tok, err := v.PairToken(r.Context(), p, ttl)
		if err != nil {
			return err
		}
		writeJSON(w, map[string]string{"token": tok, "expires": v.clk.Now().Add(ttl).UTC().Format(time.RFC3339)})
		return nil
	})
	rt.handle("POST "+AdminTokens, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req TokenRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.CreateToken(r.Context(), p, req.Company, req.TTL)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET "+AdminComputers, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.Computers(r.Context(), p, r.URL.Query().Get("company"))
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET "+AdminVersions, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		q := r.URL.Query()
		ms, err := v.Versions(r.Context(), p, q.Get("computer"), q.Get("config"))
		if err != nil {
			return err
		}
		writeJSON(w, ms)
		return nil
	})
	rt.handle("POST "+AdminRevoke, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req struct {
			Computer string `json:"computer"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		cp, err := v.Revoke(r.Context(), p, req.Computer)
		if err != nil {
			return err
		}
		writeJSON(w, cp)
		return nil
	})
	rt.handle("GET "+AdminStatus, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		return v.writeStatusJSON(w, r, p, r.URL.Query().Get("company"))
	})
	rt.handle("GET "+AdminStorage, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		writeJSON(w, v.Storage())
		return nil
	})
	rt.handle("POST "+AdminRunNow, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req RunNowRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.Enqueue(r.Context(), p, req.Computer, wire.AgentCommand{Kind: wire.CmdBackup, Backup: &wire.BackupArgs{Config: req.Config}})
		if err != nil {
			return err
		}
		noteTarget(r.Context(), out.Company, out.Computer)
		noteDetail(r.Context(), "back up now "+req.Config+": command "+out.ID)
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET "+AdminCommands, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		wait, err := waitParam(r, 0)
		if err != nil {
			return err
		}
		q := r.URL.Query()
		out, err := v.WaitCommand(r.Context(), p, q.Get("computer"), q.Get("id"), wait)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+AdminSettings, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req SettingsRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.SetBandwidth(r.Context(), p, req.Computer, req.Bandwidth)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	// verify runs as a job: the answer is the job started (or the verify
	// already running); vaultctl follows it on AdminJobs/{id}.
	rt.handle("GET "+AdminQuota, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.Quotas(r.Context(), p)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+AdminQuota, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req QuotaRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if err := v.SetQuota(r.Context(), p, req); err != nil {
			return err
		}
		writeJSON(w, req)
		return nil
	})
	rt.handle("POST "+AdminVerify, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.StartJob(r.Context(), p, jobs.KindVerify)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET "+AdminRetention, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.Retention(r.Context(), p)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+AdminRetention, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req RetentionRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if err := v.SetRetention(r.Context(), p, req); err != nil {
			return err
		}
		writeJSON(w, req)
		return nil
	})
	rt.handle("POST "+AdminPrune, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		if r.URL.Query().Get("dry-run") != "" {
			plan, err := v.PlanPrune(r.Context(), p)
			if err != nil {
				return err
			}
			writeJSON(w, plan)
			return nil
		}
		out, err := v.StartJob(r.Context(), p, jobs.KindPrune)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET "+AdminJobs, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.ListJobs(r.Context(), p)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+AdminJobs, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req StartJobRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.StartJob(r.Context(), p, req.Kind)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET "+AdminJobs+"/{id}", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.ShowJob(r.Context(), p, r.PathValue("id"))
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+AdminJobs+"/{id}/cancel", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.CancelJob(r.Context(), p, r.PathValue("id"))
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET "+AdminJobSchedules, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.JobSchedules(r.Context(), p)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+AdminJobSchedules, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req JobScheduleRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if err := v.SetJobSchedule(r.Context(), p, req); err != nil {
			return err
		}
		writeJSON(w, req)
		return nil
	})
	v.userRoutes(rt, AdminUsers)
	v.manageRoutes(rt)
	v.mailRoutes(rt)
	metrics := promhttp.HandlerFor(v.Metrics, promhttp.HandlerOpts{})
	rt.handle("GET "+AdminMetrics, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		metrics.ServeHTTP(w, r)
		return nil
	})
	v.tapeRoutes(rt)
	return rt
}
