package vault

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// restoreTargets lists the computers of company that p may restore onto:
// those it holds restore over, not revoked.
func (v *Vault) restoreTargets(ctx context.Context, p *Principal, company string) ([]catalog.Computer, error) {
	if !p.Has(CapRestore) {
		return nil, forbid(p, CapRestore)
	}
	cps, err := v.Catalog.Computers(company)
	if err != nil {
		return nil, err
	}
	out := []catalog.Computer{}
	for _, cp := range cps {
		if cp.Revoked == nil && cp.Company == company && p.Covers(cp.Company, cp.ID) {
			out = append(out, cp)
		}
	}
	return out, nil
}

// RestoreRequest restores files or directories of a version, or the whole
// version, onto the computer it comes from or another computer of the same
// company, into their original place or another directory.
type RestoreRequest struct {
	Computer string `json:"computer"` // whose version
	Config   string `json:"config"`
	Point
	// Paths are the version's paths (absolute) to restore with what is
	// below them; empty: all of it.
	Paths []string `json:"paths,omitempty"`
	// Target is the computer that restores (its agent runs it); empty:
	// Computer.
	Target string `json:"target,omitempty"`
	// To is the directory of Target to restore into; empty: the original
	// place.
	To string `json:"to,omitempty"`
	// Existing is the policy for files already there: skip (default),
	// overwrite, keep-both (the restored copy gets another name).
	Existing string `json:"existing,omitempty"`
}

// Restore queues a restore on the target computer's agent (the command
// channel) and answers the command to follow. p needs restore over both
// computers, which must be of one company: the target's agent reads the
// source's chunks with its own company's keys, and a computer's agent can
// read only its own company's packs (GetChunks), so a restore across
// companies could not work and is refused here.
func (v *Vault) Restore(ctx context.Context, p *Principal, req RestoreRequest) (CommandView, error) {
	if p.Kind == Agent {
		return CommandView{}, fail(http.StatusForbidden, wire.CodeForbidden, "%s is a computer: restores are queued for agents, not by them", p)
	}
	src, err := v.computerFor(p, CapRestore, req.Computer)
	if err != nil {
		return CommandView{}, err
	}
	noteTarget(ctx, src.Company, src.ID)
	dst := src
	if req.Target != "" {
		if dst, err = v.computerFor(p, CapRestore, req.Target); err != nil {
			return CommandView{}, err
		}
		if dst.Company != src.Company {
			return CommandView{}, fail(http.StatusBadRequest, wire.CodeBadRequest,
				"computer %s is of company %s and %s of %s: restore onto a computer of the same company", dst.Name, dst.Company, src.Name, src.Company)
		}
	}
	pt, err := v.resolve(src, req.Config, req.Point)
	if err != nil {
		return CommandView{}, err
	}
	args := wire.RestoreArgs{Config: req.Config, Version: pt.m.Seq, To: req.To, Existing: req.Existing}
	for _, path := range req.Paths {
		if !strings.HasPrefix(path, "/") {
			return CommandView{}, fail(http.StatusBadRequest, wire.CodeBadRequest, "path %q: give the version's paths absolute, as the computer had them", path)
		}
		lp := listingPath(path)
		if lp == "" { // the root: all of it
			args.Paths = nil
			break
		}
		args.Paths = append(args.Paths, "/"+lp)
	}
	if dst.ID != src.ID {
		args.Computer = src.ID
	}
	if len(pt.journal) > 0 {
		args.At = pt.covers()
	}
	to := args.To
	if to == "" {
		to = "the original place"
	}
	what := "all of it"
	if len(args.Paths) > 0 {
		what = strings.Join(args.Paths, ", ")
	}
	noteDetail(ctx, truncate(fmt.Sprintf("restore %s@%d (+%d journal records) of %s: %s, onto %s into %s, existing files: %s",
		req.Config, pt.m.Seq, len(pt.journal), src.Name, what, dst.Name, to, cmp.Or(args.Existing, "skip")), maxDetail-100))
	return v.Enqueue(ctx, p, dst.ID, wire.AgentCommand{Kind: wire.CmdRestore, Restore: &args})
}

// RestorePoint answers the agent p the version and journal records of its
// restore command id: the version of another computer of its company, or a
// moment's journal records, which its own routes would not give it.
func (v *Vault) RestorePoint(ctx context.Context, p *Principal, id string) (wire.RestorePoint, error) {
	c, err := self(p, CapRestore)
	if err != nil {
		return wire.RestorePoint{}, err
	}
	rec, err := v.Catalog.AgentCommand(c.ID, id)
	if err != nil {
		return wire.RestorePoint{}, catalogErr(err)
	}
	if rec.Kind != wire.CmdRestore || rec.Restore == nil || rec.Finished() {
		return wire.RestorePoint{}, fail(http.StatusNotFound, wire.CodeNotFound, "command %s is not a running restore of this computer", id)
	}
	a := rec.Restore
	src := c.Computer
	if a.Computer != "" {
		if src, err = v.Catalog.Computer(a.Computer); err != nil {
			return wire.RestorePoint{}, catalogErr(err)
		}
	}
	if src.Company != c.Company { // never queued so; checked again as the chunks are the company's
		return wire.RestorePoint{}, fail(http.StatusForbidden, wire.CodeForbidden, "command %s restores a computer of another company", id)
	}
	pt, err := v.resolve(src, a.Config, Point{Version: strconv.FormatUint(a.Version, 10)})
	if err != nil {
		return wire.RestorePoint{}, err
	}
	out := wire.RestorePoint{Manifest: pt.m, Journal: []wire.Journal{}}
	if !a.At.IsZero() {
		js, err := v.Catalog.Journal(src.ID, a.Config, pt.m.Seq)
		if err != nil {
			return out, err
		}
		for _, j := range js {
			if !j.Time.After(a.At) {
				out.Journal = append(out.Journal, j)
			}
		}
	}
	return out, nil
}
