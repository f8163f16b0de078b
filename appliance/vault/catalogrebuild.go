package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"go.etcd.io/bbolt"
	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/store"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/wire"
)

// CatalogRebuild says what RebuildCatalog did.
type CatalogRebuild struct {
	OldCatalog string   `json:"old_catalog,omitempty"` // where the previous catalog.db was moved, if it was
	Companies  int      `json:"companies_added"`
	Computers  int      `json:"computers_added"`
	Versions   int      `json:"versions_added"`
	Kept       int      `json:"versions_kept"` // already in the catalog
	Problems   []string `json:"problems,omitempty"`
	// NoSpec lists configurations that have versions but no specification
	// in the catalog: their versions restore, but the agent backs them up
	// again only after `vault-agent config set`.
	NoSpec []string `json:"configurations_without_spec,omitempty"`
}

// RebuildCatalog makes the catalog agree with the packs, the vault
// stopped: every version whose manifest is in the packs is recorded (with
// its company, from DATA/keys, and its computer), and revocations come back
// from DATA/revoked. An existing, readable catalog is kept and only
// completed; with fresh, or when catalog.db cannot be opened, it is moved
// aside and a new one is built from the packs alone. What cannot come
// back from packs is listed in docs/format.md ("Rebuilding the catalog").
func RebuildCatalog(ctx context.Context, dir string, fresh bool, log *zap.Logger) (CatalogRebuild, error) {
	var res CatalogRebuild
	if log == nil {
		log = zap.NewNop()
	}
	if err := checkStopped(dir); err != nil {
		return res, fmt.Errorf("rebuild catalog: %w", err)
	}
	mkPath := filepath.Join(dir, "master.key")
	if _, err := os.Stat(mkPath); err != nil {
		return res, fmt.Errorf("rebuild catalog: %w: without the master key no pack can be read; restore master.key from your key backup", err)
	}
	mk, err := loadMasterKey(mkPath)
	if err != nil {
		return res, err
	}
	catPath := filepath.Join(dir, catalog.File)
	if _, err := os.Stat(catPath); err == nil {
		if !fresh {
			db, err := bbolt.Open(catPath, 0o600, &bbolt.Options{Timeout: time.Second, ReadOnly: true})
			if errors.Is(err, bbolt.ErrTimeout) {
				return res, fmt.Errorf("rebuild catalog: %s is locked: stop vaultd first", catPath)
			}
			if err != nil {
				log.Warn("the catalog cannot be opened: building a new one from the packs", zap.Error(err))
				fresh = true
			} else {
				db.Close()
			}
		}
		if fresh {
			res.OldCatalog = fmt.Sprintf("%s.old-%d", catPath, time.Now().Unix())
			if err := os.Rename(catPath, res.OldCatalog); err != nil {
				return res, fmt.Errorf("move the old catalog aside: %w", err)
			}
			log.Info("old catalog kept", zap.String("path", res.OldCatalog))
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return res, fmt.Errorf("rebuild catalog: %w", err)
	}
	cat, err := catalog.Open(dir, catalog.Options{Log: log.Named("catalog")})
	if err != nil {
		return res, err
	}
	defer cat.Close()
	v := &Vault{log: log, master: pack.NewAEAD(mk), Catalog: cat, keys: map[string]*companyKeys{}}

	// Companies: every sealed secret kept beside the catalog.
	sealed, err := catalog.SealedCompanies(dir)
	if err != nil {
		return res, err
	}
	for _, name := range sealed {
		if _, err := cat.Company(name); err == nil {
			continue
		}
		s, err := catalog.ReadSealed(dir, name)
		if err != nil {
			res.Problems = append(res.Problems, err.Error())
			continue
		}
		if err := cat.CreateCompany(catalog.Company{Name: name, Sealed: s, Created: time.Now().UTC()}); err != nil {
			return res, err
		}
		res.Companies++
	}
	companies, err := cat.Companies()
	if err != nil {
		return res, err
	}

	if v.Store, err = store.Open(dir, log.Named("store"), v.storeOptions()); err != nil {
		return res, err
	}
	defer v.Store.Close()

	type verKey struct {
		computer, config string
		seq              uint64
	}
	found := map[verKey]catalog.Version{}
	for _, co := range companies {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		k, err := v.companyKeys(co.Name)
		if err != nil {
			res.Problems = append(res.Problems, err.Error())
			continue
		}
		var ids [][32]byte
		err = v.Store.ForEachChunk(co.Name, func(id [32]byte, loc store.Location) error {
			if loc.Kind == pack.KindManifest {
				ids = append(ids, id)
			}
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("list manifests of %s: %w", co.Name, err)
		}
		for _, id := range ids {
			m, err := readManifest(v.Store, co.Name, k, id)
			if err != nil {
				res.Problems = append(res.Problems, err.Error())
				continue
			}
			kk := verKey{m.Computer, m.Config, m.Seq}
			old, dup := found[kk]
			// Two manifests of one sequence: an interrupted commit and its
			// retry; the retry finished later.
			if !dup || m.Finished.After(old.Finished) || (m.Finished.Equal(old.Finished) && bytes.Compare(id[:], old.ManifestID[:]) > 0) {
				found[kk] = catalog.Version{Manifest: m, ManifestID: id}
			}
		}
	}
	keys := make([]verKey, 0, len(found))
	for k := range found {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.computer != b.computer {
			return a.computer < b.computer
		}
		if a.config != b.config {
			return a.config < b.config
		}
		return a.seq < b.seq
	})
	for _, kk := range keys {
		ver := found[kk]
		cp, err := cat.Computer(kk.computer)
		switch {
		case errors.Is(err, catalog.ErrNotFound):
			cp = catalog.Computer{ID: kk.computer, Company: ver.Company, Name: kk.computer, Enrolled: ver.Started.UTC()}
			if err := cat.RecordComputer(cp); err != nil {
				return res, err
			}
			res.Computers++
		case err != nil:
			return res, err
		case cp.Company != ver.Company:
			res.Problems = append(res.Problems, fmt.Sprintf("version %s/%s@%d: in the packs of %s, but the computer belongs to %s: skipped",
				kk.computer, kk.config, kk.seq, ver.Company, cp.Company))
			continue
		}
		err = cat.AddVersion(ver.Manifest, ver.ManifestID)
		switch {
		case errors.Is(err, catalog.ErrExists):
			res.Kept++
		case err != nil:
			return res, err
		default:
			res.Versions++
		}
	}
	if err := cat.ReapplyRevocations(); err != nil {
		return res, err
	}
	seen := map[string]bool{}
	for _, kk := range keys {
		name := kk.computer + "/" + kk.config
		if seen[name] {
			continue
		}
		seen[name] = true
		if _, err := cat.Config(kk.computer, kk.config); errors.Is(err, catalog.ErrNotFound) {
			res.NoSpec = append(res.NoSpec, name)
		}
	}
	log.Info("catalog rebuilt from the packs", zap.Int("versions_added", res.Versions), zap.Int("versions_kept", res.Kept),
		zap.Int("computers_added", res.Computers), zap.Int("problems", len(res.Problems)))
	return res, nil
}

// readManifest reads, authenticates and decodes one manifest entry.
func readManifest(s *store.Store, company string, k *companyKeys, id [32]byte) (wire.Manifest, error) {
	var m wire.Manifest
	payload, loc, err := s.Get(company, k.aead, id, nil)
	if err != nil {
		return m, fmt.Errorf("read manifest %x of %s: %w", id[:8], company, err)
	}
	plain, err := wire.Decompress(nil, loc.Flags, payload, loc.PlainLen)
	if err != nil {
		return m, fmt.Errorf("read manifest %x of %s: %w", id[:8], company, err)
	}
	if keys.NewHasher(k.set.ChunkID).Sum(plain) != id {
		return m, fmt.Errorf("manifest %x of %s does not hash to its id", id[:8], company)
	}
	mp, err := wire.DecodeManifest(plain) // within the manifest limits (docs/protocol.md)
	if err != nil {
		return m, fmt.Errorf("decode manifest %x of %s: %w", id[:8], company, err)
	}
	m = *mp
	switch {
	case m.Magic != wire.ManifestMagic:
		return m, fmt.Errorf("manifest %x of %s: magic %q, want %q", id[:8], company, m.Magic, wire.ManifestMagic)
	case m.Company != company:
		return m, fmt.Errorf("manifest %x in the packs of %s names company %q", id[:8], company, m.Company)
	case catalog.ValidComputerID(m.Computer) != nil, catalog.ValidConfigName(m.Config) != nil, m.Seq == 0:
		return m, fmt.Errorf("manifest %x of %s names no valid version (%q/%q@%d)", id[:8], company, m.Computer, m.Config, m.Seq)
	}
	return m, nil
}
