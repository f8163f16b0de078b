package catalog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
	"vaultnode/internal/atomicfile"

	"go.uber.org/zap"
)

// Files the catalog keeps beside catalog.db, so that a catalog rebuilt from
// packs can read the packs and never un-revokes a computer
// (docs/format.md, "Catalog").
const (
	KeysDir        = "keys"    // DATA/keys/COMPANY.sealed: a company's secret sealed with the master key
	RevocationFile = "revoked" // DATA/revoked: one JSON revocation per line, append-only
	// MaxSealed bounds a sealed company secret file.
	MaxSealed = 1 << 10
	// MaxRevocationLine bounds one line of DATA/revoked.
	MaxRevocationLine = 4 << 10
)

// Revocation is one line of DATA/revoked.
type Revocation struct {
	Computer string    `json:"computer"`
	Company  string    `json:"company"`
	Name     string    `json:"name"`
	Time     time.Time `json:"time"`
}

// SealedPath is where a company's sealed secret is kept outside the catalog.
func SealedPath(dir, company string) string {
	return filepath.Join(dir, KeysDir, company+".sealed")
}

// writeSealed writes a company's sealed secret durably (temporary file,
// fsync, rename, fsync of the directory).
func (c *Catalog) writeSealed(company string, sealed []byte) error {
	if len(sealed) == 0 || len(sealed) > MaxSealed {
		return fmt.Errorf("%w: sealed secret of company %q is %d bytes (1 to %d)", ErrInvalid, company, len(sealed), MaxSealed)
	}
	kd := filepath.Join(c.dir, KeysDir)
	if err := os.MkdirAll(kd, 0o700); err != nil {
		return fmt.Errorf("write sealed secret of %q: %w", company, err)
	}
	if err := atomicfile.WriteFile(SealedPath(c.dir, company), sealed, 0o600); err != nil {
		return fmt.Errorf("write sealed secret of %q: %w", company, err)
	}
	return atomicfile.SyncDir(c.dir)
}

// ReadSealed reads a company's sealed secret from DATA/keys.
func ReadSealed(dir, company string) ([]byte, error) {
	f, err := os.Open(SealedPath(dir, company))
	if err != nil {
		return nil, fmt.Errorf("read sealed secret of %q: %w", company, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxSealed+1))
	if err != nil {
		return nil, fmt.Errorf("read sealed secret of %q: %w", company, err)
	}
	if len(b) == 0 || len(b) > MaxSealed {
		return nil, fmt.Errorf("%w: %s is %d bytes (1 to %d)", ErrCorrupt, SealedPath(dir, company), len(b), MaxSealed)
	}
	return b, nil
}

// SealedCompanies lists the companies with a sealed secret in DATA/keys.
func SealedCompanies(dir string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(dir, KeysDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list sealed secrets: %w", err)
	}
	var out []string
	for _, e := range ents {
		name, ok := cutSuffix(e.Name(), ".sealed")
		if ok && ValidCompanyName(name) == nil {
			out = append(out, name)
		}
	}
	return out, nil
}

func cutSuffix(s, suffix string) (string, bool) {
	if len(s) > len(suffix) && s[len(s)-len(suffix):] == suffix {
		return s[:len(s)-len(suffix)], true
	}
	return s, false
}

// appendRevocation appends one revocation to DATA/revoked and syncs it.
func (c *Catalog) appendRevocation(cp Computer, t time.Time) error {
	line, err := json.Marshal(Revocation{Computer: cp.ID, Company: cp.Company, Name: cp.Name, Time: t})
	if err != nil {
		return fmt.Errorf("record revocation of %s: %w", cp.ID, err)
	}
	path := filepath.Join(c.dir, RevocationFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("record revocation of %s: %w", cp.ID, err)
	}
	defer f.Close()
	// A line torn by a crash is ended first, so this one stays whole.
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
			line = append([]byte{'\n'}, line...)
		}
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("record revocation of %s: %w", cp.ID, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("record revocation of %s: %w", cp.ID, err)
	}
	return atomicfile.SyncDir(c.dir)
}

// ReadRevocations reads DATA/revoked. A line that does not decode (torn by a
// crash, damaged) is reported through bad and skipped.
func ReadRevocations(dir string, bad func(line int, err error)) ([]Revocation, error) {
	f, err := os.Open(filepath.Join(dir, RevocationFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read revocations: %w", err)
	}
	defer f.Close()
	var out []Revocation
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 512), MaxRevocationLine)
	for n := 1; sc.Scan(); n++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var r Revocation
		if err := json.Unmarshal(b, &r); err != nil || ValidComputerID(r.Computer) != nil {
			if err == nil {
				err = fmt.Errorf("computer id %q", r.Computer)
			}
			bad(n, fmt.Errorf("%w %s line %d: %v", ErrCorrupt, RevocationFile, n, err))
			continue
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("%w %s: %v (a line over %d bytes): remove the damaged line, keeping the others", ErrCorrupt,
			filepath.Join(dir, RevocationFile), err, MaxRevocationLine)
	}
	return out, nil
}

// ReapplyRevocations revokes in the catalog every computer that
// DATA/revoked revokes (a catalog restored from an old copy or rebuilt).
// Open calls it.
func (c *Catalog) ReapplyRevocations() error {
	rs, err := ReadRevocations(c.dir, func(line int, err error) { c.log.Warn("skip a revocation line", zap.Error(err)) })
	if err != nil {
		return err
	}
	for _, r := range rs {
		cp, err := c.Computer(r.Computer)
		if err != nil || cp.Revoked != nil {
			continue
		}
		if err := c.Revoke(r.Computer, r.Time); errors.Is(err, ErrNotLeader) {
			// A pair member that does not lead: the leader's catalog
			// carries the revocation, and this one gets it from the log.
			c.log.Warn("revocation in DATA/revoked left to the pair's leader", zap.String("computer", r.Computer))
			continue
		} else if err != nil {
			return fmt.Errorf("reapply revocation of %s: %w", r.Computer, err)
		}
		c.log.Warn("computer revoked again from DATA/revoked (the catalog had forgotten it)", zap.String("computer", r.Computer))
	}
	return nil
}

// keepSealed writes DATA/keys/COMPANY.sealed for every company that lacks
// it (a catalog made before the secrets were kept beside it).
func (c *Catalog) keepSealed() error {
	cos, err := c.Companies()
	if err != nil {
		return err
	}
	for _, co := range cos {
		if _, err := os.Stat(SealedPath(c.dir, co.Name)); err == nil {
			continue
		}
		if err := c.writeSealed(co.Name, co.Sealed); err != nil {
			return err
		}
		c.log.Info("company secret sealed beside the catalog", zap.String("company", co.Name))
	}
	return nil
}
