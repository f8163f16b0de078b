package hwtest

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// tapeLab is a booted appliance with tgt's virtual library attached.
type tapeLab struct {
	t         testing.TB
	ctx       context.Context
	lib       *Library
	vm        *VM
	sh        func(string) string
	vaultPort int
}

// probe runs tapeprobe in the guest and returns its output; failed checks
// fail the test unless allowFail.
func (l *tapeLab) probe(allowFail bool, args ...string) string {
	l.t.Helper()
	out := l.sh("tapeprobe " + strings.Join(args, " "))
	if !strings.Contains(out, "TAPEPROBE-DONE") {
		l.t.Fatalf("tapeprobe %s did not finish:\n%s", strings.Join(args, " "), out)
	}
	if !allowFail && (strings.Contains(out, "TAPEPROBE FAIL") || !strings.Contains(out, " fail=0")) {
		l.t.Fatalf("tapeprobe %s:\n%s", strings.Join(args, " "), out)
	}
	return out
}

var driveLineRE = regexp.MustCompile(`drive element (\d+) = (/dev/sg\d+) \(\S+ \S+ serial (\S+)\) tape (/dev/nst\d+)`)

type guestDrive struct{ sg, serial, nst string }

func drivesOf(out string) map[string]guestDrive {
	m := map[string]guestDrive{}
	for _, sm := range driveLineRE.FindAllStringSubmatch(out, -1) {
		m[sm[1]] = guestDrive{sg: sm[2], serial: sm[3], nst: sm[4]}
	}
	return m
}

// startTapeLab boots the appliance with cfg's library; appendArgs go on
// the kernel command line.
func startTapeLab(ctx context.Context, t testing.TB, cfg LibraryConfig, appendArgs ...string) *tapeLab {
	t.Helper()
	lib, err := StartLibrary(ctx, cfg, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lib.Stop(context.Background()); err != nil {
			t.Errorf("tape library: %v", err)
		}
		lib.Close()
	})
	dir := t.TempDir()
	disks := []Disk{{Serial: "system", Path: filepath.Join(dir, "system.img"), Size: 64 << 20},
		{Serial: "data1", Path: filepath.Join(dir, "data1.img"), Size: 512 << 20}}
	vaultPort, err := FreePort()
	must(t, err)
	vm, err := Boot(ctx, Options{Kernel: image.Kernel, Initramfs: image.Initramfs, Dir: dir, Disks: disks,
		Append: strings.Join(appendArgs, " "), Forward: map[int]int{7443: vaultPort}, Extra: lib.QEMUArgs(), Log: func(s string) { t.Log("console: " + s) }}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !vm.Exited() {
			vm.Kill()
		}
	})
	for _, s := range []struct{ prompt, answer string }{
		{"Hostname [vaultnode]: ", "tape-vault"},
		{"Network: dhcp or static [dhcp]: ", "dhcp"},
		{"or join (a pair) [standalone]: ", ""},
		{"Admin password (at least 8 characters): ", "test-password"},
		{"Admin password again: ", "test-password"},
		{"[UTC]: ", ""},
		{"[pool.ntp.org]: ", ""},
		{"[vdb]: ", "vdb"},
		{"(yes/no) [yes]: ", "yes"},
	} {
		if _, err := vm.Expect(ctx, s.prompt); err != nil {
			t.Fatalf("setup dialog: %v\n%s", err, vm.Console())
		}
		must(t, vm.Send(s.answer))
	}
	waitReady(ctx, t, vm)
	shell(ctx, t, vm) // logs in to the support shell
	l := &tapeLab{t: t, ctx: ctx, lib: lib, vm: vm, vaultPort: vaultPort}
	// Commands fail the running subtest (l.t), never a parent.
	l.sh = func(cmd string) string {
		l.t.Helper()
		must(l.t, vm.Send(cmd))
		out, err := vm.Expect(ctx, "# ")
		if err != nil {
			l.t.Fatalf("%s: %v\n%s", cmd, err, vm.Since())
		}
		return out
	}
	return l
}

