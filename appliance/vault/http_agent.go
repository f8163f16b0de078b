package vault

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/pair"
	"vaultnode/appliance/pki"
	"vaultnode/internal/wire"
)

// The agent API (mutual TLS): routes, authentication by client
// certificate, and handlers that decode, call an operation, and encode.

// caller is the authenticated computer of a request.
type caller struct {
	catalog.Computer
	keys *companyKeys
}

// authenticateAgent is the agent API's authenticator: the principal is the
// computer of the client certificate.
func (v *Vault) authenticateAgent(r *http.Request) (*Principal, error) {
	c, err := v.authenticate(r)
	if err != nil {
		return nil, err
	}
	return agentPrincipal(c), nil
}

func (v *Vault) authenticate(r *http.Request) (*caller, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, fail(http.StatusUnauthorized, wire.CodeUnauthorized, "no client certificate: enrol this computer with `vault-agent enroll`")
	}
	cert := r.TLS.PeerCertificates[0]
	cp, err := v.Catalog.Computer(cert.Subject.CommonName)
	if err != nil {
		return nil, fail(http.StatusForbidden, wire.CodeUnauthorized, "computer %q is unknown to this vault: enrol it again with a new token", cert.Subject.CommonName)
	}
	if cp.Revoked != nil {
		return nil, fail(http.StatusForbidden, wire.CodeRevoked, "computer %s (%s) was revoked on %s: ask the vault administrator for a new enrolment token", cp.Name, cp.ID, cp.Revoked.Format(time.RFC3339))
	}
	if cp.Fingerprint != "" && cp.Fingerprint != pki.Fingerprint(cert.Raw) {
		return nil, fail(http.StatusForbidden, wire.CodeUnauthorized, "certificate of %s is not the one it enrolled with", cp.ID)
	}
	v.Catalog.Seen(cp.ID, v.clk.Now()) // every authenticated request is contact (kept in memory, written in batches)
	k, err := v.companyKeys(cp.Company)
	if err != nil {
		return nil, err
	}
	return &caller{Computer: cp, keys: k}, nil
}

func (v *Vault) agentHandler() http.Handler {
	rt := v.agentRoutes(v.authenticateAgent)
	// guard: deadlines and enrolment rate (deadline.go); storageGuard: a
	// failed array refuses everything but health (storage.go); followLeader:
	// a pair member that does not lead sends agents to the leader (pair.go).
	return withRequestID(v.guard(v.storageGuard(v.followLeader(rt.mux))))
}

