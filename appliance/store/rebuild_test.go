package store_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"go.etcd.io/bbolt"

	"vaultnode/appliance/store"
	"vaultnode/internal/pack"
)

// stored is what a test put, to check that it all reads back.
type stored struct {
	company string
	plain   []byte
	e       store.Entry
}

// fill puts n chunks for each company, a few per Put, over several packs
// (reopening the store between rounds starts new packs).
func (f *fixture) fill(companies []string, rounds, perRound int) []stored {
	f.t.Helper()
	var out []stored
	for r := 0; r < rounds; r++ {
		for _, co := range companies {
			var batch []store.Entry
			for i := 0; i < perRound; i++ {
				p, e := f.chunk(500 + f.r.IntN(5000))
				out = append(out, stored{co, p, e})
				batch = append(batch, e)
			}
			if err := f.s.Put(co, batch); err != nil {
				f.t.Fatal(err)
			}
		}
		f.reopen()
	}
	return out
}

func (f *fixture) mustAll(all []stored) {
	f.t.Helper()
	for _, st := range all {
		f.mustGet(st.company, st.e, st.plain)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func packCount(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(filepath.Join(dir, "packs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && filepath.Ext(p) == ".pack" {
			n++
		}
		return err
	})
	return n
}

// TestIndexLost: with index.db gone, Open rebuilds it from the packs and
// nothing is lost.
func TestIndexLost(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, dir)
	all := f.fill([]string{"acme", "globex"}, 3, 5)
	packs := packCount(t, dir)
	f.s.Close()
	f.s = nil
	if err := os.Remove(filepath.Join(dir, "index.db")); err != nil {
		t.Fatal(err)
	}
	f.open()
	if got := packCount(t, dir); got != packs {
		t.Fatalf("%d packs after the rebuild, want %d", got, packs)
	}
	f.mustAll(all)
	ps, err := f.s.Packs()
	if err != nil || len(ps) != packs {
		t.Fatalf("index knows %d packs (%v), want %d", len(ps), err, packs)
	}
	// New puts after a rebuild never overwrite a pack.
	more := f.fill([]string{"acme"}, 1, 3)
	f.mustAll(append(all, more...))
}

// TestIndexRolledBack: an index copied mid-way and put back later (a
// restore from an old backup, a lost write cache) knows fewer packs and
// shorter committed lengths; Open indexes the rest.
func TestIndexRolledBack(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, dir)
	all := f.fill([]string{"acme", "globex"}, 2, 4)
	// Fill the open packs a little further before the copy, so that the
	// later puts extend packs the old index knows shorter.
	f.s.Close()
	f.s = nil
	copyFile(t, filepath.Join(dir, "index.db"), filepath.Join(dir, "old.db"))
	f.open()
	all = append(all, f.fill([]string{"acme", "globex", "initech"}, 2, 4)...)
	for i := 0; i < 3; i++ { // several puts into one pack: tails past the old committed lengths
		p, e := f.chunk(2000)
		if err := f.s.Put("acme", []store.Entry{e}); err != nil {
			t.Fatal(err)
		}
		all = append(all, stored{"acme", p, e})
	}
	f.s.Close()
	f.s = nil
	if err := os.Rename(filepath.Join(dir, "old.db"), filepath.Join(dir, "index.db")); err != nil {
		t.Fatal(err)
	}
	f.open()
	f.mustAll(all)
}

// TestTornTail: only an entry cut short or with a broken header, with
// nothing valid behind it, is cut; damaged bytes before good entries and a
// complete entry whose seal fails are left in place.
func TestTornTail(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, dir)
	all := f.fill([]string{"acme"}, 1, 3)
	ps, _ := f.s.Packs()
	p := ps[0]
	f.s.Close()
	f.s = nil

	_, badSeal := f.chunk(3000)
	badSeal.Data = bytes.Clone(badSeal.Data)
	badSeal.Data[pack.EntryHeaderSize+100] ^= 1
	brokenHeader := bytes.Clone(f.entryOf(2000).Data)
	brokenHeader[10] ^= 1
	goodPlain, good := f.chunk(2500)
	_, torn := f.chunk(2500)
	var tail []byte
	tail = append(tail, badSeal.Data...)
	tail = append(tail, brokenHeader...)
	tail = append(tail, good.Data...)
	cutAt := p.Committed + int64(len(tail))
	tail = append(tail, torn.Data[:pack.EntryHeaderSize+10]...)
	appendFile(t, p.Path, tail)

	f.open()
	if got := fileSize(t, p.Path); got != cutAt {
		t.Fatalf("pack cut to %d bytes, want %d: only the torn entry goes", got, cutAt)
	}
	f.mustAll(all)
	f.mustGet("acme", good, goodPlain)
	has, _ := f.s.Has("acme", [][32]byte{badSeal.Header.ID, torn.Header.ID})
	if has[0] || has[1] {
		t.Fatalf("Has(bad seal, torn) = %v: neither may be indexed", has)
	}

	// A torn header: the same rule.
	f.s.Close()
	f.s = nil
	junk := bytes.Clone(f.entryOf(100).Data[:pack.EntryHeaderSize])
	junk[0] = 'X'
	appendFile(t, p.Path, junk)
	f.open()
	if got := fileSize(t, p.Path); got != cutAt {
		t.Fatalf("pack with a broken last header cut to %d bytes, want %d", got, cutAt)
	}
}

