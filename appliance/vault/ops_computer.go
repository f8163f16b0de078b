package vault

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// Computers: enrolment, what a computer is told about itself, listing,
// revocation, and the agent's reports.

// Enroll records a new computer of the token's company and signs its
// certificate. The enrolment token is its authority: it needs no principal.
func (v *Vault) Enroll(ctx context.Context, req wire.EnrollRequest) (wire.EnrollResponse, error) {
	tok, err := wire.ParseToken(req.Token)
	if err != nil {
		return wire.EnrollResponse{}, fail(http.StatusBadRequest, wire.CodeBadToken, "%v", err)
	}
	name := strings.TrimSpace(req.Hostname)
	if name == "" || len(name) > 253 {
		return wire.EnrollResponse{}, fail(http.StatusBadRequest, wire.CodeBadRequest, "hostname must be 1 to 253 characters")
	}
	var certPEM []byte
	cp, err := v.Catalog.Enroll(tok.Secret[:], v.clk.Now(), func(company string) (catalog.Computer, error) {
		id := catalog.NewComputerID()
		var fp string
		var err error
		certPEM, fp, err = v.CA.SignComputer(req.CSR, id, company, v.clk.Now())
		if err != nil {
			return catalog.Computer{}, fail(http.StatusBadRequest, wire.CodeBadRequest, "%v", err)
		}
		return catalog.Computer{ID: id, Company: company, Name: name, Fingerprint: fp, Enrolled: v.clk.Now()}, nil
	})
	if errors.Is(err, catalog.ErrToken) {
		return wire.EnrollResponse{}, fail(http.StatusForbidden, wire.CodeBadToken, "enrolment token is unknown, already used or expired: create a new one with `vaultctl token create COMPANY`")
	}
	if err != nil {
		return wire.EnrollResponse{}, err
	}
	noteActor(ctx, "enrolment token of "+cp.Company, Anonymous.String())
	noteTarget(ctx, cp.Company, cp.ID)
	noteDetail(ctx, "enrolled "+cp.Name)
	v.log.Info("computer enrolled", zap.String("id", cp.ID), zap.String("name", cp.Name), zap.String("company", cp.Company))
	return wire.EnrollResponse{ComputerID: cp.ID, Company: cp.Company, Certificate: certPEM, CA: v.CA.CAPEM, Vaults: v.pairVaults()}, nil
}

// Computer is what the computer ref is told about itself: its identity,
// configurations and settings, and, for the computer's own agent only, its
// company's chunk-ID and chunker keys.
func (v *Vault) Computer(ctx context.Context, p *Principal, ref string) (wire.Computer, error) {
	cp, err := v.computerFor(p, CapView, ref)
	if err != nil {
		return wire.Computer{}, err
	}
	cfgs, err := v.Catalog.Configs(cp.ID)
	if err != nil {
		return wire.Computer{}, err
	}
	out := wire.Computer{ID: cp.ID, Name: cp.Name, Company: cp.Company, Configs: cfgs, Settings: cp.Settings}
	if p.agent != nil && p.agent.ID == cp.ID {
		out.ChunkKey, out.GearKey = p.agent.keys.set.ChunkID[:], p.agent.keys.set.Gear[:]
	}
	return out, nil
}

// ComputerInfo is a computer with its configurations.
type ComputerInfo struct {
	catalog.Computer
	Configs []wire.Config `json:"configs"`
}

// Computers lists the computers of company (every company: "") that p may
// see, with their configurations.
func (v *Vault) Computers(ctx context.Context, p *Principal, company string) ([]ComputerInfo, error) {
	company, err := companyFor(p, CapView, company, false)
	if err != nil {
		return nil, err
	}
	cps, err := v.Catalog.Computers(company)
	if err != nil {
		return nil, err
	}
	out := []ComputerInfo{}
	for _, cp := range cps {
		if !p.Covers(cp.Company, cp.ID) {
			continue
		}
		cfgs, err := v.Catalog.Configs(cp.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, ComputerInfo{Computer: cp, Configs: cfgs})
	}
	return out, nil
}

// Revoke revokes the computer ref: its certificate is refused from now on.
func (v *Vault) Revoke(ctx context.Context, p *Principal, ref string) (catalog.Computer, error) {
	cp, err := v.computerFor(p, CapManageComputers, ref)
	if err != nil {
		return cp, err
	}
	noteTarget(ctx, cp.Company, cp.ID)
	if err := v.Catalog.Revoke(cp.ID, v.clk.Now()); err != nil {
		return cp, err
	}
	return cp, v.interruptCommands(cp.ID, "the computer was revoked")
}

// ReportState records an agent's report on one of its configurations, stamped
// with the vault's time (the vault's clock says when it last heard from the
// agent).
func (v *Vault) ReportState(ctx context.Context, p *Principal, rep wire.Report) error {
	c, err := self(p, CapBackup)
	if err != nil {
		return err
	}
	rep.Time = v.clk.Now()
	return v.Catalog.PutReport(c.ID, rep)
}
