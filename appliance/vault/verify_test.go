package vault

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/store"
	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// verifyFixture is a vault with one version of three files and one journal
// record on top, stored through the real store.
type verifyFixture struct {
	t     *testing.T
	dir   string
	v     *Vault
	k     *companyKeys
	files map[string][]byte // path -> content, one chunk each
	ids   map[string][32]byte
	jfile [32]byte // the chunk only the journal record references
}

func newVerifyFixture(t *testing.T) *verifyFixture {
	f := &verifyFixture{t: t, dir: t.TempDir(), files: map[string][]byte{}, ids: map[string][32]byte{}}
	f.open()
	t.Cleanup(func() { f.v.Close() })
	v := f.v
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	secret := []byte("0123456789abcdef01")
	if err := v.Catalog.AddToken(secret, catalog.Token{Company: "acme", Expires: start.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	cp, err := v.Catalog.Enroll(secret, start, func(company string) (catalog.Computer, error) {
		return catalog.Computer{ID: "pc-1", Company: company, Name: "web1", Enrolled: start}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	f.k, _ = v.companyKeys("acme")
	var nodes []*tree.Node
	for i, name := range []string{"a", "b", "c"} {
		p := bytes.Repeat([]byte{byte('x' + i)}, 3000+i*1000)
		id := f.put(pack.KindData, p)
		f.files[name], f.ids[name] = p, id
		nodes = append(nodes, &tree.Node{Path: []byte(name), Type: tree.TypeFile, Size: int64(len(p)), Chunks: []tree.ChunkRef{{ID: id, Len: uint32(len(p))}}})
	}
	listing := f.listing(nodes...)
	m := wire.Manifest{Magic: wire.ManifestMagic, Company: "acme", Computer: cp.ID, Config: "home", Seq: 1,
		Started: start, Finished: start, Listing: listing}
	mb, _ := tree.Marshal(&m)
	if err := v.Catalog.AddVersion(m, f.put(pack.KindManifest, mb)); err != nil {
		t.Fatal(err)
	}
	jp := []byte("a journal-only file")
	f.jfile = f.put(pack.KindData, jp)
	jl := f.listing(&tree.Node{Path: []byte("d"), Type: tree.TypeFile, Size: int64(len(jp)), Chunks: []tree.ChunkRef{{ID: f.jfile, Len: uint32(len(jp))}}})
	if _, err := v.Catalog.AddJournal(cp.ID, "home", wire.Journal{Base: 1, Time: start, Listing: jl}); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *verifyFixture) open() {
	v, err := Open(Options{Dir: f.dir, Listen: "127.0.0.1:0"})
	if err != nil {
		f.t.Fatal(err)
	}
	f.v = v
	if f.k != nil {
		f.k, _ = v.companyKeys("acme")
	}
}

func (f *verifyFixture) reopen() {
	f.t.Helper()
	f.v.Close()
	f.open()
}

func (f *verifyFixture) put(kind pack.Kind, p []byte) [32]byte {
	f.t.Helper()
	h := pack.EntryHeader{Kind: kind, ID: keys.NewHasher(f.k.set.ChunkID).Sum(p), PlainLen: uint32(len(p))}
	if err := f.v.Store.Put("acme", []store.Entry{{Header: h, Data: pack.AppendEntry(nil, f.k.aead, &h, p)}}); err != nil {
		f.t.Fatal(err)
	}
	return h.ID
}

func (f *verifyFixture) listing(nodes ...*tree.Node) []tree.ChunkRef {
	var buf bytes.Buffer
	b, _ := tree.Marshal(tree.ListingMagic)
	buf.Write(b)
	for _, n := range nodes {
		b, _ := tree.Marshal(n)
		buf.Write(b)
	}
	return []tree.ChunkRef{{ID: f.put(pack.KindListing, buf.Bytes()), Len: uint32(buf.Len())}}
}

func (f *verifyFixture) verify() *Report {
	f.t.Helper()
	rep, err := f.v.Verify(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	return rep
}

func (f *verifyFixture) mustClean(rep *Report) {
	f.t.Helper()
	if !rep.OK() {
		f.t.Fatalf("verify found %d problems, first: %s", len(rep.Problems), rep.Problems[0])
	}
	if rep.Versions != 1 || rep.Journal != 1 || rep.Files != 4 || rep.Records != 7 {
		f.t.Fatalf("verify checked %d versions, %d journal records, %d files, %d index records; want 1, 1, 4, 7", rep.Versions, rep.Journal, rep.Files, rep.Records)
	}
}

// problemsAbout returns the problems that name a chunk.
func problemsAbout(rep *Report, id [32]byte) []Problem {
	var out []Problem
	for _, p := range rep.Problems {
		if p.Chunk == hex.EncodeToString(id[:]) {
			out = append(out, p)
		}
	}
	return out
}

// TestVerifyHealsFlippedByte: one flipped byte in a chunk: verify names it
// (the entry and the file of the version that references it), quarantines
// it, lack reports it missing, a good copy heals it, and verify is clean
// and reports the heal.
func TestVerifyHealsFlippedByte(t *testing.T) {
	f := newVerifyFixture(t)
	f.mustClean(f.verify())
	id := f.ids["b"]
	loc, _ := f.v.Store.Lookup("acme", id)
	flipByte(t, f.v.Store.PackPath(loc.Pack), int64(loc.Offset)+pack.EntryHeaderSize+40)

	rep := f.verify()
	ps := problemsAbout(rep, id)
	var inPack, inVersion bool
	for _, p := range ps {
		inPack = inPack || p.Pack != "" && strings.Contains(p.What, "quarantined")
		inVersion = inVersion || p.Version == "home@1" && p.Path == "b" && strings.Contains(p.What, "damaged")
	}
	if !inPack || !inVersion || len(rep.Problems) != len(ps) {
		t.Fatalf("verify after a flipped byte: %v; want the entry and file b of home@1 named, nothing else", rep.Problems)
	}
	if len(rep.Quarantined) != 1 || !rep.Quarantined[0].New || rep.Quarantined[0].Chunk != hex.EncodeToString(id[:]) {
		t.Fatalf("quarantined: %+v", rep.Quarantined)
	}
	if has, _ := f.v.Store.Has("acme", [][32]byte{id}); has[0] {
		t.Fatal("a quarantined chunk is reported present: lack would never ask for it again")
	}
	if _, _, err := f.v.Store.Get("acme", f.k.aead, id, nil); !errors.Is(err, store.ErrDamaged) {
		t.Fatalf("Get of the quarantined chunk: %v, want damaged", err)
	}
	// Verify again: still damaged, no longer new.
	rep = f.verify()
	if rep.OK() || len(rep.Quarantined) != 1 || rep.Quarantined[0].New {
		t.Fatalf("second verify: %d problems, quarantined %+v", len(rep.Problems), rep.Quarantined)
	}
	// An agent sends the chunk again.
	f.put(pack.KindData, f.files["b"])
	rep = f.verify()
	f.mustClean(rep)
	if len(rep.Healed) != 1 || rep.Healed[0].Chunk != hex.EncodeToString(id[:]) || len(rep.Quarantined) != 0 {
		t.Fatalf("after the heal: healed %+v, quarantined %+v", rep.Healed, rep.Quarantined)
	}
	if rep.Dead != 1 {
		t.Fatalf("dead entries = %d, want 1 (the damaged copy)", rep.Dead)
	}
	got, _, err := f.v.Store.Get("acme", f.k.aead, id, nil)
	if err != nil || !bytes.Equal(got, f.files["b"]) {
		t.Fatalf("Get after the heal: %v", err)
	}
	if rep := f.verify(); len(rep.Healed) != 0 {
		t.Fatalf("the heal is reported twice: %+v", rep.Healed)
	}
}

// TestVerifySwappedLocations: two index records swapped both point at
// good entries, of the other chunk: verify reports both and points each at
// its own entry; then everything reads and verify is clean.
func TestVerifySwappedLocations(t *testing.T) {
	f := newVerifyFixture(t)
	a, c := f.ids["a"], f.ids["c"]
	f.v.Close()
	db, err := bbolt.Open(filepath.Join(f.dir, "index.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("chunks")).Bucket([]byte("acme"))
		va, vc := bytes.Clone(b.Get(a[:])), bytes.Clone(b.Get(c[:]))
		return errors.Join(b.Put(a[:], vc), b.Put(c[:], va))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	f.open()
	if _, _, err := f.v.Store.Get("acme", f.k.aead, a, nil); err == nil {
		t.Fatal("Get through a swapped record succeeded")
	}
	rep := f.verify()
	if !rep.OK() || len(rep.Quarantined) != 0 {
		t.Fatalf("verify of swapped records: problems %v, quarantined %v; want both repaired", rep.Problems, rep.Quarantined)
	}
	for _, id := range [][32]byte{a, c} {
		found := false
		for _, p := range rep.Repaired {
			found = found || p.Chunk == hex.EncodeToString(id[:]) && strings.Contains(p.What, "another chunk") && strings.Contains(p.What, "now points at its good copy")
		}
		if !found {
			t.Fatalf("verify does not report chunk %x pointing at another chunk's entry, repaired: %v", id[:8], rep.Repaired)
		}
	}
	for name, id := range map[string][32]byte{"a": a, "c": c} {
		got, _, err := f.v.Store.Get("acme", f.k.aead, id, nil)
		if err != nil || !bytes.Equal(got, f.files[name]) {
			t.Fatalf("Get %s after the repair: %v", name, err)
		}
	}
	rep = f.verify()
	f.mustClean(rep)
	if len(rep.Repaired) != 0 {
		t.Fatalf("repairs reported again: %v", rep.Repaired)
	}
}

// TestVerifyPrefersGoodCopy: a damaged entry whose chunk also has a good
// entry (indexed twice after a recovery, or sent again) is repaired by
// pointing at the good one, not quarantined.
func TestVerifyPrefersGoodCopy(t *testing.T) {
	f := newVerifyFixture(t)
	id := f.ids["a"]
	loc, _ := f.v.Store.Lookup("acme", id)
	// A second copy, in a pack the index does not know: recovery indexes
	// it, keeping the first record.
	f.v.Close()
	hdr, _ := pack.FileHeader{Company: "acme", Number: 500}.Marshal()
	h := pack.EntryHeader{Kind: pack.KindData, ID: id, PlainLen: uint32(len(f.files["a"]))}
	p := filepath.Join(f.dir, "packs", "001", "000001f4.pack")
	os.MkdirAll(filepath.Dir(p), 0o700)
	if err := os.WriteFile(p, pack.AppendEntry(hdr, f.k.aead, &h, f.files["a"]), 0o600); err != nil {
		t.Fatal(err)
	}
	f.open()
	if l, _ := f.v.Store.Lookup("acme", id); l != loc {
		t.Fatalf("recovery moved the record of a chunk it already held: %+v, want %+v", l, loc)
	}
	flipByte(t, f.v.Store.PackPath(loc.Pack), int64(loc.Offset)+pack.EntryHeaderSize+10)
	rep := f.verify()
	if !rep.OK() || len(rep.Repaired) != 1 || len(rep.Quarantined) != 0 {
		t.Fatalf("verify: problems %v, repaired %v, quarantined %v; want one repair", rep.Problems, rep.Repaired, rep.Quarantined)
	}
	got, _, err := f.v.Store.Get("acme", f.k.aead, id, nil)
	if err != nil || !bytes.Equal(got, f.files["a"]) {
		t.Fatalf("Get after the repair: %v", err)
	}
}

// TestVerifyJournal: a chunk only a journal record references is checked.
func TestVerifyJournal(t *testing.T) {
	f := newVerifyFixture(t)
	loc, _ := f.v.Store.Lookup("acme", f.jfile)
	flipByte(t, f.v.Store.PackPath(loc.Pack), int64(loc.Offset)+pack.EntryHeaderSize+30)
	rep := f.verify()
	found := false
	for _, p := range problemsAbout(rep, f.jfile) {
		found = found || p.Version == "home@1+1" && p.Path == "d"
	}
	if !found {
		t.Fatalf("verify does not name the journal record's file: %v", rep.Problems)
	}
}

// TestVerifyMalformedIndex: malformed records are named, not a panic.
func TestVerifyMalformedIndex(t *testing.T) {
	f := newVerifyFixture(t)
	f.v.Close()
	db, err := bbolt.Open(filepath.Join(f.dir, "index.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		return errors.Join(tx.Bucket([]byte("packs")).Put([]byte{9}, []byte{1}),
			tx.Bucket([]byte("chunks")).Bucket([]byte("acme")).Put([]byte("short"), []byte{1}))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	f.open()
	rep := f.verify()
	n := 0
	for _, p := range rep.Problems {
		if strings.HasPrefix(p.What, "malformed index record: index ") {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("verify named %d malformed records, want 2: %v", n, rep.Problems)
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	b := make([]byte, 1)
	if _, err := fh.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := fh.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestQuarantinedOpens: a version's manifest and listing chunk found
// damaged are quarantined; the vault still starts (the index knows them:
// it is not older than the catalog) and verify names the version.
func TestQuarantinedOpens(t *testing.T) {
	f := newVerifyFixture(t)
	vs, err := f.v.Catalog.VersionRecords("pc-1", "home")
	if err != nil || len(vs) != 1 {
		t.Fatalf("versions: %v, %v", vs, err)
	}
	lid, mid := vs[0].Listing[0].ID, [32]byte(vs[0].ManifestID)
	for _, id := range [][32]byte{lid, mid} {
		loc, _ := f.v.Store.Lookup("acme", id)
		flipByte(t, f.v.Store.PackPath(loc.Pack), int64(loc.Offset)+pack.EntryHeaderSize+20)
	}
	rep := f.verify()
	if len(rep.Quarantined) != 2 {
		t.Fatalf("quarantined %+v, want the manifest and the listing chunk", rep.Quarantined)
	}
	f.reopen()
	rep = f.verify()
	named := false
	for _, p := range rep.Problems {
		named = named || p.Version == "home@1" && strings.Contains(p.What, "listing unreadable")
	}
	if !named {
		t.Fatalf("verify after a restart does not name home@1's listing: %v", rep.Problems)
	}
}
