package catalog

import (
	"errors"
	"testing"
	"time"

	"vaultnode/internal/clock"
	"vaultnode/internal/wire"
)

// The tape catalog's rules: places only from the library's answer, files
// recorded in order on a writable cartridge of the pool, a relabel forgets
// what the cartridge held, and a version of a configuration on tape stays
// on disk until a tape copy exists.
func TestTapeCommands(t *testing.T) {
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	c, err := Open(t.TempDir(), Options{Clock: clock.NewFake(now)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	enrolled(t, c, now, "pc-1")
	for seq := uint64(1); seq <= 2; seq++ {
		if err := c.AddVersion(wire.Manifest{Company: "acme", Computer: "pc-1", Config: "home", Seq: seq, Finished: now}, [32]byte{byte(seq)}); err != nil {
			t.Fatal(err)
		}
	}
	must := func(kind Kind, p any) {
		t.Helper()
		if err := c.Tape(kind, p); err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
	}
	refused := func(kind Kind, p any) {
		t.Helper()
		if err := c.Tape(kind, p); !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: %v, want refused", kind, err)
		}
	}
	refused(KindPutTapePool, PutTapePoolCmd{Pool: TapePool{Name: "p", Allocation: "sometimes"}})
	refused(KindPutTapePool, PutTapePoolCmd{Pool: TapePool{Name: "p", Retention: "soon"}})
	refused(KindSetTapeCover, SetTapeCoverCmd{Cover: TapeCover{Company: "acme", Pool: "nope"}})
	must(KindPutTapePool, PutTapePoolCmd{Pool: TapePool{Name: "daily", Retention: "30d"}})
	must(KindSetTapeCover, SetTapeCoverCmd{Cover: TapeCover{Company: "acme", Pool: "daily"}})

	res, err := c.Prune(PruneCmd{Versions: []VersionKey{{Computer: "pc-1", Config: "home", Seq: 1}}})
	if err != nil || res.HeldForTape != 1 || res.Versions != 0 {
		t.Fatalf("prune before tape: %+v %v", res, err)
	}

	must(KindTapeReconcile, TapeReconcileCmd{Now: now, Seen: []CartLoc{{"TAPE01L5", WhereSlot, 1024}, {"CLN001L1", WhereSlot, 1030}}})
	if cr, _ := c.Cartridge("CLN001L1"); cr.State != CartCleaning {
		t.Fatalf("cleaning cartridge recorded as %s", cr.State)
	}
	refused(KindTapeLabel, TapeLabelCmd{Barcode: "CLN001L1", UUID: "u", Pool: "daily", Labelled: now})
	file := func(n int, seq uint64) TapeFileCmd {
		return TapeFileCmd{File: TapeFile{Barcode: "TAPE01L5", File: n, MediaSet: "set1", Written: now, Bytes: 10}, Pool: "daily", SetCreated: now,
			Chunks: []TapeChunk{{Company: "acme", ID: ID{byte(n)}}},
			Copies: []TapeCopy{{Company: "acme", Computer: "pc-1", Config: "home", Seq: seq, Files: []TapeFileRef{{"TAPE01L5", n}}}}}
	}
	refused(KindTapeFile, file(1, 1)) // blank: not labelled
	must(KindTapeLabel, TapeLabelCmd{Barcode: "TAPE01L5", UUID: "u1", Pool: "daily", Labelled: now})
	refused(KindTapeFile, file(2, 1)) // out of order: file 1 comes first
	must(KindTapeFile, file(1, 1))
	must(KindTapeFile, file(2, 2))
	if ok, _ := c.OnTape("pc-1", "home", 1); !ok {
		t.Fatal("version 1 not on tape")
	}
	var refs []TapeFileRef
	c.TapeChunks("set1", "acme", []ID{{1}, {2}, {3}}, func(i int, r TapeFileRef) { refs = append(refs, r) })
	if len(refs) != 2 || refs[1].File != 2 {
		t.Fatalf("chunk locations %+v", refs)
	}
	res, err = c.Prune(PruneCmd{Versions: []VersionKey{{Computer: "pc-1", Config: "home", Seq: 1}}})
	if err != nil || res.Versions != 1 {
		t.Fatalf("prune after tape: %+v %v", res, err)
	}

	// Taken out of the library: off site, from the library's answer.
	must(KindTapeReconcile, TapeReconcileCmd{Now: now, Seen: nil})
	if cr, _ := c.Cartridge("TAPE01L5"); cr.Where != WhereOffsite || cr.Files != 3 {
		t.Fatalf("after it left: %+v", cr)
	}
	// Relabelled: everything it held is forgotten.
	must(KindTapeLabel, TapeLabelCmd{Barcode: "TAPE01L5", UUID: "u2", Pool: "daily", Labelled: now})
	if ok, _ := c.OnTape("pc-1", "home", 2); ok {
		t.Fatal("a copy on a relabelled cartridge is still recorded")
	}
	if fs, _ := c.TapeFiles("TAPE01L5"); len(fs) != 0 {
		t.Fatalf("files of a relabelled cartridge: %+v", fs)
	}
	refs = nil
	c.TapeChunks("set1", "acme", []ID{{1}, {2}}, func(i int, r TapeFileRef) { refs = append(refs, r) })
	if len(refs) != 0 {
		t.Fatalf("chunk locations on a relabelled cartridge: %+v", refs)
	}
}
