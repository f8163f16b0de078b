package hwtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// vaultctl runs vaultctl in the guest.
func (l *tapeLab) vaultctl(args string) string {
	l.t.Helper()
	return l.sh("vaultctl -data /data/vault " + args)
}

// mediaBytes is the size of every cartridge's media file on the host.
func (l *tapeLab) mediaBytes() int64 {
	var n int64
	for _, c := range l.lib.Config.Cartridges {
		if st, err := os.Stat(filepath.Join(l.lib.Dir, c.Barcode)); err == nil {
			n += st.Size()
		}
	}
	return n
}

// writeRandom writes n files of size bytes of random data under dir/sub.
func writeRandom(t testing.TB, r *rand.Rand, dir, sub string, n, size int) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Join(dir, sub), 0o755))
	for i := 0; i < n; i++ {
		b := make([]byte, size)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		must(t, os.WriteFile(filepath.Join(dir, sub, fmt.Sprintf("f%02d.bin", i)), b, 0o644))
	}
}

var (
	tapeRunRE = regexp.MustCompile(`(\d+) versions, (\d+) files, .* written to (.*)`)
	sumRE     = regexp.MustCompile(`TAPEPROBE SUM ([0-9a-f]{64}) (.*)`)
)

// TestTapeJob boots the appliance once with tgt's library and runs the
// product end to end: an agent on the host backs up three versions, the
// daily tape job is killed with tgtd in the middle of its write (it fails
// cleanly, and records only what is on tape), the next job completes
// spanning two cartridges, prune and collection remove a version from the
// disk, it is restored from tape and compared byte for byte, and a
// cartridge is read in the guest with mt, tar and the recovery program
// from its first file alone.
func TestTapeJob(t *testing.T) {
	needQEMU(t)
	if !hasFile("bin/vaultd") || !hasFile("bin/vault-tape-recover") || !hasFile("bin/mt") {
		t.Fatalf("the image lacks vaultd, vault-tape-recover or mt (left out: %v)", image.Skipped)
	}
	// A guard against a hung guest: at a load of 45 on this 2-core machine
	// the whole test took 10 minutes (about 2 at a load of 10).
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cfg := LibraryConfig{Drives: []string{"VNDRV0A", "VNDRV0B"}, Slots: 8, IE: 1}
	// TAPE01L5 is small, so a job fills it and continues on TAPE02L5.
	cfg.Cartridges = append(cfg.Cartridges, Cartridge{Barcode: "TAPE01L5", SizeMB: 9})
	for i := 2; i <= 4; i++ {
		cfg.Cartridges = append(cfg.Cartridges, Cartridge{Barcode: fmt.Sprintf("TAPE%02dL5", i), SizeMB: 64})
	}
	l := startTapeLab(ctx, t, cfg)
	if _, err := l.vm.Expect(ctx, "*** service vaultd healthy"); err != nil {
		t.Fatalf("%v\n%s", err, l.vm.Console())
	}
	fail := func(format string, args ...any) { // on the running subtest's t (l.t), never a parent's
		l.t.Helper()
		c := l.vm.Console()
		if len(c) > 8000 {
			c = c[len(c)-8000:]
		}
		l.t.Fatalf(format+"\nconsole (tail):\n%s", append(args, c)...)
	}
	ag, pc, src := l.enroll(ctx, fail)
	r := rand.New(rand.NewPCG(1, 2))
	trees := map[string]map[string]string{} // version -> tree
	var seqs []string
	for i := 1; i <= 3; i++ {
		if i == 3 {
			// Version 2's own data leaves the tree: once version 2 is
			// pruned, collection removes it from the disk, and only the
			// tape has it.
			must(t, os.RemoveAll(filepath.Join(src, "v2")))
		}
		writeRandom(t, r, src, fmt.Sprintf("v%d", i), 6, 512<<10) // 3 MiB of new data a version
		seqs = append(seqs, l.backup(ctx, ag))
		trees[seqs[len(seqs)-1]] = treeState(t, src)
	}
	for _, c := range []string{"tape pool daily", "tape enable acme daily", `retention acme "last 1"`} {
		if out := l.vaultctl(c); strings.Contains(out, "vaultctl: ") {
			fail("vaultctl %s: %s", c, out)
		}
	}

	t.Run("tgtd killed in the middle of the tape job: the job fails, records only what is on tape", func(t *testing.T) {
		l.t = t
		base := l.mediaBytes()
		must(t, l.vm.Send("vaultctl -data /data/vault tape run"))
		for l.mediaBytes() < base+6<<20 { // the label (4 MiB of recovery program) and 2 MiB of data
			if ctx.Err() != nil {
				fail("the tape job never wrote 6 MiB")
			}
			time.Sleep(5 * time.Millisecond)
		}
		l.lib.Kill()
		t.Logf("tgtd killed after %d MiB written", (l.mediaBytes()-base)>>20)
		time.Sleep(2 * time.Second)
		must(t, l.lib.Start(ctx))
		out, err := l.vm.Expect(ctx, "# ")
		if err != nil {
			fail("%v", err)
		}
		t.Logf("the job said:\n%s", out)
		if !strings.Contains(out, "tape job") || !strings.Contains(out, "failed") {
			t.Fatalf("the tape job did not fail although tgtd was killed:\n%s", out)
		}
		// Nothing closed by a filemark: nothing is on tape, and the
		// cartridge is back in its slot, labelled, holding no file.
		for _, seq := range seqs {
			if out := l.vaultctl("tape needs " + pc + " data " + seq); !strings.Contains(out, "not on tape") {
				t.Errorf("after the failed job the catalog says data@%s is on tape: %s", seq, out)
			}
		}
		inv := l.vaultctl("tape inventory")
		if !regexp.MustCompile(`TAPE01L5\s+writable\s+daily\s+-\s+0\s+0 B\s+slot 1024`).MatchString(inv) {
			t.Errorf("after the failed job TAPE01L5 is not home and empty in the catalog:\n%s", inv)
		}
	})
	if t.Failed() {
		return
	}

	var written []string
	t.Run("the next job completes, spanning two cartridges", func(t *testing.T) {
		l.t = t
		out := l.vaultctl("tape run")
		sm := tapeRunRE.FindStringSubmatch(out)
		if sm == nil {
			fail("tape run: %s", out)
		}
		written = strings.Split(strings.TrimSpace(sm[3]), ", ")
		t.Logf("tape run: %s", sm[0])
		if len(written) < 2 {
			t.Errorf("the job fit one cartridge (%v): it does not span", written)
		}
		for _, seq := range seqs {
			if out := l.vaultctl("tape needs " + pc + " data " + seq); !strings.Contains(out, "TAPE") {
				t.Errorf("data@%s is not on tape: %s", seq, out)
			}
		}
		// The console's status screen has a line per drive: the one the
		// job used says what it wrote and at what rate.
		if out := l.sh("status"); !regexp.MustCompile(`\n  drive \d+: idle.*, last job wrote \d+ MiB at [0-9.]+ MiB/s`).MatchString(out) {
			t.Errorf("the console's status screen has no line of the drive the job used:\n%s", out)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("a version pruned from disk comes back from tape identical, its cartridge taken out and put back first", func(t *testing.T) {
		l.t = t
		ag.t = t
		mid := seqs[1]
		t.Log(l.vaultctl("prune"))
		out := l.vaultctl("collect")
		if sm := regexp.MustCompile(`chunks swept \((\d+) bytes\)`).FindStringSubmatch(out); sm == nil || mustUint(t, sm[1]) < 3<<20 {
			t.Fatalf("collection did not remove version %s's 3 MiB from the disk: %s", mid, out)
		}
		if out, _ := ag.run(ctx, "versions", "data"); strings.Contains(out, "data@"+mid+" ") || strings.Contains(out, "data@"+mid+"\n") {
			t.Fatalf("data@%s is still on the disk after prune and collect:\n%s", mid, out)
		}
		// The cartridge it needs goes off site through the import/export
		// slot; the restore says which to bring back, and works once it is
		// imported again.
		// One of the cartridges the version needs (where the job's span
		// falls depends on the drive's early warning), the last one listed.
		needs := regexp.MustCompile(`TAPE\d\dL5`).FindAllString(l.vaultctl("tape needs "+pc+" data "+mid), -1)
		if len(needs) == 0 {
			fail("tape needs names no cartridge for data@%s", mid)
		}
		bc := needs[len(needs)-1]
		if out := l.vaultctl("tape export " + bc); !strings.Contains(out, "import/export 32 ["+bc+"]") {
			fail("tape export: %s", out)
		}
		must(t, l.lib.TakeOut(ctx, VTLIEBase))
		if out := l.vaultctl("tape inventory"); strings.Contains(out, "["+bc+"]") {
			t.Errorf("the inventory still shows %s taken out of the library:\n%s", bc, out)
		}
		if out := l.vaultctl("tape restore " + pc + " data " + mid); !strings.Contains(out, bc) || !strings.Contains(out, "import") {
			t.Errorf("a restore needing the cartridge taken out does not ask for it: %s", out)
		}
		must(t, l.lib.PutIn(ctx, VTLIEBase, bc))
		if out := l.vaultctl("tape import"); strings.Contains(out, "vaultctl: ") {
			fail("tape import: %s", out)
		}
		out = l.vaultctl("tape restore " + pc + " data " + mid)
		if !strings.Contains(out, "restored from") {
			fail("tape restore: %s", out)
		}
		ag.restoreCompare(ctx, mustUint(t, mid), src, trees[mid])
	})

	t.Run("a cartridge read by hand: mt, tar and the recovery program from its first file", func(t *testing.T) {
		l.t = t
		out := l.probe(false, "scan")
		nst := drivesOf(out)["1"].nst
		l.probe(false, "capture", "/tmp/acme.key", "vaultctl", "-data", "/data/vault", "company", "export-key", "-no-qr", "acme")
		for ci, bc := range written {
			if out := l.vaultctl("tape load " + bc + " 1"); strings.Contains(out, "vaultctl: ") {
				fail("tape load %s: %s", bc, out)
			}
			l.sh("mt -f " + nst + " rewind")
			l.sh("mt -f " + nst + " setblk 0")
			if ci == 0 {
				out := l.sh("tar -x -b 512 -f " + nst + " -C /tmp --one-top-level=rec")
				if strings.Contains(out, "tar: ") { // tar's messages, or the shell's "tar: exit status N"
					fail("tar of file 0: %s", out)
				}
			}
			for n := 1; n < 20; n++ {
				out := l.sh(fmt.Sprintf("mt -f %s asf %d", nst, n))
				if strings.Contains(out, "mt:") {
					break
				}
				out = l.sh("tar -x -b 512 -f " + nst + " -C /tmp/rec --one-top-level=data")
				if strings.Contains(out, "tar: ") { // tar's messages, or the shell's "tar: exit status N"
					break
				}
				t.Logf("%s: tape file %d extracted", bc, n)
			}
			if out := l.vaultctl("tape unload 1"); strings.Contains(out, "vaultctl: ") {
				fail("tape unload: %s", out)
			}
		}
		last := seqs[2]
		t.Log(l.sh("/tmp/rec/vault-tape-recover list -from /tmp/rec/data"))
		out = l.sh("/tmp/rec/vault-tape-recover restore -key /tmp/acme.key -from /tmp/rec/data -version acme/" + pc + "/data/" + last + " -to /tmp/rec/out")
		if !strings.Contains(out, "objects restored") || strings.Contains(out, "vault-tape-recover: ") {
			fail("vault-tape-recover: %s", out)
		}
		got := map[string]string{}
		for _, sm := range sumRE.FindAllStringSubmatch(l.probe(false, "sums", "/tmp/rec/out"), -1) {
			rel := strings.TrimPrefix("/"+strings.TrimSpace(sm[2]), src+"/")
			got[rel] = sm[1]
		}
		n := 0
		for p, w := range trees[last] {
			if !strings.HasPrefix(w, "file ") {
				continue
			}
			n++
			if !strings.HasSuffix(w, got[p]) || got[p] == "" {
				t.Errorf("%s: recovered by hand %q, want %s", p, got[p], w)
			}
		}
		if n == 0 || len(got) != n {
			t.Errorf("recovered %d files by hand, the version has %d", len(got), n)
		}
	})

	// The job ended its last cartridge with a catalog file: a scan finds it
	// by SPACE to the end of data and back over two filemarks on tgt's
	// drive, and rebuilds the cartridge's records from it alone.
	t.Run("a scan rebuilds the last cartridge's records from its catalog file", func(t *testing.T) {
		l.t = t
		bc := written[len(written)-1]
		out := l.vaultctl("tape scan " + bc)
		if !strings.Contains(out, "records: read from the catalog file") || strings.Contains(out, "vaultctl: ") {
			fail("tape scan %s: %s", bc, out)
		}
		if m := regexp.MustCompile(`: (\d+) files, (\d+) versions`).FindStringSubmatch(out); m == nil || m[1] == "0" {
			t.Errorf("tape scan %s recorded no files: %s", bc, out)
		}
		t.Logf("tape scan: %s", out)
	})
}

// enroll makes company acme in the vault, enrolls an agent on the host as
// pc1 with configuration "data" and returns it, the computer's id and the
// protected directory.
func (l *tapeLab) enroll(ctx context.Context, fail func(string, ...any)) (agent, string, string) {
	t := l.t
	if out := l.vaultctl("company create acme"); !strings.Contains(out, "acme") {
		fail("company create: %s", out)
	}
	token := tokenRE.FindString(l.vaultctl("token create acme"))
	ag := agent{t: t, state: filepath.Join(t.TempDir(), "agent"), bin: buildAgent(t)}
	if _, err := ag.run(ctx, "enroll", "-vault", fmt.Sprintf("127.0.0.1:%d", l.vaultPort), "-token", token, "-name", "pc1"); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	src := filepath.Join(t.TempDir(), "data")
	if _, err := ag.run(ctx, "config", "set", "data", "-path", src); err != nil {
		t.Fatalf("config set: %v", err)
	}
	// The vault names the computer by its id (first column of `computers`).
	idRE := regexp.MustCompile(`(?m)^(\S+)\s+pc1\s+acme\s`)
	sm := idRE.FindStringSubmatch(l.vaultctl("computers acme"))
	if sm == nil {
		fail("no computer pc1 in vaultctl computers")
	}
	pc := sm[1]
	return ag, pc, src
}

// backup backs up "data" and returns the version's number.
func (l *tapeLab) backup(ctx context.Context, ag agent) string {
	l.t.Helper()
	if _, err := ag.run(ctx, "backup", "data"); err != nil {
		l.t.Fatalf("backup: %v", err)
	}
	out, _ := ag.run(ctx, "versions", "data")
	all := dataVersionRE.FindAllStringSubmatch(out, -1)
	if len(all) == 0 {
		l.t.Fatalf("no version listed: %s", out)
	}
	return all[len(all)-1][1]
}

func mustUint(t testing.TB, s string) uint64 {
	t.Helper()
	var v uint64
	if _, err := fmt.Sscan(s, &v); err != nil {
		t.Fatal(err)
	}
	return v
}
