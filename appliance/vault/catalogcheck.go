package vault

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"go.uber.org/zap"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/pair"
)

// ErrIndexBehind is an index that lacks entries the catalog says are
// committed: the vault refuses to start on it rather than guess.
var ErrIndexBehind = errors.New("the index (index.db) is older than the catalog")

// ErrCatalogMissing is a data directory that holds data but no catalog.
var ErrCatalogMissing = errors.New("the catalog (catalog.db) is missing")

// checkCatalogThere refuses to start with a new, empty catalog where the
// vault already holds data (sealed company secrets, an index, packs): an
// empty catalog would hide every version and make every agent enrol again.
func checkCatalogThere(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, catalog.File)); !errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var held []string
	if names, _ := catalog.SealedCompanies(dir); len(names) > 0 {
		held = append(held, fmt.Sprintf("%d company secrets in %s", len(names), filepath.Join(dir, catalog.KeysDir)))
	}
	if _, err := os.Stat(filepath.Join(dir, "index.db")); err == nil {
		held = append(held, "index.db")
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "packs")); len(ents) > 0 {
		held = append(held, "packs")
	}
	if len(held) == 0 {
		return nil
	}
	return fmt.Errorf("%w from %s, which holds %s: restore catalog.db from a backup, or run `vaultctl -data %s rebuild-catalog` "+
		"to rebuild it from the packs (docs/format.md says what comes back)", ErrCatalogMissing, dir, strings.Join(held, ", "), dir)
}

// indexHas is what the start-up check needs of the store: whether the
// index has a record at all (a chunk verify quarantined as damaged is
// known to the index, though Has reports it absent).
type indexHas interface {
	Indexed(company string, ids [][32]byte) ([]bool, error)
}

// missingEntry is an entry the catalog references and the index lacks.
type missingEntry struct {
	company, what string
	id            [32]byte
}

func (m missingEntry) String() string {
	return fmt.Sprintf("%s (chunk %s of company %s)", m.what, hex.EncodeToString(m.id[:8]), m.company)
}

// missingFromIndex checks, for every configuration of every computer, that
// the index holds its newest version's manifest (or, for a version recorded
// before manifest IDs were kept, its listing chunks) and the listing chunks
// of the newest journal record on top of it. It is cheap: a few lookups per
// configuration.
func missingFromIndex(cat *catalog.Catalog, idx indexHas) ([]missingEntry, error) {
	newest, err := cat.NewestVersions()
	if err != nil {
		return nil, err
	}
	var out []missingEntry
	for _, ver := range newest {
		name := fmt.Sprintf("%s/%s@%d", ver.Computer, ver.Config, ver.Seq)
		var ids [][32]byte
		var what []string
		if !ver.ManifestID.IsZero() {
			ids, what = append(ids, ver.ManifestID), append(what, "manifest of version "+name)
		} else {
			for i, r := range ver.Listing {
				ids, what = append(ids, r.ID), append(what, fmt.Sprintf("listing chunk %d of version %s", i, name))
			}
		}
		js, err := cat.Journal(ver.Computer, ver.Config, ver.Seq)
		if err != nil {
			return nil, err
		}
		if len(js) > 0 {
			j := js[len(js)-1]
			for i, r := range j.Listing {
				ids, what = append(ids, r.ID), append(what, fmt.Sprintf("listing chunk %d of journal record %s.%d", i, name, j.N))
			}
		}
		if len(ids) == 0 {
			continue
		}
		has, err := idx.Indexed(ver.Company, ids)
		if err != nil {
			return nil, fmt.Errorf("check index for %s: %w", name, err)
		}
		for i, h := range has {
			if !h {
				out = append(out, missingEntry{company: ver.Company, what: what[i], id: ids[i]})
			}
		}
	}
	return out, nil
}

// checkIndex refuses an index older than the catalog. If entries are
// missing and rebuild is not nil, it rebuilds the index from the packs and
// checks again; what is still missing stops the vault with a message that
// names it and says what to do.
//
// A pair member recorded behind lacks, by that record, what the other
// member committed without it; the leader's catch-up copies it. Such a
// member starts: its raft log may have brought it those versions before
// this check (the leader records a member behind before it acknowledges
// an upload it did not copy there), and refusing would keep it from ever
// catching up.
func (v *Vault) checkIndex(rebuild func() error) error {
	missing, err := v.missingUnlessBehind()
	if err != nil {
		return fmt.Errorf("check the index against the catalog: %w", err)
	}
	if len(missing) > 0 && rebuild != nil {
		v.log.Warn("the index lacks entries the catalog says are committed: rebuilding it from the packs",
			zap.Int("missing", len(missing)), zap.Stringer("first", missing[0]))
		if err := rebuild(); err != nil {
			return fmt.Errorf("rebuild the index: %w", err)
		}
		if missing, err = v.missingUnlessBehind(); err != nil {
			return fmt.Errorf("check the index against the catalog: %w", err)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	var names []string
	for i, m := range missing {
		if i == 5 {
			names = append(names, fmt.Sprintf("and %d more", len(missing)-5))
			break
		}
		names = append(names, m.String())
	}
	if rebuild != nil {
		return fmt.Errorf("%w: rebuilt from the packs, it still lacks %s, so the packs that held them are lost or damaged. "+
			"The vault does not start rather than show versions it cannot restore: restore DATA/packs from a backup, or run "+
			"`vaultctl rebuild-catalog -fresh` (the vault stopped) to make the catalog agree with the packs that are left",
			ErrIndexBehind, strings.Join(names, "; "))
	}
	return fmt.Errorf("%w: it lacks %s. The vault does not start rather than show versions it cannot restore: "+
		"restore DATA/index.db from the same backup as DATA/catalog.db, or run `vaultctl rebuild-index` (the vault "+
		"stopped) to rebuild it from the packs; if the packs holding them are lost, run `vaultctl rebuild-catalog -fresh` "+
		"to make the catalog agree with the packs", ErrIndexBehind, strings.Join(names, "; "))
}

// missingUnlessBehind is missingFromIndex, or nothing on a pair member
// recorded behind (checkIndex). The record is read after the index: one
// a catch-up cleared in between had copied what was missing first.
func (v *Vault) missingUnlessBehind() ([]missingEntry, error) {
	missing, err := missingFromIndex(v.Catalog, v.Store)
	if err != nil || len(missing) == 0 || v.pair == nil {
		return missing, err
	}
	b, behind, err := pair.BehindRecord(v.Catalog, v.pair.node.ID())
	if err != nil || !behind {
		return missing, err
	}
	v.log.Warn("the index lacks entries the catalog says are committed, and this pair member is recorded behind: "+
		"the leader's catch-up copies them", zap.Int("missing", len(missing)), zap.Stringer("first", missing[0]),
		zap.Time("behind_since", b.Since), zap.String("reason", b.Reason))
	return nil, nil
}