func (f *fixture) entryOf(n int) store.Entry {
	_, e := f.chunk(n)
	return e
}

func appendFile(t *testing.T, path string, b []byte) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.Write(b); err != nil {
		t.Fatal(err)
	}
}

// TestQuarantine: a quarantined chunk reads as absent to Has, as damaged
// to Get, and the next good copy replaces it and counts as healed.
func TestQuarantine(t *testing.T) {
	f := newFixture(t, t.TempDir())
	all := f.fill([]string{"acme"}, 1, 3)
	bad := all[1]
	id := bad.e.Header.ID
	before, _ := f.s.Lookup("acme", id)
	added, err := f.s.Quarantine("acme", id, "content does not hash to its id")
	if err != nil || !added {
		t.Fatalf("Quarantine = %v, %v", added, err)
	}
	if again, _ := f.s.Quarantine("acme", id, "again"); again {
		t.Fatal("a chunk is quarantined twice")
	}
	if n, _ := f.s.Quarantine("acme", [32]byte{1}, "unknown"); n {
		t.Fatal("a chunk the index does not hold is quarantined")
	}
	if has, _ := f.s.Has("acme", [][32]byte{id, all[0].e.Header.ID}); has[0] || !has[1] {
		t.Fatalf("Has(quarantined, good) = %v, want [false true]", has)
	}
	if _, _, err := f.s.Get("acme", f.aead, id, nil); !errors.Is(err, store.ErrQuarantined) || !errors.Is(err, store.ErrDamaged) {
		t.Fatalf("Get of a quarantined chunk: %v, want ErrQuarantined (an ErrDamaged)", err)
	}
	q, _ := f.s.Quarantined("acme")
	if len(q) != 1 || q[id].Pack != before.Pack || q[id].Offset != before.Offset {
		t.Fatalf("Quarantined = %+v", q)
	}
	// It survives a restart.
	f.reopen()
	if has, _ := f.s.Has("acme", [][32]byte{id}); has[0] {
		t.Fatal("quarantine lost on restart")
	}
	// A good copy heals it.
	if err := f.s.Put("acme", []store.Entry{f.entry(bad.plain)}); err != nil {
		t.Fatal(err)
	}
	f.mustAll(all)
	after, _ := f.s.Lookup("acme", id)
	if after == before {
		t.Fatal("the healed chunk still points at the damaged entry")
	}
	healed, err := f.s.TakeHealed()
	if err != nil || len(healed) != 1 || healed[0].ID != id || healed[0].Company != "acme" {
		t.Fatalf("TakeHealed = %+v, %v", healed, err)
	}
	if healed, _ := f.s.TakeHealed(); len(healed) != 0 {
		t.Fatalf("healed chunks reported twice: %+v", healed)
	}
	if q, _ := f.s.Quarantined("acme"); len(q) != 0 {
		t.Fatalf("still quarantined: %+v", q)
	}
}