// TestTapeLibrary boots the appliance once with tgt's virtual library (2
// drives, 8 slots, an import/export slot) and drives it over real SG_IO:
// discovery by serial number, the drive's commands, a cartridge read back
// by hand with mt and tar, the import/export slot, and tgtd killed in the
// middle of a write.
func TestTapeLibrary(t *testing.T) {
	needQEMU(t)
	if !hasFile("bin/mt") || !hasFile("bin/tar") {
		t.Fatal("the test image has no mt or tar: apt-get install mt-st tar (.ci/run installs them)")
	}
	// A guard against a hung guest: the boot and the setup dialog alone took 7
	// minutes at a load of 50 on this 2-core machine.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cfg := LibraryConfig{
		Drives: []string{"VNDRV0A", "VNDRV0B"},
		Slots:  8,
		IE:     1,
	}
	for i := 1; i <= 6; i++ {
		cfg.Cartridges = append(cfg.Cartridges, Cartridge{Barcode: fmt.Sprintf("TAPE%02dL5", i), SizeMB: 64})
	}
	l := startTapeLab(ctx, t, cfg)

	var drives map[string]guestDrive
	t.Run("discovery pairs drives by serial number, not device order", func(t *testing.T) {
		l.t = t
		out := l.probe(false, "scan")
		drives = drivesOf(out)
		if drives["1"].serial != "VNDRV0A" || drives["2"].serial != "VNDRV0B" {
			t.Fatalf("drive elements paired wrongly: %+v\n%s", drives, out)
		}
		// The drives sit at LUNs in the opposite order of their bays:
		// pairing by device order would have swapped them.
		if drives["1"].sg <= drives["2"].sg {
			t.Errorf("the lab did not reverse the device order: %+v", drives)
		}
		if !strings.Contains(out, "drive element 3 unmatched") {
			t.Errorf("the empty drive bay is not reported unmatched:\n%s", out)
		}
		for i := 1; i <= 6; i++ {
			if !strings.Contains(out, fmt.Sprintf("slot %d [TAPE%02dL5]", 1023+i, i)) {
				t.Errorf("slot %d lacks TAPE%02dL5:\n%s", 1023+i, i, out)
			}
		}
	})
	if t.Failed() {
		return
	}

	t.Run("drive over SG_IO: variable blocks, filemarks, space, sense, both drives", func(t *testing.T) {
		l.t = t
		out := l.probe(false, "selftest", "TAPE01L5")
		for _, want := range []string{"medium not present", "READ POSITION", "LOCATE: "} {
			if !strings.Contains(out, want) {
				t.Errorf("selftest output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("a command interrupted by signals runs once: no block written twice or skipped", func(t *testing.T) {
		l.t = t
		const n = 48
		out := l.probe(true, "sigstorm", "TAPE05L5", "1", fmt.Sprint(n))
		// What tgt put on the media file, read on the host: every block
		// once, in order, then the filemark.
		blocks, err := ReadMedia(filepath.Join(l.lib.Dir, "TAPE05L5"))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, b := range blocks {
			switch b.Type {
			case mediaData:
				got = append(got, fmt.Sprint(mediaBlockIndex(t, l.lib.Dir, "TAPE05L5", b)))
			case mediaFilemark:
				got = append(got, "filemark")
			}
		}
		var want []string
		for i := 0; i < n; i++ {
			want = append(want, fmt.Sprint(i))
		}
		want = append(want, "filemark")
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("on the media file: blocks %s\nwant %s", strings.Join(got, " "), strings.Join(want, " "))
		}
		if strings.Contains(out, "TAPEPROBE FAIL") {
			t.Errorf("in the guest:\n%s", out)
		}
	})

	t.Run("a cartridge read back by hand with mt and tar", func(t *testing.T) {
		l.t = t
		l.probe(false, "write", "TAPE02L5", "/lib")
		l.probe(false, "load", "TAPE02L5", "1")
		nst := drives["1"].nst
		for _, c := range []string{"mt -f " + nst + " rewind", "mt -f " + nst + " setblk 0", "mt -f " + nst + " fsf 1"} {
			// The shell reports a failure as "mt: exit status N"; a bare
			// "exit status" may be a service's line on the same console.
			if out := l.sh(c); strings.Contains(out, "mt:") {
				t.Fatalf("%s: %s", c, out)
			}
		}
		l.sh("cd /tmp")
		if out := l.sh("tar -x -b 512 -f " + nst + " -C /tmp --one-top-level=byhand"); strings.Contains(out, "tar: ") {
			// Say which files came back damaged before failing.
			t.Fatalf("tar: %s\n%s", out, l.probe(true, "compare", "/lib", "/tmp/byhand"))
		}
		l.probe(false, "compare", "/lib", "/tmp/byhand")
		l.probe(false, "unload", "1")
	})

	t.Run("a cartridge out through the import/export slot and back", func(t *testing.T) {
		l.t = t
		out := l.probe(false, "export", "TAPE03L5")
		if !strings.Contains(out, "import/export 32 [TAPE03L5]") {
			t.Fatalf("not in the import/export slot:\n%s", out)
		}
		must(t, l.lib.TakeOut(ctx, VTLIEBase))
		out = l.probe(false, "scan")
		if strings.Contains(out, "TAPE03L5") {
			t.Fatalf("the cartridge taken out is still in the inventory:\n%s", out)
		}
		must(t, l.lib.PutIn(ctx, VTLIEBase, "TAPE03L5"))
		l.probe(false, "import", fmt.Sprint(VTLIEBase))
		out = l.probe(false, "scan")
		if !strings.Contains(out, "slot 1026 [TAPE03L5]") || strings.Contains(out, "import/export 32 [") {
			t.Fatalf("after the import TAPE03L5 is not in the first empty slot:\n%s", out)
		}
	})

	t.Run("tgtd killed in the middle of a write: the write fails cleanly, closed files intact, the next write resumes", func(t *testing.T) {
		l.t = t
		must(t, l.vm.Send("tapeprobe stream TAPE04L5 1 56"))
		if _, err := l.vm.Expect(ctx, "TAPEPROBE STREAMING"); err != nil {
			t.Fatalf("%v\n%s", err, l.vm.Since())
		}
		// Kill once the cartridge's media file shows the second tape file
		// well under way (8 of its 56 MiB).
		media := filepath.Join(l.lib.Dir, "TAPE04L5")
		for {
			if st, err := os.Stat(media); err == nil && st.Size() > 8<<20 {
				break
			}
			if ctx.Err() != nil {
				t.Fatal("the stream never reached 8 MiB")
			}
			time.Sleep(5 * time.Millisecond)
		}
		l.lib.Kill()
		t.Log("tgtd killed while the drive was writing")
		time.Sleep(2 * time.Second)
		must(t, l.lib.Start(ctx))
		out, err := l.vm.Expect(ctx, "TAPEPROBE-DONE")
		if err != nil {
			t.Fatalf("%v\n%s", err, l.vm.Since())
		}
		if !strings.Contains(out, "TAPEPROBE FAIL tape file 1 (expected to fail)") {
			t.Fatalf("the write did not fail after tgtd was killed:\n%s", out)
		}
		if _, err := l.vm.Expect(ctx, "# "); err != nil {
			t.Fatal(err)
		}
		// The library came back with every cartridge in its home slot: the
		// inventory says so, and what was closed before the kill is there.
		out = l.probe(false, "scan")
		if !strings.Contains(out, "slot 1027 [TAPE04L5]") {
			t.Errorf("after the restart TAPE04L5 is not home:\n%s", out)
		}
		l.probe(false, "resume", "TAPE04L5", "2")
	})
}

// mediaBlockIndex returns the number a numbered block (tapeprobe's soak
// and sigstorm) carries in its first 8 bytes, read from the media file.
func mediaBlockIndex(t testing.TB, dir, barcode string, b MediaBlock) uint64 {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, barcode))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var h [8]byte
	if _, err := f.ReadAt(h[:], b.Offset); err != nil {
		t.Fatal(err)
	}
	return binary.BigEndian.Uint64(h[:])
}
