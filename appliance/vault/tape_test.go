package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/jobs"
	"vaultnode/appliance/tape"
	"vaultnode/appliance/tape/changer"
	"vaultnode/appliance/tape/drive"
	"vaultnode/appliance/tape/emu"
	"vaultnode/appliance/tape/format"
	"vaultnode/appliance/tape/scsi"
	"vaultnode/internal/clock"
)

// tapeLab is an emulated library: a changer with 2 drives, slots from 1024
// and an import/export slot at 32, whose cartridges are image files.
type tapeLab struct {
	emu   *emu.Library
	tapes map[uint16]*emu.Tape
	lib   *tape.Library
}

func newTapeLab(t testing.TB, capacity, warning int, barcodes ...string) *tapeLab {
	t.Helper()
	e := emu.New(16)
	e.AddSlots(1024, barcodes...)
	e.AddIE(32)
	e.KeepMedia(t.TempDir())
	// The changer's handle retries unit attentions (an operator at the
	// import/export slot), as the product's scsi.Retry does.
	h := &scsi.Retry{Next: e, Clock: clock.Real{}}
	lab := &tapeLab{emu: e, tapes: map[uint16]*emu.Tape{}, lib: &tape.Library{Changer: changer.New(h, nil), Drives: map[uint16]tape.Drive{}}}
	for _, a := range []uint16{1, 2} {
		serial := fmt.Sprintf("SN-DRIVE-%d", a)
		e.AddDrive(a, serial)
		tp := emu.NewEmptyTape(serial)
		tp.Capacity, tp.EarlyWarning = capacity, warning
		e.AttachDrive(a, tp)
		// Each drive too, as discover opens them.
		lab.tapes[a], lab.lib.Drives[a] = tp, drive.New(&scsi.Retry{Next: tp, Clock: clock.Real{}}, nil)
	}
	return lab
}

func openTapeVault(t testing.TB, dir string, lab *tapeLab, recovery []byte) *Vault {
	t.Helper()
	return openTapeVaultClock(t, dir, lab, recovery, clock.Real{})
}