// agentRoutes registers the agent API; each route's capability is in
// routeCaps (authz.go). An agent acts on its own computer: the handlers
// name none, and the operations take it from the principal.
func (v *Vault) agentRoutes(authn authenticator) *router {
	rt := v.newRouter(authn)
	rt.handle("GET "+wire.PathHealth, func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		out := map[string]any{"status": "ok", "time": v.clk.Now().UTC()}
		if st := v.Storage(); st.Known {
			out["storage"] = st.Report.State
		}
		if ph := v.pairHealth(); ph != nil {
			out["pair"] = ph
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+pair.PathJoin, func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		var req pair.JoinRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.pairJoin(r.Context(), req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+wire.PathEnroll, func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		var req wire.EnrollRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.Enroll(r.Context(), req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET "+wire.PathComputer, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.Computer(r.Context(), p, "")
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("PUT "+wire.PathConfigs+"{name}", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var cfg wire.Config
		if err := readJSON(r, &cfg); err != nil {
			return err
		}
		cfg.Name = r.PathValue("name")
		out, err := v.PutConfig(r.Context(), p, "", cfg)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("DELETE "+wire.PathConfigs+"{name}", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		if err := v.DeleteConfig(r.Context(), p, "", r.PathValue("name")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	rt.handle("POST "+wire.PathSessions, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req wire.OpenSession
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.OpenSession(r.Context(), p, req.Config)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+wire.PathSession+"{id}/lack", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		if _, _, err := v.session(p, r.PathValue("id")); err != nil {
			return err // an unknown session, before reading the body
		}
		ids, err := readIDs(r, wire.MaxLackIDs)
		if err != nil {
			return err
		}
		bitmap, err := v.Lack(r.Context(), p, r.PathValue("id"), ids)
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", wire.MediaFrames)
		w.Write(bitmap)
		return nil
	})
	rt.handle("POST "+wire.PathSession+"{id}/chunks", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		n, err := v.Upload(r.Context(), p, r.PathValue("id"), r.ContentLength, r.Body)
		if err != nil {
			return err
		}
		writeJSON(w, map[string]int{"stored": n})
		return nil
	})
	rt.handle("POST "+wire.PathSession+"{id}/commit", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		release, err := v.admit(r.Context(), v.uploads, p, CapBackup, r.PathValue("id"))
		if err != nil {
			return err
		}
		defer release()
		var req wire.Commit
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.Commit(r.Context(), p, r.PathValue("id"), req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+wire.PathSession+"{id}/abort", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		if err := v.Abort(r.Context(), p, r.PathValue("id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	rt.handle("POST "+wire.PathSession+"{id}/journal", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		release, err := v.admit(r.Context(), v.uploads, p, CapBackup, r.PathValue("id"))
		if err != nil {
			return err
		}
		defer release()
		var req wire.JournalCommit
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.AddJournal(r.Context(), p, r.PathValue("id"), req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET "+wire.PathVersions+"{config}", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		config := r.PathValue("config")
		if config == "*" {
			config = ""
		}
		ms, err := v.Versions(r.Context(), p, "", config)
		if err != nil {
			return err
		}
		writeJSON(w, wire.Versions{Versions: ms})
		return nil
	})
	rt.handle("GET "+wire.PathJournal+"{config}", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var base uint64
		if b := r.URL.Query().Get("base"); b != "" {
			var err error
			if base, err = strconv.ParseUint(b, 10, 64); err != nil {
				return fail(http.StatusBadRequest, wire.CodeBadRequest, "base %q is not a version number", b)
			}
		}
		js, err := v.JournalRecords(r.Context(), p, "", r.PathValue("config"), base)
		if err != nil {
			return err
		}
		writeJSON(w, js)
		return nil
	})
	rt.handle("POST "+wire.PathStatus, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req wire.Report
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if err := v.ReportState(r.Context(), p, req); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	rt.handle("POST "+wire.PathRestoreReport, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req wire.RestoreReport
		if err := wire.DecodeJSON(r.Body, wire.MaxRestoreReport, "wire.MaxRestoreReport", &req, true); err != nil {
			return fail(http.StatusBadRequest, wire.CodeLimit, "restore report: %v", err)
		}
		if err := v.ReportRestore(r.Context(), p, req); err != nil {
			return err
		}
		v.auditRequest(r, p) // an agent's reports are not audited by the middleware; this one is the point
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	rt.handle("PUT "+wire.PathSettings, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req wire.Settings
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.SetBandwidth(r.Context(), p, "", req.Bandwidth)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+wire.PathChunks, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		release, err := v.admit(r.Context(), v.downloads, p, CapRestore, "")
		if err != nil {
			return err
		}
		defer release()
		ids, err := readIDs(r, wire.MaxGetIDs)
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", wire.MediaFrames)
		err = v.GetChunks(r.Context(), p, ids, func(frame []byte) error {
			// One write a frame, from where it was read and opened:
			// one hand-over to the connection's writer, no copy.
			if _, err := w.Write(frame); err != nil {
				return errClientGone // or stopped reading: deadline.go
			}
			return nil
		})
		if errors.Is(err, errClientGone) {
			return nil
		}
		return err
	})
	v.commandRoutes(rt)
	rt.handle("/", func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		return fail(http.StatusNotFound, wire.CodeNotFound, "no such API: %s %s", r.Method, r.URL.Path)
	})
	return rt
}

// errClientGone ends a download whose client stopped reading.
var errClientGone = errors.New("client went away")