// TestMalformedIndex: malformed keys and values in every bucket: the store
// opens, names each, and refuses or skips them instead of panicking.
func TestMalformedIndex(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, dir)
	all := f.fill([]string{"acme"}, 1, 4)
	victim := all[0].e.Header.ID
	f.s.Close()
	f.s = nil
	db, err := bbolt.Open(filepath.Join(dir, "index.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		packs := tx.Bucket([]byte("packs"))
		chunks := tx.Bucket([]byte("chunks")).Bucket([]byte("acme"))
		for _, kv := range []struct {
			b    *bbolt.Bucket
			k, v []byte
		}{
			{packs, []byte{1, 2}, []byte("short key")},
			{packs, []byte{0, 0, 0, 5}, []byte{1, 2, 3}}, // a record too short, of a pack with no file
			{tx.Bucket([]byte("meta")), []byte("next-pack"), []byte{7}},
			{chunks, []byte("short"), bytes.Repeat([]byte{0}, 18)},
			{chunks, victim[:], []byte{1, 2, 3}},
			{tx.Bucket([]byte("chunks")), []byte("notabucket"), []byte("x")},
		} {
			if err := kv.b.Put(kv.k, kv.v); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	f.open()
	bad, err := f.s.CheckIndex(100)
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) != 6 {
		t.Fatalf("CheckIndex found %d bad records, want 6: %v", len(bad), bad)
	}
	for _, b := range bad {
		if b.Bucket == "" || b.Err == "" {
			t.Fatalf("bad record without its location: %+v", b)
		}
	}
	if _, _, err := f.s.Get("acme", f.aead, victim, nil); !errors.Is(err, store.ErrDamaged) {
		t.Fatalf("Get through a malformed record: %v, want ErrDamaged", err)
	}
	if has, _ := f.s.Has("acme", [][32]byte{victim}); has[0] {
		t.Fatal("Has reports a chunk whose record is malformed")
	}
	if _, err := f.s.Packs(); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := f.s.ForEachChunk("acme", func([32]byte, store.Location) error { n++; return nil }); err != nil || n != len(all)-1 {
		t.Fatalf("ForEachChunk saw %d good records (%v), want %d", n, err, len(all)-1)
	}
	// The chunk sent again replaces the malformed record.
	if err := f.s.Put("acme", []store.Entry{f.entry(all[0].plain)}); err != nil {
		t.Fatal(err)
	}
	f.mustAll(all)
}

// TestRebuild: Rebuild on an open store gives back every chunk, and puts
// go on afterwards.
func TestRebuild(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, dir)
	all := f.fill([]string{"acme", "globex"}, 2, 3)
	p, e := f.chunk(1000) // a pack still open for appends
	if err := f.s.Put("acme", []store.Entry{e}); err != nil {
		t.Fatal(err)
	}
	all = append(all, stored{"acme", p, e})
	var last store.RebuildProgress
	pr, err := f.s.Rebuild(context.Background(), func(p store.RebuildProgress) { last = p })
	if err != nil {
		t.Fatal(err)
	}
	if pr != last || pr.Done != packCount(t, dir) || pr.Entries != int64(len(all)) {
		t.Fatalf("Rebuild = %+v (last progress %+v), want %d packs, %d entries", pr, last, packCount(t, dir), len(all))
	}
	f.mustAll(all)
	all = append(all, f.fill([]string{"acme"}, 1, 2)...)
	f.mustAll(all)
}

// TestRebuildInterrupted: a rebuild stopped after its first pack (as a
// crash would stop it) leaves an index the next Open completes.
func TestRebuildInterrupted(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, dir)
	all := f.fill([]string{"acme", "globex"}, 3, 3)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := f.s.Rebuild(ctx, func(p store.RebuildProgress) { cancel() })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Rebuild cancelled after one pack: %v", err)
	}
	if has, _ := f.s.Has(all[len(all)-1].company, [][32]byte{all[len(all)-1].e.Header.ID}); has[0] {
		t.Fatal("the last pack was indexed although the rebuild stopped after the first: the test proves nothing")
	}
	f.reopen()
	f.mustAll(all)
}

// TestHugePackFile: a pack file past the 4 GiB that index offsets can
// name (sparse: no disk used) is left alone, not indexed with wrapped
// offsets, and the rest opens.
func TestHugePackFile(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, dir)
	all := f.fill([]string{"acme"}, 1, 2)
	f.s.Close()
	f.s = nil
	p := filepath.Join(dir, "packs", "000", "00000009.pack")
	hdr, _ := pack.FileHeader{Company: "acme", Number: 9}.Marshal()
	if err := os.WriteFile(p, hdr, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 1<<32+100); err != nil {
		t.Fatal(err)
	}
	f.open()
	f.mustAll(all)
	if got := fileSize(t, p); got != 1<<32+100 {
		t.Fatalf("the huge pack was changed to %d bytes", got)
	}
}
