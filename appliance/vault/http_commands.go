package vault

import (
	"net/http"
	"strconv"
	"time"

	"vaultnode/internal/wire"
)

// commandRoutes registers the agent's side of the command channel
// (ops_commands.go).
func (v *Vault) commandRoutes(rt *router) {
	rt.handle("POST "+wire.PathCommandPoll, func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req wire.CommandPoll
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.PollCommands(r.Context(), p, req)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+wire.PathCommand+"{id}/progress", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req wire.CommandProgress
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if err := v.CommandProgress(r.Context(), p, r.PathValue("id"), req); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	rt.handle("GET "+wire.PathRestorePoint("{id}"), func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.RestorePoint(r.Context(), p, r.PathValue("id"))
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("POST "+wire.PathCommand+"{id}/result", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req wire.CommandResult
		if err := readJSON(r, &req); err != nil { // wire.MaxJSONBody bounds it; MaxCommandResult is the agent's own bound, below it
			return err
		}
		out, err := v.FinishCommand(r.Context(), p, r.PathValue("id"), req)
		if err != nil {
			return err
		}
		writeJSON(w, map[string]string{"state": out.State})
		return nil
	})
}

// portalCommandRoutes registers the portal's routes over the command
// channel and configurations (docs/api.md): browse a computer's live
// files, back up now, compare, follow a command, save a configuration or
// a bandwidth profile (the agent is nudged to fetch it at once).
func (v *Vault) portalCommandRoutes(rt *router) {
	base := PortalAPI + "computers/{computer}/"
	// enqueueWait queues cmd and, when wait, waits for its end (a browse
	// answers within seconds when the agent is online).
	enqueue := func(w http.ResponseWriter, r *http.Request, p *Principal, cmd wire.AgentCommand, wait time.Duration) error {
		cv, err := v.Enqueue(r.Context(), p, r.PathValue("computer"), cmd)
		if err != nil {
			return err
		}
		if wait > 0 {
			if cv, err = v.WaitCommand(r.Context(), p, cv.Computer, cv.ID, wait); err != nil {
				return err
			}
		}
		writeJSON(w, cv)
		return nil
	}
	rt.handle("GET /computers/{computer}/configure", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		cp, err := v.computerFor(p, CapConfigure, r.PathValue("computer"))
		if err != nil {
			return err
		}
		c, err := v.Computer(r.Context(), p, cp.ID)
		if err != nil {
			return err
		}
		return render(w, "configure.html", v.pageData(r, p, "Back up "+c.Name, map[string]any{"C": c}))
	})
	rt.handle("POST "+base+"browse", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req wire.BrowseArgs
		if err := readJSON(r, &req); err != nil {
			return err
		}
		wait, err := waitParam(r, BrowseWait)
		if err != nil {
			return err
		}
		return enqueue(w, r, p, wire.AgentCommand{Kind: wire.CmdBrowse, Browse: &req}, wait)
	})
	rt.handle("POST "+base+"backup-now", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req wire.BackupArgs
		if err := readJSON(r, &req); err != nil {
			return err
		}
		return enqueue(w, r, p, wire.AgentCommand{Kind: wire.CmdBackup, Backup: &req}, 0)
	})
	rt.handle("POST "+base+"compare", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req wire.CompareArgs
		if err := readJSON(r, &req); err != nil {
			return err
		}
		return enqueue(w, r, p, wire.AgentCommand{Kind: wire.CmdCompare, Compare: &req}, 0)
	})
	rt.handle("GET "+base+"commands", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.Commands(r.Context(), p, r.PathValue("computer"))
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET "+base+"commands/{id}", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		wait, err := waitParam(r, 0)
		if err != nil {
			return err
		}
		out, err := v.WaitCommand(r.Context(), p, r.PathValue("computer"), r.PathValue("id"), wait)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("GET "+base+"configs", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		out, err := v.Computer(r.Context(), p, r.PathValue("computer"))
		if err != nil {
			return err
		}
		writeJSON(w, map[string]any{"id": out.ID, "name": out.Name, "company": out.Company, "configs": out.Configs, "settings": out.Settings})
		return nil
	})
	rt.handle("PUT "+base+"configs/{name}", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var cfg wire.Config
		if err := readJSON(r, &cfg); err != nil {
			return err
		}
		cfg.Name = r.PathValue("name")
		out, err := v.PutConfigNudge(r.Context(), p, r.PathValue("computer"), cfg)
		if err != nil {
			return err
		}
		writeJSON(w, out)
		return nil
	})
	rt.handle("DELETE "+base+"configs/{name}", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		if err := v.DeleteConfig(r.Context(), p, r.PathValue("computer"), r.PathValue("name")); err != nil {
			return err
		}
		v.nudge(r.Context(), p, r.PathValue("computer"))
		writeJSON(w, map[string]string{"deleted": r.PathValue("name")})
		return nil
	})
	rt.handle("PUT "+base+"bandwidth", func(w http.ResponseWriter, r *http.Request, p *Principal) error {
		var req wire.Settings
		if err := readJSON(r, &req); err != nil {
			return err
		}
		out, err := v.SetBandwidth(r.Context(), p, r.PathValue("computer"), req.Bandwidth)
		if err != nil {
			return err
		}
		v.nudge(r.Context(), p, r.PathValue("computer"))
		writeJSON(w, out)
		return nil
	})
}

// BrowseWait is how long the portal's browse waits for the agent's answer
// before answering with the command still running (the page then follows
// it).
const BrowseWait = 15 * time.Second

// waitParam is the request's ?wait=SECONDS (def when absent).
func waitParam(r *http.Request, def time.Duration) (time.Duration, error) {
	s := r.URL.Query().Get("wait")
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fail(http.StatusBadRequest, wire.CodeBadRequest, "wait %q: want seconds, at most %d", s, int(wire.MaxCommandWait.Seconds()))
	}
	return time.Duration(n) * time.Second, nil
}
