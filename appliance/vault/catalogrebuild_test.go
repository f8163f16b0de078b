package vault

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/store"
	"vaultnode/internal/clock"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// commitVersion stores a listing chunk and a manifest entry and records the
// version, as the commit handler does.
func commitVersion(t *testing.T, v *Vault, computer, config string, seq uint64, now time.Time) catalog.Version {
	t.Helper()
	k, err := v.companyKeys("acme")
	if err != nil {
		t.Fatal(err)
	}
	ref := putListing(t, v, k, []byte(strings.Repeat(config, int(seq)+10)))
	m := wire.Manifest{Magic: wire.ManifestMagic, Company: "acme", Computer: computer, Config: config, Seq: seq,
		Started: now.Add(-time.Minute).UTC(), Finished: now.UTC(), Listing: []tree.ChunkRef{ref}, Totals: wire.Totals{Files: int64(seq)}}
	mb, err := tree.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	eh := pack.EntryHeader{Kind: pack.KindManifest, ID: keys.NewHasher(k.set.ChunkID).Sum(mb), PlainLen: uint32(len(mb))}
	if err := v.Store.Put("acme", []store.Entry{{Header: eh, Data: pack.AppendEntry(nil, k.aead, &eh, mb)}}); err != nil {
		t.Fatal(err)
	}
	if err := v.Catalog.AddVersion(m, eh.ID); err != nil {
		t.Fatal(err)
	}
	return catalog.Version{Manifest: m, ManifestID: eh.ID}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// openWithComputer opens a vault in dir (real clock) with company acme and
// computer pc-1 enrolled in it.
func openWithComputer(t *testing.T, dir string) *Vault {
	t.Helper()
	v, err := Open(Options{Dir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	secret := []byte("token")
	v.Catalog.AddToken(secret, catalog.Token{Company: "acme", Expires: time.Now().Add(time.Hour)})
	if err := v.Catalog.EnrollComputer(secret, time.Now(), catalog.Computer{ID: "pc-1", Company: "acme"}); err != nil {
		t.Fatal(err)
	}
	return v
}

// versionsOf lists the version records of a computer, in order.
func versionsOf(t *testing.T, v *Vault, computer string) []catalog.Version {
	t.Helper()
	vs, err := v.Catalog.VersionRecords(computer, "")
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

func sameVersions(t *testing.T, what string, got, want []catalog.Version) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d versions, want %d", what, len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Config != w.Config || g.Seq != w.Seq || g.ManifestID != w.ManifestID || !g.Finished.Equal(w.Finished) ||
			len(g.Listing) != 1 || g.Listing[0] != w.Listing[0] || g.Totals != w.Totals {
			t.Fatalf("%s: version %d is %+v, want %+v", what, i, g, w)
		}
	}
}

// TestCatalogLoss: with catalog.db lost the vault refuses to start;
// rebuild-catalog brings back the company, the computers, every version
// (with its manifest ID) and the revocation; with catalog.db rolled back it
// completes the old catalog and keeps what only the catalog knew.
func TestCatalogLoss(t *testing.T) {
	start := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	clk := clock.NewFake(start)
	dir := t.TempDir()
	v, err := Open(Options{Dir: dir, Listen: "127.0.0.1:0", Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{"pc-1", "pc-2"} {
		secret := []byte("token-" + id)
		if err := v.Catalog.AddToken(secret, catalog.Token{Company: "acme", Expires: start.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if err := v.Catalog.EnrollComputer(secret, start, catalog.Computer{ID: id, Company: "acme", Name: []string{"web1", "db1"}[i], Enrolled: start}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := wire.Config{Name: "home", Kind: wire.KindFiles, Paths: []string{"/home"}}
	if _, err := v.Catalog.PutConfig("pc-1", cfg, start); err != nil {
		t.Fatal(err)
	}
	var want []catalog.Version
	want = append(want, commitVersion(t, v, "pc-1", "home", 1, start.Add(time.Hour)))
	commitVersion(t, v, "pc-2", "etc", 1, start.Add(time.Hour))
	v.Close()
	rolled := filepath.Join(t.TempDir(), "catalog.db.v1")
	copyFile(t, filepath.Join(dir, catalog.File), rolled)

	if v, err = Open(Options{Dir: dir, Listen: "127.0.0.1:0", Clock: clk}); err != nil {
		t.Fatal(err)
	}
	want = append(want, commitVersion(t, v, "pc-1", "home", 2, start.Add(2*time.Hour)))
	want = append(want, commitVersion(t, v, "pc-1", "home", 3, start.Add(3*time.Hour)))
	if err := v.Catalog.Revoke("pc-2", start.Add(4*time.Hour)); err != nil {
		t.Fatal(err)
	}
	v.Close()

	// Lost: the vault refuses to start on an empty catalog.
	if err := os.Remove(filepath.Join(dir, catalog.File)); err != nil {
		t.Fatal(err)
	}
	_, err = Open(Options{Dir: dir, Listen: "127.0.0.1:0", Clock: clk})
	if !errors.Is(err, ErrCatalogMissing) || !strings.Contains(err.Error(), "rebuild-catalog") {
		t.Fatalf("open without catalog.db: %v", err)
	}
	res, err := RebuildCatalog(context.Background(), dir, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Companies != 1 || res.Computers != 2 || res.Versions != 4 || len(res.Problems) > 0 {
		t.Fatalf("rebuild from packs alone: %+v", res)
	}
	if len(res.NoSpec) != 2 {
		t.Fatalf("configurations without a spec: %v", res.NoSpec)
	}
	if v, err = Open(Options{Dir: dir, Listen: "127.0.0.1:0", Clock: clk}); err != nil {
		t.Fatal(err)
	}
	sameVersions(t, "rebuilt", versionsOf(t, v, "pc-1"), want)
	if cp, err := v.Catalog.Computer("pc-2"); err != nil || cp.Revoked == nil || cp.Company != "acme" {
		t.Fatalf("a rebuilt catalog un-revoked pc-2: %+v %v", cp, err)
	}
	if _, err := v.companyKeys("acme"); err != nil {
		t.Fatalf("company secret after rebuild: %v", err)
	}
	v.Close()

	// Rolled back: the old catalog keeps its names and configuration; the
	// rebuild adds versions 2 and 3 and the revocation comes back at open.
	copyFile(t, rolled, filepath.Join(dir, catalog.File))
	if res, err = RebuildCatalog(context.Background(), dir, false, nil); err != nil {
		t.Fatal(err)
	}
	if res.Versions != 2 || res.Kept != 2 || res.Computers != 0 || len(res.NoSpec) != 1 || res.NoSpec[0] != "pc-2/etc" {
		t.Fatalf("rebuild of a rolled-back catalog: %+v", res)
	}
	if v, err = Open(Options{Dir: dir, Listen: "127.0.0.1:0", Clock: clk}); err != nil {
		t.Fatal(err)
	}
	sameVersions(t, "completed", versionsOf(t, v, "pc-1"), want)
	if cp, _ := v.Catalog.Computer("pc-1"); cp.Name != "web1" {
		t.Fatalf("the rolled-back catalog lost the computer's name: %+v", cp)
	}
	if _, err := v.Catalog.Config("pc-1", "home"); err != nil {
		t.Fatalf("the rolled-back catalog lost its configuration: %v", err)
	}
	if cp, _ := v.Catalog.Computer("pc-2"); cp.Revoked == nil {
		t.Fatal("the rolled-back catalog un-revoked pc-2")
	}
	v.Close()

	// Damaged: the vault says what to do; -fresh moves the file aside and
	// rebuilds from the packs alone.
	if err := os.WriteFile(filepath.Join(dir, catalog.File), []byte(strings.Repeat("not a bbolt file ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err = Open(Options{Dir: dir, Listen: "127.0.0.1:0", Clock: clk}); err == nil || !strings.Contains(err.Error(), "rebuild-catalog -fresh") {
		t.Fatalf("open on a damaged catalog: %v", err)
	}
	if res, err = RebuildCatalog(context.Background(), dir, true, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(res.OldCatalog); err != nil || res.Versions != 4 || res.Computers != 2 {
		t.Fatalf("fresh rebuild: %+v (old catalog: %v)", res, err)
	}
	if v, err = Open(Options{Dir: dir, Listen: "127.0.0.1:0", Clock: clk}); err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	sameVersions(t, "fresh", versionsOf(t, v, "pc-1"), want)
}

// TestIndexBehindCatalog: a catalog that records a version whose manifest
// the store does not hold stops the vault with a message naming it.
func TestIndexBehindCatalog(t *testing.T) {
	dir := t.TempDir()
	v := openWithComputer(t, dir)
	commitVersion(t, v, "pc-1", "home", 1, time.Now())
	// Version 2 is in the catalog only, as after restoring a catalog.db
	// newer than index.db and the packs.
	if err := v.Catalog.AddVersion(wire.Manifest{Company: "acme", Computer: "pc-1", Config: "home", Seq: 2}, [32]byte{0xab}); err != nil {
		t.Fatal(err)
	}
	v.Close()
	_, err := Open(Options{Dir: dir, Listen: "127.0.0.1:0"})
	if !errors.Is(err, ErrIndexBehind) || !strings.Contains(err.Error(), "manifest of version pc-1/home@2") ||
		!strings.Contains(err.Error(), "rebuilt from the packs") || !strings.Contains(err.Error(), "rebuild-catalog -fresh") {
		t.Fatalf("open on an index older than the catalog: %v", err)
	}
}

// TestIndexLacksManifest: an index that knows a pack whole but lost the
// record of a version's manifest (an index from a damaged disk) makes the
// vault rebuild the index from the packs at open; the version is then
// indexed and the vault starts.
func TestIndexLacksManifest(t *testing.T) {
	dir := t.TempDir()
	v := openWithComputer(t, dir)
	ver := commitVersion(t, v, "pc-1", "home", 1, time.Now())
	v.Close()

	// docs/format.md, "Index": bucket chunks/<company> (nested), key = chunk id.
	db, err := bbolt.Open(filepath.Join(dir, "index.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("chunks"))
		if b != nil {
			b = b.Bucket([]byte("acme"))
		}
		if b == nil || b.Get(ver.ManifestID[:]) == nil {
			return errors.New("no index record of the manifest to remove")
		}
		return b.Delete(ver.ManifestID[:])
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	if v, err = Open(Options{Dir: dir, Listen: "127.0.0.1:0"}); err != nil {
		t.Fatalf("open on an index that lost a manifest: %v", err)
	}
	defer v.Close()
	if has, err := v.Store.Indexed("acme", [][32]byte{ver.ManifestID}); err != nil || !has[0] {
		t.Fatalf("manifest not indexed after the rebuild: %v %v", has, err)
	}
}