func openTapeVaultClock(t testing.TB, dir string, lab *tapeLab, recovery []byte, clk clock.Clock) *Vault {
	t.Helper()
	v, err := Open(Options{Dir: dir, Listen: "127.0.0.1:0", Zone: time.UTC, Clock: clk, Tape: lab.lib, TapeRecovery: recovery, TapeFileLimit: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

func tapeOp(t testing.TB, v *Vault, req TapeRequest) any {
	t.Helper()
	out, err := v.TapeOp(context.Background(), operator, req)
	if err != nil {
		t.Fatalf("tape %s: %v", req.Op, err)
	}
	return out
}

func runJob(t testing.TB, v *Vault, kind jobs.Kind) jobs.View {
	t.Helper()
	rec, err := v.Jobs.Start(kind, "test")
	if err != nil {
		t.Fatal(err)
	}
	return waitJob(t, v, rec.ID)
}

// counter is the value of the vault's counter name (0 when absent).
func counter(t *testing.T, v *Vault, name string) float64 {
	t.Helper()
	mfs, err := v.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// checkPhysical: every tape file the catalog records is on its cartridge
// with its closing filemark, and nothing recorded is missing.
func checkPhysical(t *testing.T, v *Vault, lab *tapeLab) (used int) {
	t.Helper()
	carts, err := v.Catalog.Cartridges()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range carts {
		if c.UUID == "" {
			continue
		}
		m, err := lab.emu.Media(c.Barcode)
		if err != nil {
			t.Fatal(err)
		}
		if m.Files() < c.Files {
			t.Fatalf("catalog says %s holds %d complete files, the tape has %d filemarks", c.Barcode, c.Files, m.Files())
		}
		files, _ := v.Catalog.TapeFiles(c.Barcode)
		if len(files) != c.Files-1 {
			t.Fatalf("%s: %d file records for %d files", c.Barcode, len(files), c.Files)
		}
		for _, f := range files {
			b, err := m.ReadFile(f.File)
			if err != nil || int64(len(b)) != f.Bytes {
				t.Fatalf("%s file %d: %d bytes on tape, %d recorded (%v)", c.Barcode, f.File, len(b), f.Bytes, err)
			}
		}
		if c.Files > 1 {
			used++
		}
	}
	return used
}

// TestTapeJobSpansResumesRestores: versions of a configuration on tape
// are held from pruning until a tape job wrote them; a drive failing in
// the middle of a job leaves the catalog with only what is on tape and the
// next job completes, spanning two cartridges; a version pruned and
// collected from the disk is restored from tape byte for byte; and a scan
// of the cartridges rebuilds the same tape catalog in another vault.
func TestTapeJobSpansResumesRestores(t *testing.T) {
	ctx := context.Background()
	lab := newTapeLab(t, 3<<20, 2<<20, "TAPE01L5", "TAPE02L5", "TAPE03L5", "", "CLN001L1")
	v := openTapeVault(t, t.TempDir(), lab, nil)
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	a := newGCAgent(t, v, "acme", "pc-1")
	want := map[string][][]byte{}
	for i := 0; i < 3; i++ {
		files := randomFiles(10, 100<<10)
		seq, err := a.backup(ctx, files)
		if err != nil {
			t.Fatal(err)
		}
		want[fmt.Sprintf("pc-1@%d", seq)] = files
	}
	tapeOp(t, v, TapeRequest{Op: "pool", PoolSpec: &catalog.TapePool{Name: "daily", Allocation: catalog.AllocContinue}})
	tapeOp(t, v, TapeRequest{Op: "cover", Cover: &catalog.TapeCover{Company: "acme", Pool: "daily"}})
	if err := v.SetRetention(ctx, operator, RetentionRequest{Company: "acme", Policy: "last 1"}); err != nil {
		t.Fatal(err)
	}

	// Retention respects tape: nothing is on tape, so nothing goes.
	plan, err := v.PlanPrune(ctx, operator)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Remove != 0 || !strings.Contains(fmt.Sprint(plan.Configs[0].Versions[1].Reasons), NotYetOnTape) {
		t.Fatalf("prune plan before tape: remove %d, reasons %v", plan.Remove, plan.Configs[0].Versions[1].Reasons)
	}
	// Even a prune command naming them (a replica's, an old plan) keeps them.
	res, err := v.Catalog.Prune(catalog.PruneCmd{Versions: []catalog.VersionKey{{Computer: "pc-1", Config: "home", Seq: 2}}})
	if err != nil || res.Versions != 0 || res.HeldForTape != 1 {
		t.Fatalf("prune of a version not on tape: %+v, %v", res, err)
	}

	// The drive fails after 6 blocks (1.5 MiB) of the first job.
	lab.tapes[1].FailWritesAfter(6)
	view := runJob(t, v, tape.KindTape)
	if view.State != jobs.Failed || !strings.Contains(view.Error, "hardware error") {
		t.Fatalf("job with a failing drive: %s %q", view.State, view.Error)
	}
	checkPhysical(t, v, lab)
	onTape := 0
	for seq := uint64(1); seq <= 3; seq++ {
		if ok, _ := v.Catalog.OnTape("pc-1", "home", seq); ok {
			onTape++
		}
	}
	if onTape == 3 {
		t.Fatal("every version recorded on tape although the drive failed in the middle")
	}
	if where, _ := lab.emu.Where("TAPE01L5"); where != 1024 {
		t.Fatalf("after the failed job TAPE01L5 is at %d, want back in its slot", where)
	}

	view = runJob(t, v, tape.KindTape)
	if view.State != jobs.Done {
		t.Fatalf("second tape job: %s %q", view.State, view.Error)
	}
	var jr tape.JobResult
	json.Unmarshal(view.Result, &jr)
	if jr.Versions != 3-onTape || jr.Left != 0 {
		t.Fatalf("second job wrote %d versions (%d left), want %d", jr.Versions, jr.Left, 3-onTape)
	}
	// Each cartridge got its catalog file: the full one before the job
	// spanned to the next, the last one before it was unloaded.
	if fmt.Sprint(jr.CatalogFiles) != fmt.Sprint(jr.Cartridges) || len(jr.CatalogMissing) != 0 {
		t.Fatalf("catalog files %v (missing %v), cartridges written %v", jr.CatalogFiles, jr.CatalogMissing, jr.Cartridges)
	}
	if used := checkPhysical(t, v, lab); used < 2 {
		t.Fatalf("the versions fit one cartridge (%d used): the test does not span", used)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		if ok, _ := v.Catalog.OnTape("pc-1", "home", seq); !ok {
			t.Fatalf("version %d not on tape after the second job", seq)
		}
	}
	if st := v.Tape.Status(); st.Busy || st.Bytes == 0 {
		t.Fatalf("status after the job: %+v", st)
	}
	if written := counter(t, v, "vaultnode_tape_written_bytes_total"); written < 3*10*100<<10 {
		t.Fatalf("vaultnode_tape_written_bytes_total %v after writing three versions of 1 MB", written)
	}

	// Now prune removes what retention does not keep; collect removes its chunks.
	if view := runJob(t, v, jobs.KindPrune); view.State != jobs.Done {
		t.Fatalf("prune: %s %s", view.State, view.Error)
	}
	if vs, _ := v.Catalog.VersionRecords("pc-1", "home"); len(vs) != 2 { // the first and the last
		t.Fatalf("%d versions on disk after prune, want 2", len(vs))
	}
	if view := runJob(t, v, jobs.KindCollect); view.State != jobs.Done {
		t.Fatalf("collect: %s %s", view.State, view.Error)
	}
	if have, _ := v.Store.Has("acme", [][32]byte{a.hs.Sum(want["pc-1@2"][0])}); have[0] {
		t.Fatal("a chunk of the pruned version is still on disk after collection")
	}

	// Restore version 2 from tape.
	needs := tapeOp(t, v, TapeRequest{Op: "needs", Restore: &tape.RestoreRequest{Computer: "pc-1", Config: "home", Seq: 2}}).(catalog.TapeCopy)
	if len(needs.Cartridges()) == 0 {
		t.Fatal("restore needs no cartridge")
	}
	started := tapeOp(t, v, TapeRequest{Op: "restore", Restore: &tape.RestoreRequest{Computer: "pc-1", Config: "home", Seq: 2}}).(StartJobResponse)
	if view := waitJob(t, v, started.Job.ID); view.State != jobs.Done {
		t.Fatalf("restore from tape: %s %s", view.State, view.Error)
	}
	if n := restoreAll(t, v, want); n != 3 {
		t.Fatalf("%d versions restore, want 3", n)
	}

	// A second vault reads the cartridges back into its catalog.
	v2 := openTapeVault(t, t.TempDir(), lab, nil)
	inv := tapeOp(t, v2, TapeRequest{Op: "inventory"}).(tape.InventoryView)
	scanned := 0
	for _, c := range inv.Cartridges {
		if c.State == catalog.CartCleaning {
			continue
		}
		if orig, _ := v.Catalog.Cartridge(c.Barcode); orig.UUID == "" {
			continue
		}
		sr := tapeOp(t, v2, TapeRequest{Op: "scan", Barcode: c.Barcode}).(*tape.ScanResult)
		scanned += sr.Versions
		if !sr.FromCatalog {
			t.Fatalf("scan of %s read every file: %s", c.Barcode, sr.Catalog)
		}
	}
	if scanned != 3 {
		t.Fatalf("scans found %d versions, want 3", scanned)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		c1, _ := v.Catalog.TapeCopies("pc-1", "home", seq)
		c2, _ := v2.Catalog.TapeCopies("pc-1", "home", seq)
		if len(c1) != 1 || len(c2) != 1 || fmt.Sprint(c1[0].Files) != fmt.Sprint(c2[0].Files) || c1[0].ManifestID != c2[0].ManifestID {
			t.Fatalf("version %d: scanned copy %+v, written %+v", seq, c2, c1)
		}
	}
	for _, bc := range []string{"TAPE01L5", "TAPE02L5"} {
		f1, _ := v.Catalog.TapeFiles(bc)
		f2, _ := v2.Catalog.TapeFiles(bc)
		for i := range f1 {
			if i >= len(f2) || f1[i].Block != f2[i].Block || f1[i].Chunks != f2[i].Chunks || f1[i].Bytes != f2[i].Bytes && f2[i].Bytes != 0 {
				t.Fatalf("%s file %d: scanned %+v, written %+v", bc, f1[i].File, f2, f1)
			}
		}
	}
}

// tapeOneFileWritten is a vault with one cartridge in a pool covering
// company acme, whose computer pc-1 backed up a first version that a tape
// job wrote.
func tapeOneFileWritten(t *testing.T) (*tapeLab, *Vault, *gcAgent, uint64) {
	t.Helper()
	lab := newTapeLab(t, 1<<30, 1<<29, "TAPE01L5")
	v := openTapeVault(t, t.TempDir(), lab, nil)
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	a := newGCAgent(t, v, "acme", "pc-1")
	tapeOp(t, v, TapeRequest{Op: "pool", PoolSpec: &catalog.TapePool{Name: "daily", Allocation: catalog.AllocContinue}})
	tapeOp(t, v, TapeRequest{Op: "cover", Cover: &catalog.TapeCover{Company: "acme", Pool: "daily"}})
	first, err := a.backup(context.Background(), randomFiles(3, 100<<10))
	if err != nil {
		t.Fatal(err)
	}
	if view := runJob(t, v, tape.KindTape); view.State != jobs.Done {
		t.Fatalf("first job: %s %s", view.State, view.Error)
	}
	return lab, v, a, first
}

// TestTapeDriveResetMidFile: a drive reset in the middle of a data file
// (a power cycle: the drive rewinds and answers the next WRITE with a unit
// attention) stops the job with "position lost" instead of repeating the
// WRITE at the beginning of the tape over the label; the catalog keeps
// only the complete files, and the next job writes the version after them.
func TestTapeDriveResetMidFile(t *testing.T) {
	ctx := context.Background()
	lab, v, a, first := tapeOneFileWritten(t)
	m, err := lab.emu.Media("TAPE01L5")
	if err != nil {
		t.Fatal(err)
	}
	label, err := m.ReadFile(0)
	if err != nil {
		t.Fatal(err)
	}
	filesBefore := m.Files()

	second, err := a.backup(ctx, randomFiles(10, 100<<10))
	if err != nil {
		t.Fatal(err)
	}
	var writes atomic.Int32
	for _, tp := range lab.tapes {
		tp.OnWrite = func() {
			if writes.Add(1) == 3 {
				tp.Reset()
			}
		}
	}
	view := runJob(t, v, tape.KindTape)
	if view.State != jobs.Failed || !strings.Contains(view.Error, drive.ErrPositionLost.Error()) {
		t.Fatalf("job with a drive reset in the middle of a file: %s %q", view.State, view.Error)
	}
	for _, tp := range lab.tapes {
		tp.OnWrite = nil
	}
	if got, err := m.ReadFile(0); err != nil || !bytes.Equal(got, label) {
		t.Fatalf("the label file after the reset: %d bytes (%v), want the %d written first", len(got), err, len(label))
	}
	if ok, _ := v.Catalog.OnTape("pc-1", "home", second); ok {
		t.Fatal("the version whose file the reset tore is recorded on tape")
	}
	checkPhysical(t, v, lab)

	if view := runJob(t, v, tape.KindTape); view.State != jobs.Done {
		t.Fatalf("job after the reset: %s %s", view.State, view.Error)
	}
	for _, seq := range []uint64{first, second} {
		if ok, _ := v.Catalog.OnTape("pc-1", "home", seq); !ok {
			t.Fatalf("version %d not on tape after the next job", seq)
		}
	}
	if got, _ := m.ReadFile(0); !bytes.Equal(got, label) || m.Files() <= filesBefore {
		t.Fatalf("after the next job: label intact %v, %d files (were %d)", bytes.Equal(got, label), m.Files(), filesBefore)
	}
	checkPhysical(t, v, lab)
}

// TestTapeVerifyFindsMisorderedBlock: a drive that stores two blocks of a
// data file swapped while acknowledging every WRITE (as a transport that
// reorders queued commands did in the lab) fails the job at the file's
// read-back, naming the misplaced block; the version is not recorded on
// tape, so retention still keeps it on disk, and the next job writes it
// over the bad file.
func TestTapeVerifyFindsMisorderedBlock(t *testing.T) {
	ctx := context.Background()
	lab, v, a, first := tapeOneFileWritten(t)
	second, err := a.backup(ctx, randomFiles(10, 100<<10))
	if err != nil {
		t.Fatal(err)
	}
	lab.tapes[1].MisorderAfter(2)
	view := runJob(t, v, tape.KindTape)
	if view.State != jobs.Failed || !strings.Contains(view.Error, "block 2 holds what was written as block 3") {
		t.Fatalf("job on a drive storing blocks out of order: %s %q", view.State, view.Error)
	}
	if ok, _ := v.Catalog.OnTape("pc-1", "home", second); ok {
		t.Fatal("the version whose file read back wrong is recorded on tape")
	}
	checkPhysical(t, v, lab)
	if failures := counter(t, v, "vaultnode_tape_verify_failures_total"); failures != 1 {
		t.Fatalf("vaultnode_tape_verify_failures_total %v, want 1", failures)
	}

	if view := runJob(t, v, tape.KindTape); view.State != jobs.Done {
		t.Fatalf("job after the failed verification: %s %s", view.State, view.Error)
	}
	for _, seq := range []uint64{first, second} {
		if ok, _ := v.Catalog.OnTape("pc-1", "home", seq); !ok {
			t.Fatalf("version %d not on tape after the next job", seq)
		}
	}
	checkPhysical(t, v, lab)

	// A pool that turns verification off records what the drive
	// acknowledged, misplaced blocks and all: the option does what it says.
	tapeOp(t, v, TapeRequest{Op: "pool", PoolSpec: &catalog.TapePool{Name: "daily", Allocation: catalog.AllocContinue, NoVerify: true}})
	third, err := a.backup(ctx, randomFiles(10, 100<<10))
	if err != nil {
		t.Fatal(err)
	}
	lab.tapes[1].MisorderAfter(2)
	if view := runJob(t, v, tape.KindTape); view.State != jobs.Done {
		t.Fatalf("job of a pool without verification: %s %s", view.State, view.Error)
	}
	if ok, _ := v.Catalog.OnTape("pc-1", "home", third); !ok {
		t.Fatal("a pool without verification did not record its file")
	}
}

func buildRecover(t *testing.T, dir string) []byte {
	t.Helper()
	bin := filepath.Join(dir, "vault-tape-recover")
	build := exec.Command("go", "build", "-o", bin, "vaultnode/appliance/cmd/vault-tape-recover")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the recovery program: %v\n%s", err, out)
	}
	prog, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	return prog
}

// TestTapeRecoverWithTarOnly: a cartridge read with tar alone: file 0
// holds the README and the static recovery program, which with the
// company's exported key rebuilds a version's files from the data files
// tar extracted.
func TestTapeRecoverWithTarOnly(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		t.Fatal("tar is needed: apt-get install tar")
	}
	ctx := context.Background()
	dir := t.TempDir()
	prog := buildRecover(t, dir)
	lab := newTapeLab(t, 1<<30, 1<<29, "TAPE01L5")
	v := openTapeVault(t, t.TempDir(), lab, prog)
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	a := newGCAgent(t, v, "acme", "pc-1")
	files := randomFiles(5, 300<<10)
	seq, err := a.backup(ctx, files)
	if err != nil {
		t.Fatal(err)
	}
	tapeOp(t, v, TapeRequest{Op: "pool", PoolSpec: &catalog.TapePool{Name: "vault", Allocation: catalog.AllocAlwaysNew}})
	tapeOp(t, v, TapeRequest{Op: "cover", Cover: &catalog.TapeCover{Computer: "pc-1", Config: "home", Pool: "vault"}})
	if view := runJob(t, v, tape.KindTape); view.State != jobs.Done {
		t.Fatalf("tape job: %s %s", view.State, view.Error)
	}
	key, err := v.ExportKey(ctx, operator, "acme")
	if err != nil {
		t.Fatal(err)
	}

	// By hand: only tar, the images' tape files and the key.
	m, err := lab.emu.Media("TAPE01L5")
	if err != nil {
		t.Fatal(err)
	}
	work, data := filepath.Join(dir, "file0"), filepath.Join(dir, "data")
	os.MkdirAll(work, 0o755)
	os.MkdirAll(data, 0o755)
	tarx := func(n int, into string) {
		b, err := m.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		if len(b)%format.RecordSize != 0 {
			t.Fatalf("tape file %d is %d bytes: not whole %d-byte blocks", n, len(b), format.RecordSize)
		}
		f := filepath.Join(dir, fmt.Sprintf("tape-file-%d", n))
		os.WriteFile(f, b, 0o600)
		if out, err := exec.Command("tar", "-x", "-b", "512", "-f", f, "-C", into).CombinedOutput(); err != nil {
			t.Fatalf("tar -x tape file %d: %v\n%s", n, err, out)
		}
	}
	tarx(0, work)
	if b, err := os.ReadFile(filepath.Join(work, "README")); err != nil || !bytes.Contains(b, []byte("TAPE01L5")) {
		t.Fatalf("README: %v", err)
	}
	for n := 1; n < m.Files(); n++ {
		tarx(n, data)
	}
	keyFile := filepath.Join(dir, "acme.key")
	os.WriteFile(keyFile, []byte(key.Key+"\n"), 0o600)
	out := filepath.Join(dir, "restored")
	ver := fmt.Sprintf("acme/pc-1/home/%d", seq)
	if b, err := exec.Command(filepath.Join(work, "vault-tape-recover"), "list", "-from", data).CombinedOutput(); err != nil || !bytes.Contains(b, []byte(ver)) {
		t.Fatalf("list: %v\n%s", err, b)
	}
	// The last tape file is the cartridge's catalog: it names the files
	// each version needs without reading them.
	if b, err := exec.Command(filepath.Join(work, "vault-tape-recover"), "catalog", "-from", data).CombinedOutput(); err != nil ||
		!bytes.Contains(b, []byte(ver+"\tstarted")) || !bytes.Contains(b, []byte("needs TAPE01L5:1")) {
		t.Fatalf("catalog: %v\n%s", err, b)
	}
	if b, err := exec.Command(filepath.Join(work, "vault-tape-recover"), "restore", "-key", keyFile, "-from", data, "-version", ver, "-to", out).CombinedOutput(); err != nil {
		t.Fatalf("restore: %v\n%s", err, b)
	}
	for i, f := range files {
		got, err := os.ReadFile(filepath.Join(out, fmt.Sprintf("f%04d", i)))
		if err != nil || !bytes.Equal(got, f) {
			t.Fatalf("file %d restored from tape differs (%v)", i, err)
		}
	}
	// Without the key nothing is readable.
	if b, err := exec.Command(filepath.Join(work, "vault-tape-recover"), "restore", "-from", data, "-version", ver, "-to", out+"2").CombinedOutput(); err == nil {
		t.Fatalf("restore without the key succeeded:\n%s", b)
	}
}

// TestTapePoolsExportAndReuse: an always-new pool with off-site export
// writes each job to a new media set and moves its cartridge to the
// import/export slot; an operator takes it away (the catalog learns it is
// off site from the library, not from the move) and later brings one back;
// once its retention passed it is relabelled and overwritten, and the
// tape copies it held are forgotten.
func TestTapePoolsExportAndReuse(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(time.Date(2026, 3, 2, 7, 0, 0, 0, time.UTC))
	lab := newTapeLab(t, 1<<30, 1<<29, "TAPE01L5", "TAPE02L5", "TAPE03L5")
	v := openTapeVaultClock(t, t.TempDir(), lab, nil, clk)
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	a := newGCAgent(t, v, "acme", "pc-1")
	tapeOp(t, v, TapeRequest{Op: "pool", PoolSpec: &catalog.TapePool{Name: "offsite", Allocation: catalog.AllocAlwaysNew, Retention: "1d", Export: true}})
	tapeOp(t, v, TapeRequest{Op: "cover", Cover: &catalog.TapeCover{Company: "acme", Pool: "offsite"}})
	job := func(want string) tape.JobResult {
		t.Helper()
		if _, err := a.backup(ctx, randomFiles(2, 10<<10)); err != nil {
			t.Fatal(err)
		}
		view := runJob(t, v, tape.KindTape)
		var jr tape.JobResult
		json.Unmarshal(view.Result, &jr)
		if view.State != jobs.Done || fmt.Sprint(jr.Cartridges) != "["+want+"]" || fmt.Sprint(jr.Exported) != "["+want+"]" {
			t.Fatalf("job: %s %s, result %+v, want %s written and exported", view.State, view.Error, jr, want)
		}
		if where, _ := lab.emu.Where(want); where != 32 {
			t.Fatalf("%s is at %d after the job, want the import/export slot", want, where)
		}
		if bc, err := lab.emu.Take(32); err != nil || bc != want {
			t.Fatalf("take out %q: %v", bc, err)
		}
		tapeOp(t, v, TapeRequest{Op: "inventory"})
		if cr, _ := v.Catalog.Cartridge(want); cr.Where != catalog.WhereOffsite {
			t.Fatalf("%s taken out, the catalog has it in %s", want, cr.Where)
		}
		clk.Advance(24 * time.Hour)
		return jr
	}
	j1 := job("TAPE01L5")
	j2 := job("TAPE02L5")
	if j1.MediaSets[0] == j2.MediaSets[0] {
		t.Fatal("always-new pool wrote two jobs to one media set")
	}
	if c, _ := v.Catalog.TapeCopies("pc-1", "home", 1); len(c) != 1 || c[0].Files[0].Barcode != "TAPE01L5" {
		t.Fatalf("copies of version 1: %+v", c)
	}
	// TAPE01 comes back; its retention (1 day) has passed: it is reused
	// before the blank TAPE03, and version 1's copy on it is forgotten.
	if err := lab.emu.Insert(32, "TAPE01L5"); err != nil {
		t.Fatal(err)
	}
	tapeOp(t, v, TapeRequest{Op: "import"})
	clk.Advance(24 * time.Hour)
	job("TAPE01L5")
	if c, _ := v.Catalog.TapeCopies("pc-1", "home", 1); len(c) != 0 {
		t.Fatalf("version 1 still recorded on the overwritten cartridge: %+v", c)
	}
	for seq := uint64(2); seq <= 3; seq++ {
		if ok, _ := v.Catalog.OnTape("pc-1", "home", seq); !ok {
			t.Fatalf("version %d not on tape", seq)
		}
	}
	if cr, _ := v.Catalog.Cartridge("TAPE03L5"); cr.State != catalog.CartBlank {
		t.Fatalf("TAPE03L5 is %s: a blank cartridge was used while an expired one was there", cr.State)
	}
}

// TestTapeEndOfMediumWithoutWarning: a drive that never reports the early
// warning and refuses a block at the end of the medium loses the open
// file; the job writes it again on the next cartridge, and reading the
// cartridges back (scan) finds every version.
func TestTapeEndOfMediumWithoutWarning(t *testing.T) {
	ctx := context.Background()
	lab := newTapeLab(t, 5<<19, 100<<20, "TAPE01L5", "TAPE02L5", "TAPE03L5")
	v := openTapeVault(t, t.TempDir(), lab, nil)
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	a := newGCAgent(t, v, "acme", "pc-1")
	for i := 0; i < 3; i++ {
		if _, err := a.backup(ctx, randomFiles(4, 200<<10)); err != nil {
			t.Fatal(err)
		}
	}
	tapeOp(t, v, TapeRequest{Op: "pool", PoolSpec: &catalog.TapePool{Name: "daily"}})
	tapeOp(t, v, TapeRequest{Op: "cover", Cover: &catalog.TapeCover{Company: "acme", Pool: "daily"}})
	view := runJob(t, v, tape.KindTape)
	if view.State != jobs.Done {
		t.Fatalf("job: %s %s", view.State, view.Error)
	}
	checkPhysical(t, v, lab)
	if cr, _ := v.Catalog.Cartridge("TAPE01L5"); cr.State != catalog.CartFull {
		t.Fatalf("TAPE01L5 is %s after the end of medium", cr.State)
	}
	// The cartridge that hit the end of medium has no room for its catalog
	// file, and the job says so; the last one got its catalog file.
	var jr tape.JobResult
	json.Unmarshal(view.Result, &jr)
	if fmt.Sprint(jr.Cartridges) != "[TAPE01L5 TAPE02L5]" || fmt.Sprint(jr.CatalogFiles) != "[TAPE02L5]" || len(jr.CatalogMissing) != 1 ||
		!strings.HasPrefix(jr.CatalogMissing[0], "TAPE01L5: the end of medium came inside a data file") {
		t.Fatalf("cartridges %v, catalog files %v, missing %q; want TAPE01L5 missing its catalog file with the reason", jr.Cartridges, jr.CatalogFiles, jr.CatalogMissing)
	}
	// Each file's recorded start is where LOCATE finds its first block.
	var bc string
	var files []catalog.TapeFile
	for _, b := range []string{"TAPE01L5", "TAPE02L5", "TAPE03L5"} {
		if files, _ = v.Catalog.TapeFiles(b); len(files) >= 2 {
			bc = b
			break
		}
	}
	if bc == "" {
		t.Fatal("no cartridge holds two files: the test needs one")
	}
	tapeOp(t, v, TapeRequest{Op: "load", Barcode: bc, Drive: 2})
	m, _ := lab.emu.Media(bc)
	for i := len(files) - 1; i >= 0; i-- {
		f := files[i]
		if !f.BlockKnown {
			t.Fatalf("%s file %d: start not recorded although the drive reports positions: %+v", bc, f.File, files)
		}
		d := lab.lib.Drives[2]
		if err := d.SeekFile(ctx, drive.Mark{File: uint64(f.File), Block: f.Block, BlockKnown: true}); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, format.RecordSize)
		n, err := d.ReadBlock(ctx, buf)
		want, _ := m.ReadFile(f.File)
		if err != nil || !bytes.Equal(buf[:n], want[:format.RecordSize]) {
			t.Fatalf("file %d: the block at its recorded start (%d) is not its first (%v)", f.File, f.Block, err)
		}
	}
	tapeOp(t, v, TapeRequest{Op: "unload", Drive: 2})
	v2 := openTapeVault(t, t.TempDir(), lab, nil)
	tapeOp(t, v2, TapeRequest{Op: "inventory"})
	found := 0
	for _, bc := range []string{"TAPE01L5", "TAPE02L5", "TAPE03L5"} {
		if cr, _ := v.Catalog.Cartridge(bc); cr.UUID == "" {
			continue
		}
		sr := tapeOp(t, v2, TapeRequest{Op: "scan", Barcode: bc}).(*tape.ScanResult)
		found += sr.Versions
		if sr.FromCatalog != slices.Contains(jr.CatalogFiles, bc) {
			t.Fatalf("scan of %s: from its catalog file %v (%s), catalog files written %v", bc, sr.FromCatalog, sr.Catalog, jr.CatalogFiles)
		}
	}
	if found != 3 {
		t.Fatalf("scans found %d versions, want 3", found)
	}
}

// TestTapeWrongCartridgeStopsTheJob: a cartridge whose label is not the
// one the catalog recorded under its barcode (a swapped barcode label, a
// cartridge written elsewhere) is never appended to.
func TestTapeWrongCartridgeStopsTheJob(t *testing.T) {
	ctx := context.Background()
	lab := newTapeLab(t, 1<<30, 1<<29, "TAPE01L5")
	v := openTapeVault(t, t.TempDir(), lab, nil)
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	a := newGCAgent(t, v, "acme", "pc-1")
	tapeOp(t, v, TapeRequest{Op: "pool", PoolSpec: &catalog.TapePool{Name: "daily"}})
	tapeOp(t, v, TapeRequest{Op: "cover", Cover: &catalog.TapeCover{Company: "acme", Pool: "daily"}})
	if _, err := a.backup(ctx, randomFiles(2, 10<<10)); err != nil {
		t.Fatal(err)
	}
	if view := runJob(t, v, tape.KindTape); view.State != jobs.Done {
		t.Fatalf("job: %s %s", view.State, view.Error)
	}
	m, _ := lab.emu.Media("TAPE01L5")
	before := m.Used()
	// The catalog believes another cartridge carries this barcode.
	cr, _ := v.Catalog.Cartridge("TAPE01L5")
	tapeOp(t, v, TapeRequest{Op: "label", Barcode: "TAPE01L5", Pool: "daily", Force: true})
	if now, _ := v.Catalog.Cartridge("TAPE01L5"); now.UUID == cr.UUID {
		t.Fatal("relabel kept the uuid")
	}
	m, _ = lab.emu.Media("TAPE01L5")
	before = m.Used()
	if err := v.Catalog.Tape(catalog.KindTapeLabel, catalog.TapeLabelCmd{Barcode: "TAPE01L5", UUID: "not-the-one-on-tape", Pool: "daily", Labelled: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.backup(ctx, randomFiles(2, 10<<10)); err != nil {
		t.Fatal(err)
	}
	view := runJob(t, v, tape.KindTape)
	if view.State != jobs.Failed || !strings.Contains(view.Error, tape.ErrWrongCartridge.Error()) || !strings.Contains(view.Error, "vaultctl tape scan") {
		t.Fatalf("job on a swapped cartridge: %s %q", view.State, view.Error)
	}
	if m.Used() != before {
		t.Fatal("the job wrote on a cartridge whose label does not match")
	}
}

// TestTapePlainPool: a plain pool writes chunks decrypted (still checked
// against their ids); a pruned and collected version comes back from it
// into the vault identical, and the recovery program reads it without a
// key.
func TestTapePlainPool(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	prog := buildRecover(t, dir)
	lab := newTapeLab(t, 1<<30, 1<<29, "TAPE01L5")
	v := openTapeVault(t, t.TempDir(), lab, prog)
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	a := newGCAgent(t, v, "acme", "pc-1")
	want := map[string][][]byte{}
	for i := 0; i < 3; i++ {
		files := randomFiles(3, 50<<10)
		seq, err := a.backup(ctx, files)
		if err != nil {
			t.Fatal(err)
		}
		want[fmt.Sprintf("pc-1@%d", seq)] = files
	}
	tapeOp(t, v, TapeRequest{Op: "pool", PoolSpec: &catalog.TapePool{Name: "open", Plain: true}})
	tapeOp(t, v, TapeRequest{Op: "cover", Cover: &catalog.TapeCover{Company: "acme", Pool: "open"}})
	if view := runJob(t, v, tape.KindTape); view.State != jobs.Done {
		t.Fatalf("tape job: %s %s", view.State, view.Error)
	}
	m, _ := lab.emu.Media("TAPE01L5")
	data := filepath.Join(dir, "data")
	os.MkdirAll(data, 0o755)
	for n := 1; n < m.Files(); n++ {
		b, _ := m.ReadFile(n)
		f := filepath.Join(dir, fmt.Sprintf("tape-file-%d", n))
		os.WriteFile(f, b, 0o600)
		if out, err := exec.Command("tar", "-x", "-b", "512", "-f", f, "-C", data).CombinedOutput(); err != nil {
			t.Fatalf("tar -x: %v\n%s", err, out)
		}
	}
	plain, _ := filepath.Glob(filepath.Join(data, "vaultnode", "acme", "chunks", "*", "*.plain"))
	if len(plain) < 9 {
		t.Fatalf("%d plain chunk members, want every chunk", len(plain))
	}
	out := filepath.Join(dir, "restored")
	if b, err := exec.Command(filepath.Join(dir, "vault-tape-recover"), "restore", "-from", data, "-version", "acme/pc-1/home/3", "-to", out).CombinedOutput(); err != nil {
		t.Fatalf("restore without a key from a plain pool: %v\n%s", err, b)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "f0001")); !bytes.Equal(got, want["pc-1@3"][1]) {
		t.Fatal("file restored from a plain pool differs")
	}

	if err := v.SetRetention(ctx, operator, RetentionRequest{Company: "acme", Policy: "last 1"}); err != nil {
		t.Fatal(err)
	}
	runJob(t, v, jobs.KindPrune)
	runJob(t, v, jobs.KindCollect)
	if have, _ := v.Store.Has("acme", [][32]byte{a.hs.Sum(want["pc-1@2"][0])}); have[0] {
		t.Fatal("version 2's chunk still on disk")
	}
	// Straight to the agent: back into the vault, then a restore command
	// to its computer.
	started := tapeOp(t, v, TapeRequest{Op: "restore", Restore: &tape.RestoreRequest{Computer: "pc-1", Config: "home", Seq: 2},
		ToAgent: true, Into: "/srv/from-tape", Existing: "keep-both"}).(StartJobResponse)
	view := waitJob(t, v, started.Job.ID)
	if view.State != jobs.Done {
		t.Fatalf("restore from a plain pool: %s %s", view.State, view.Error)
	}
	var rr TapeRestoreResult
	json.Unmarshal(view.Result, &rr)
	cmds, err := v.Catalog.AgentCommands("pc-1")
	if err != nil || rr.AgentCommand == "" || len(cmds) != 1 || cmds[0].ID != rr.AgentCommand || cmds[0].Restore == nil ||
		cmds[0].Restore.Version != 2 || cmds[0].Restore.To != "/srv/from-tape" || cmds[0].Restore.Existing != "keep-both" {
		t.Fatalf("restore command to the agent: result %+v, queue %+v, %v", rr, cmds, err)
	}
	if n := restoreAll(t, v, want); n != 3 {
		t.Fatalf("%d versions restore, want 3", n)
	}
}

// tapeRecords is what a vault's catalog records of a cartridge, for
// comparing a scan with the job that wrote it.
func tapeRecords(t *testing.T, v *Vault, barcode string) string {
	t.Helper()
	cc, err := v.Catalog.CartridgeContents(barcode)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s uuid %s pool %s state %s set %s seq %d files %d bytes %d\n", barcode, cc.Cartridge.UUID, cc.Cartridge.Pool,
		cc.Cartridge.State, cc.Cartridge.MediaSet, cc.Cartridge.SetSeq, cc.Cartridge.Files, cc.Cartridge.Bytes)
	for _, f := range cc.Files {
		fmt.Fprintf(&b, "file %d set %s bytes %d chunks %d block %d/%v versions %v\n", f.File, f.MediaSet, f.Bytes, f.Chunks,
			f.Block, f.BlockKnown, f.Versions)
		fmt.Fprintf(&b, "  chunks %x\n", cc.Chunks[f.File])
		for _, c := range cc.Copies[f.File] {
			fmt.Fprintf(&b, "  copy %s/%s@%d %x files %v started %s\n", c.Computer, c.Config, c.Seq, c.ManifestID, c.Files, c.Started.UTC().Format(time.RFC3339))
		}
	}
	return b.String()
}

// TestTapeScanFromCatalogFile: every job ends its writing on a cartridge
// with a catalog file; a scan rebuilds the cartridge's records from it
// alone (a few blocks read instead of every data file), identical to what
// the writing vault recorded; a job appending to the cartridge replaces
// it; a damaged catalog file, or none, makes the scan read every file and
// still rebuild the same records.
func TestTapeScanFromCatalogFile(t *testing.T) {
	ctx := context.Background()
	lab := newTapeLab(t, 1<<30, 1<<29, "TAPE01L5", "TAPE02L5")
	v := openTapeVault(t, t.TempDir(), lab, nil)
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	if err := v.NewCompany("bolt"); err != nil {
		t.Fatal(err)
	}
	a := newGCAgent(t, v, "acme", "pc-1")
	b := newGCAgent(t, v, "bolt", "pc-2")
	tapeOp(t, v, TapeRequest{Op: "pool", PoolSpec: &catalog.TapePool{Name: "daily", Allocation: catalog.AllocContinue}})
	tapeOp(t, v, TapeRequest{Op: "cover", Cover: &catalog.TapeCover{Company: "acme", Pool: "daily"}})
	tapeOp(t, v, TapeRequest{Op: "cover", Cover: &catalog.TapeCover{Company: "bolt", Pool: "daily"}})
	job := func() tape.JobResult {
		t.Helper()
		for _, ag := range []*gcAgent{a, b} {
			if _, err := ag.backup(ctx, randomFiles(6, 200<<10)); err != nil {
				t.Fatal(err)
			}
		}
		view := runJob(t, v, tape.KindTape)
		if view.State != jobs.Done {
			t.Fatalf("tape job: %s %s", view.State, view.Error)
		}
		var jr tape.JobResult
		json.Unmarshal(view.Result, &jr)
		return jr
	}
	jr := job()
	if fmt.Sprint(jr.CatalogFiles) != "[TAPE01L5]" || len(jr.CatalogMissing) != 0 {
		t.Fatalf("catalog files after the first job: %v, missing %v", jr.CatalogFiles, jr.CatalogMissing)
	}
	m, _ := lab.emu.Media("TAPE01L5")
	cr, _ := v.Catalog.Cartridge("TAPE01L5")
	if cr.Files < 4 || m.Files() != cr.Files+1 {
		t.Fatalf("TAPE01L5: %d files recorded, %d filemarks on tape: want data files and one catalog file after them", cr.Files, m.Files())
	}
	// A second job appends: it writes over the catalog file and ends with a new one.
	jr = job()
	cr2, _ := v.Catalog.Cartridge("TAPE01L5")
	if fmt.Sprint(jr.CatalogFiles) != "[TAPE01L5]" || cr2.Files <= cr.Files || m.Files() != cr2.Files+1 {
		t.Fatalf("after the second job: catalog files %v, %d files recorded (%d before), %d filemarks", jr.CatalogFiles, cr2.Files, cr.Files, m.Files())
	}
	last, err := m.ReadFile(cr2.Files)
	if err != nil || !bytes.Contains(last[:512], []byte(format.CatalogName)) {
		t.Fatalf("the last tape file is not the catalog file (%v)", err)
	}
	for n := 1; n < cr2.Files; n++ {
		f, _ := m.ReadFile(n)
		if bytes.Contains(f[:512], []byte(format.CatalogName)) {
			t.Fatalf("tape file %d is an old catalog file: the appending job should have written over it", n)
		}
	}
	want := tapeRecords(t, v, "TAPE01L5")

	scan := func(name string) (*tape.ScanResult, int) {
		t.Helper()
		v2 := openTapeVault(t, t.TempDir(), lab, nil)
		tapeOp(t, v2, TapeRequest{Op: "inventory"})
		before := lab.tapes[1].Reads() + lab.tapes[2].Reads()
		sr := tapeOp(t, v2, TapeRequest{Op: "scan", Barcode: "TAPE01L5"}).(*tape.ScanResult)
		reads := lab.tapes[1].Reads() + lab.tapes[2].Reads() - before
		if got := tapeRecords(t, v2, "TAPE01L5"); got != want {
			t.Fatalf("%s: scanned records differ from the written ones:\nscanned:\n%s\nwritten:\n%s", name, got, want)
		}
		if sr.Versions != 4 {
			t.Fatalf("%s: scan found %d versions, want 4", name, sr.Versions)
		}
		return sr, reads
	}
	sr, fast := scan("from the catalog file")
	if !sr.FromCatalog {
		t.Fatalf("scan did not use the catalog file: %s", sr.Catalog)
	}
	dataBlocks := 0
	for n := 1; n < cr2.Files; n++ {
		f, _ := m.ReadFile(n)
		dataBlocks += len(f) / format.RecordSize
	}
	if fast >= dataBlocks {
		t.Fatalf("the scan from the catalog file read %d blocks, the data files hold %d", fast, dataBlocks)
	}

	// Damaged: the third data file's description in it does not decode;
	// the scan undoes the two it recorded and reads every file instead.
	at := bytes.Index(last, []byte(format.CatalogRoot+"/TAPE01L5/3/file.json"))
	if at < 0 {
		t.Fatal("no description of data file 3 in the catalog file")
	}
	if err := m.Damage(cr2.Files, at+512, 16); err != nil {
		t.Fatal(err)
	}
	sr, slow := scan("damaged catalog file")
	if sr.FromCatalog || !strings.Contains(sr.Catalog, "every file read") || sr.CatalogFiles != 1 {
		t.Fatalf("scan of a damaged catalog file: from catalog %v, %q, %d catalog files met", sr.FromCatalog, sr.Catalog, sr.CatalogFiles)
	}
	if slow <= dataBlocks {
		t.Fatalf("the full scan read %d blocks, the data files hold %d", slow, dataBlocks)
	}
	t.Logf("scan: %d blocks read from the catalog file, %d reading every file", fast, slow)
}

// rendezvous holds each drive at its first WRITE until every other drive
// wrote too: a job writing with one drive after the other never gets past
// it (the test then fails after a minute, instead of hanging).
// rendezvous makes each of drives addrs wait, at its first write, until
// all of them are writing; then the first to get there calls both (if not
// nil) while every drive is still busy.
func rendezvous(t *testing.T, lab *tapeLab, both func(), addrs ...uint16) {
	var bothOnce sync.Once
	started := map[uint16]chan struct{}{}
	for _, a := range addrs {
		started[a] = make(chan struct{})
	}
	for _, a := range addrs {
		var once sync.Once
		lab.tapes[a].OnWrite = func() {
			once.Do(func() {
				close(started[a])
				for _, b := range addrs {
					select {
					case <-started[b]:
					case <-time.After(time.Minute):
						t.Errorf("drive %d waited a minute for drive %d to write: the drives do not write at once", a, b)
						return
					}
				}
				if both != nil {
					bothOnce.Do(both)
				}
			})
		}
	}
}

// TestTapeTwoDrivesAtOnce: two pools' versions are written by both drives
// at the same time, each drive its own pool's media set, with every
// changer move serialized and the catalog consistent with the tapes; when
// one drive fails in the middle, the other finishes its pool, the job
// fails naming the drive, only what is on tape is recorded, and the next
// job completes the other pool.
func TestTapeTwoDrivesAtOnce(t *testing.T) {
	ctx := context.Background()
	lab := newTapeLab(t, 1<<30, 1<<29, "TAPE01L5", "TAPE02L5", "TAPE03L5", "TAPE04L5")
	v := openTapeVault(t, t.TempDir(), lab, nil)
	agents := map[string]*gcAgent{}
	for _, c := range []struct{ company, pc, pool string }{{"acme", "pc-1", "alpha"}, {"bolt", "pc-2", "beta"}} {
		if err := v.NewCompany(c.company); err != nil {
			t.Fatal(err)
		}
		agents[c.pc] = newGCAgent(t, v, c.company, c.pc)
		tapeOp(t, v, TapeRequest{Op: "pool", PoolSpec: &catalog.TapePool{Name: c.pool, Allocation: catalog.AllocContinue}})
		tapeOp(t, v, TapeRequest{Op: "cover", Cover: &catalog.TapeCover{Company: c.company, Pool: c.pool}})
	}
	backup := func(pcs ...string) map[string]uint64 {
		t.Helper()
		seqs := map[string]uint64{}
		for _, pc := range pcs {
			seq, err := agents[pc].backup(ctx, randomFiles(8, 300<<10))
			if err != nil {
				t.Fatal(err)
			}
			seqs[pc] = seq
		}
		return seqs
	}
	onTape := func(pc string, seq uint64) bool {
		ok, _ := v.Catalog.OnTape(pc, "home", seq)
		return ok
	}
	poolCarts := func(pool string) []string {
		carts, _ := v.Catalog.Cartridges()
		var out []string
		for _, c := range carts {
			if c.Pool == pool && c.Files > 1 {
				out = append(out, c.Barcode)
			}
		}
		return out
	}

	seqs := backup("pc-1", "pc-2")
	// While both drives write, the busy gauge says so for each of them.
	busy := map[string]float64{}
	rendezvous(t, lab, func() {
		mfs, err := v.Metrics.Gather()
		if err != nil {
			t.Error(err)
			return
		}
		for _, mf := range mfs {
			if mf.GetName() == "vaultnode_tape_drive_busy" {
				for _, m := range mf.GetMetric() {
					busy[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}, 1, 2)
	view := runJob(t, v, tape.KindTape)
	if view.State != jobs.Done {
		t.Fatalf("tape job with two pools: %s %s", view.State, view.Error)
	}
	if want := map[string]float64{"1": 1, "2": 1}; !maps.Equal(busy, want) {
		t.Errorf("vaultnode_tape_drive_busy while both drives wrote: %v, want %v", busy, want)
	}
	var jr tape.JobResult
	json.Unmarshal(view.Result, &jr)
	if jr.Versions != 2 || jr.Left != 0 || len(jr.Pools) != 2 || len(jr.CatalogFiles) != 2 {
		t.Fatalf("job result: %+v", jr)
	}
	for pc, seq := range seqs {
		if !onTape(pc, seq) {
			t.Fatalf("%s@%d not on tape", pc, seq)
		}
	}
	st := v.Tape.Status()
	if len(st.Drives) != 2 || st.Drives[0].Pool != "alpha" || st.Drives[1].Pool != "beta" || st.Drives[0].Bytes == 0 || st.Drives[1].Bytes == 0 {
		t.Fatalf("drives' status after the job: %+v", st.Drives)
	}
	for _, ds := range st.Drives {
		if ds.Busy || ds.Rate <= 0 || ds.Started.IsZero() {
			t.Fatalf("drive %d after the job: busy %v, rate %.0f B/s, started %v; want idle with its rate", ds.Drive, ds.Busy, ds.Rate, ds.Started)
		}
	}
	a, b := poolCarts("alpha"), poolCarts("beta")
	if len(a) != 1 || len(b) != 1 || a[0] == b[0] {
		t.Fatalf("cartridges written: alpha %v, beta %v", a, b)
	}
	checkPhysical(t, v, lab)

	// Drive 1 fails after a few blocks while drive 2 writes.
	seqs = backup("pc-1", "pc-2")
	rendezvous(t, lab, nil, 1, 2)
	lab.tapes[1].FailWritesAfter(3)
	view = runJob(t, v, tape.KindTape)
	if view.State != jobs.Failed || !strings.Contains(view.Error, "pool alpha (drive 1)") || strings.Contains(view.Error, "beta") {
		t.Fatalf("job with drive 1 failing: %s %q", view.State, view.Error)
	}
	json.Unmarshal(view.Result, &jr)
	if onTape("pc-1", seqs["pc-1"]) || !onTape("pc-2", seqs["pc-2"]) || jr.Left != 1 {
		t.Fatalf("after drive 1 failed: pc-1 on tape %v (want false), pc-2 on tape %v (want true), %d left",
			onTape("pc-1", seqs["pc-1"]), onTape("pc-2", seqs["pc-2"]), jr.Left)
	}
	if st := v.Tape.Status(); !strings.Contains(st.Drives[0].Error, "hardware error") || st.Drives[1].Error != "" {
		t.Fatalf("drives' status after drive 1 failed: %+v", st.Drives)
	}
	for _, bc := range append(a, b...) {
		if where, _ := lab.emu.Where(bc); where < 1024 {
			t.Fatalf("%s is at element %d after the job, want back in a slot", bc, where)
		}
		cr, _ := v.Catalog.Cartridge(bc)
		if where, _ := lab.emu.Where(bc); cr.Where != catalog.WhereSlot || cr.Addr != where {
			t.Fatalf("the catalog has %s in %s %d, the library at %d", bc, cr.Where, cr.Addr, where)
		}
	}
	checkPhysical(t, v, lab)

	// The next job completes pool alpha.
	lab.tapes[1].OnWrite, lab.tapes[2].OnWrite = nil, nil
	view = runJob(t, v, tape.KindTape)
	if view.State != jobs.Done || !onTape("pc-1", seqs["pc-1"]) {
		t.Fatalf("job after the failure: %s %q", view.State, view.Error)
	}
	checkPhysical(t, v, lab)
}

// runJobTicking runs a job while the fake clock moves on (a second per
// millisecond), for waits on the vault's clock such as a drive's cleaning.
func runJobTicking(t *testing.T, v *Vault, clk *clock.Fake, kind jobs.Kind) jobs.View {
	t.Helper()
	defer ticking(clk)()
	return runJob(t, v, kind)
}

// ticking moves the fake clock on (a second per millisecond) until the
// function it returns is called.
func ticking(clk *clock.Fake) func() {
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				clk.Advance(time.Second)
			}
		}
	}()
	return func() { close(stop); <-done }
}

// TestTapeCleaningOnTapeAlert: a drive raising "clean now" after a job is
// cleaned with the library's cleaning cartridge (moved in, waited for
// until the drive ejected it, moved back to its slot, where the library
// and then the catalog show it), its use counted; an expired cleaning
// cartridge is refused by the drive, marked expired and reported; with
// none left the job reports that the drive needs cleaning; operators get
// the tape events by mail, company users do not.
func TestTapeCleaningOnTapeAlert(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC))
	lab := newTapeLab(t, 1<<30, 1<<29, "TAPE01L5", "TAPE02L5", "", "CLN001L1")
	lab.emu.CleaningLife = 2
	lab.tapes[1].CleaningTURs = 4
	v := openTapeVaultClock(t, t.TempDir(), lab, nil, clk)
	if err := v.NewCompany("acme"); err != nil {
		t.Fatal(err)
	}
	for _, u := range []struct {
		req  UserRequest
		mail string
	}{{UserRequest{Name: "op", Kind: catalog.UserOperator, Caps: []string{"operate"}}, "op@provider.example"},
		{UserRequest{Name: "ann", Company: "acme"}, "ann@acme.example"}} {
		u.req.Password = "password-of-" + u.req.Name
		if _, err := v.AddUser(ctx, operator, u.req); err != nil {
			t.Fatal(err)
		}
		if _, err := v.SetUserMail(ctx, operator, u.req.Name, MailPrefs{Email: u.mail}); err != nil {
			t.Fatal(err)
		}
	}
	notify(t, v)
	a := newGCAgent(t, v, "acme", "pc-1")
	tapeOp(t, v, TapeRequest{Op: "pool", PoolSpec: &catalog.TapePool{Name: "daily", Allocation: catalog.AllocContinue}})
	tapeOp(t, v, TapeRequest{Op: "cover", Cover: &catalog.TapeCover{Company: "acme", Pool: "daily"}})
	job := func(flag int) tape.JobResult {
		t.Helper()
		if _, err := a.backup(ctx, randomFiles(2, 50<<10)); err != nil {
			t.Fatal(err)
		}
		lab.tapes[1].SetAlert(flag)
		view := runJobTicking(t, v, clk, tape.KindTape)
		if view.State != jobs.Done {
			t.Fatalf("tape job: %s %s", view.State, view.Error)
		}
		var jr tape.JobResult
		json.Unmarshal(view.Result, &jr)
		return jr
	}
	slot, _ := lab.emu.Where("CLN001L1")
	home := func() catalog.Cartridge {
		t.Helper()
		cr, _ := v.Catalog.Cartridge("CLN001L1")
		if where, _ := lab.emu.Where("CLN001L1"); where != slot || cr.Where != catalog.WhereSlot || cr.Addr != slot {
			t.Fatalf("CLN001L1 is at %d in the library, %s %d in the catalog: want back in slot %d", where, cr.Where, cr.Addr, slot)
		}
		return cr
	}

	// "Clean now": cleaned after the job, the flag gone.
	jr := job(tape.AlertCleanNow)
	if len(jr.Cleaning) != 1 || !strings.Contains(jr.Cleaning[0], "drive 1 cleaned with CLN001L1 (use 1)") {
		t.Fatalf("cleaning after the job: %q (alerts %q)", jr.Cleaning, jr.Alerts)
	}
	if lab.emu.CleaningUses("CLN001L1") != 1 {
		t.Fatalf("the drive was cleaned %d times", lab.emu.CleaningUses("CLN001L1"))
	}
	if cr := home(); cr.Cleanings != 1 || cr.Expired || cr.LastCleaned.IsZero() {
		t.Fatalf("CLN001L1 after one cleaning: %+v", cr)
	}
	if st := v.Tape.Status(); len(st.Drives[0].Alerts) != 0 || st.Drives[0].Barcode != "" {
		t.Fatalf("drive 1 after cleaning: %+v", st.Drives[0])
	}
	notify(t, v)
	if body := mailTo(t, v, "op@provider.example", EventTape); !strings.Contains(body, "drive 1 cleaned with CLN001L1") {
		t.Fatalf("tape mail to the operator: %s", body)
	}

	// A failed scan reads every drive's flags too: drive 2 asks for a
	// cleaning and gets it.
	lab.tapes[2].SetAlert(tape.AlertCleanNow)
	stop := ticking(clk)
	_, err := v.TapeOp(ctx, operator, TapeRequest{Op: "scan", Barcode: "NOSUCH01"})
	stop()
	if err == nil {
		t.Fatal("scan of a cartridge not in the library succeeded")
	}
	if st := v.Tape.Status(); fmt.Sprint(st.Cleaning) != "[drive 2 cleaned with CLN001L1 (use 2)]" || len(st.Drives[1].Alerts) != 0 {
		t.Fatalf("after the failed scan: cleaning %q, drive 2 %+v", st.Cleaning, st.Drives[1])
	}
	home()

	// "Clean periodic" with an expired cleaning cartridge: the drive
	// refuses it; it is back in its slot, marked expired, not counted.
	jr = job(tape.AlertCleanPeriodic)
	if len(jr.Cleaning) != 1 || !strings.Contains(jr.Cleaning[0], "CLN001L1 is expired") {
		t.Fatalf("cleaning with an expired cartridge: %q", jr.Cleaning)
	}
	if cr := home(); cr.Cleanings != 2 || !cr.Expired {
		t.Fatalf("CLN001L1 after the refused cleaning: %+v", cr)
	}

	// None left: the job says the drive needs cleaning and why.
	lab.tapes[1].ClearAlert(tape.AlertExpiredCleaning)
	jr = job(tape.AlertCleanNow)
	if len(jr.Cleaning) != 1 || !strings.Contains(jr.Cleaning[0], "drive 1 needs cleaning") || !strings.Contains(jr.Cleaning[0], "CLN001L1] expired") {
		t.Fatalf("cleaning without a usable cartridge: %q", jr.Cleaning)
	}
	home()
	if _, err := v.TapeOp(ctx, operator, TapeRequest{Op: "clean", Drive: 1}); err == nil || !strings.Contains(err.Error(), "no usable cleaning cartridge") {
		t.Fatalf("vaultctl tape clean without a usable cartridge: %v", err)
	}
	notify(t, v)
	got := outbox(t, v)
	if countPrefix(got["op@provider.example"], "tape: ") < 2 || countPrefix(got["ann@acme.example"], "tape: ") != 0 {
		t.Fatalf("tape mail: %v", got)
	}
}
