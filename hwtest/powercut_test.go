package hwtest

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// powerCuts is how many times TestPowerCutVolatileCache cuts the power:
// VAULTNODE_POWERCUTS, 4 by default (`make test`); `make soak` asks for 30.
func powerCuts(t *testing.T) int {
	s := os.Getenv("VAULTNODE_POWERCUTS")
	if s == "" {
		return 4
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("VAULTNODE_POWERCUTS=%q: want a positive number", s)
	}
	return n
}

// TestPowerCutVolatileCache puts the vault's data filesystem on a disk
// with a volatile write cache (the NBD server of nbd_test.go behind QEMU's
// NBD client, cache=writeback, so the guest's flushes reach it) and cuts
// the power at random instants while an agent on the host backs up in a
// loop. At each cut the writes not flushed are lost, all of them or a
// random subset (a disk reorders its cache). After each cut the appliance
// boots on what survived: vaultd starts, verify is clean (it checks every
// version's data), every version whose backup was acknowledged (exit 0)
// is listed, and the newest of them and a few others restore identical.
// A missing or misordered fsync in the vault loses an acknowledged
// version or damages the store here, which cache=unsafe never shows.
func TestPowerCutVolatileCache(t *testing.T) {
	needQEMU(t)
	if !hasFile("bin/vaultd") || !hasFile("bin/vaultctl") {
		t.Fatalf("the image has no vaultd/vaultctl (left out: %v)", image.Skipped)
	}
	cuts := powerCuts(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(cuts)*90*time.Second+5*time.Minute)
	defer cancel()
	seed := uint64(time.Now().UnixNano())
	t.Logf("power cuts seeded with %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 77))

	dir := t.TempDir()
	disk, err := openVolatileDisk(filepath.Join(dir, "data.img"), 512<<20)
	must(t, err)
	defer disk.close()
	a := &appliance{t: t, dir: dir, disks: []Disk{{Serial: "system", Path: filepath.Join(dir, "system.img"), Size: 64 << 20}}}
	if a.vaultPort, err = FreePort(); err != nil {
		t.Fatal(err)
	}
	if a.metricsPort, err = FreePort(); err != nil {
		t.Fatal(err)
	}

	var srv *nbdServer
	boots := 0
	boot := func() *VM {
		t.Helper()
		boots++
		sock := filepath.Join(dir, fmt.Sprintf("nbd%d.sock", boots))
		var err error
		if srv, err = serveNBD(sock, disk, t.Logf); err != nil {
			t.Fatal(err)
		}
		vm, err := Boot(ctx, Options{Kernel: image.Kernel, Initramfs: image.Initramfs, Dir: dir, Disks: a.disks,
			Forward: map[int]int{7443: a.vaultPort, 9100: a.metricsPort},
			Extra: []string{"-drive", "if=none,id=nd,driver=nbd,server.type=unix,server.path=" + sock + ",export=" + nbdExportName + ",cache=writeback",
				"-device", "virtio-blk-pci,drive=nd,id=disknbd,serial=data1"}}, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if !vm.Exited() {
				vm.Kill()
			}
		})
		return vm
	}
	// cut kills QEMU, then the disk loses what was not flushed.
	cut := func(vm *VM, keep float64) string {
		t.Helper()
		vm.Kill()
		srv.stop()
		writes, flushes, flushed := disk.counters()
		lost, kept, err := disk.powerCut(rnd, keep)
		must(t, err)
		if flushes == 0 {
			t.Fatalf("the guest sent %d writes and no flush during this boot: its flushes do not reach the disk, so the test proves nothing", writes)
		}
		return fmt.Sprintf("%d writes, %d flushes (%d MiB made durable); at the cut %d unflushed writes lost, %d kept", writes, flushes, flushed>>20, lost, kept)
	}
	fail := func(vm *VM, format string, args ...any) {
		t.Helper()
		c := vm.Console()
		if len(c) > 6000 {
			c = c[len(c)-6000:]
		}
		t.Fatalf(format+"\nconsole (tail):\n%s", append(args, c)...)
	}
	ready := func(vm *VM) {
		t.Helper()
		i, err := vm.ExpectAny(ctx, "*** service vaultd healthy", "BOOT FAILED", "*** service vaultd failed")
		if err != nil || i != 0 {
			var why []string
			if i == 2 { // the console still works: fetch vaultd's own words
				for _, l := range strings.Split(shell(ctx, t, vm)("init ctl logs"), "\n") {
					if strings.Contains(l, "vaultd") && !strings.Contains(l, "service started") {
						why = append(why, l)
					}
				}
			}
			fail(vm, "the vault did not come up on the disk that survived (%v); its log:\n%s", err, strings.Join(why[max(len(why)-15, 0):], "\n"))
		}
	}

	// First boot: set up with the NBD disk as the only data disk.
	start := time.Now()
	vm := boot()
	for _, s := range []struct{ prompt, answer string }{
		{"Hostname [vaultnode]: ", "cut-vault"},
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
			fail(vm, "setup dialog: %v", err)
		}
		must(t, vm.Send(s.answer))
	}
	ready(vm)
	sh := shell(ctx, t, vm)
	if out := sh("vaultctl -data /data/vault company create acme"); !strings.Contains(out, "acme") {
		fail(vm, "company create: %s", out)
	}
	token := tokenRE.FindString(sh("vaultctl -data /data/vault token create acme"))
	if token == "" {
		fail(vm, "no enrolment token printed")
	}
	ag := agent{t: t, state: filepath.Join(dir, "agent"), bin: buildAgent(t)}
	src := filepath.Join(dir, "src")
	tg := &cutTree{t: t, root: src, r: rand.New(rand.NewPCG(seed, 78))}
	tg.change(0)
	if _, err := ag.run(ctx, "enroll", "-vault", fmt.Sprintf("127.0.0.1:%d", a.vaultPort), "-token", token); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	if _, err := ag.run(ctx, "config", "set", "data", "-path", src); err != nil {
		t.Fatalf("config set: %v", err)
	}
	t.Logf("first boot and setup on the volatile disk took %v", time.Since(start).Round(time.Second))

	acked := map[uint64]map[string]string{} // version -> the tree it was taken from
	checked := map[uint64]bool{}
	round := 0
	for n := 1; ; n++ {
		// Back up in a loop; cut the power at a random instant, or (two
		// cuts in three) arm the disk at that instant to fail at once when
		// its cache next holds 1-4 unflushed writes.
		at := time.Duration(500+rnd.IntN(7500)) * time.Millisecond
		timer := time.NewTimer(at)
		armed := n%3 != 0
		var trip <-chan struct{}
		var fallback <-chan time.Time
		when := fmt.Sprintf("at %v into the backup loop", at)
		var done []uint64
		unacked := 0
		var interrupted map[string]string // the tree of the backup the cut interrupted
	backups:
		for {
			round++
			tg.change(round)
			want := tg.state()
			bctx, bcancel := context.WithCancel(ctx)
			res := make(chan cutBackup, 1)
			go func() { res <- ag.backupJSON(bctx) }() // owner: this loop, which always receives
			for waiting := true; waiting; {
				select {
				case r := <-res:
					bcancel()
					if r.err != nil {
						fail(vm, "backup %d before the cut failed: %v\n%s", round, r.err, r.out)
					}
					acked[r.version] = want
					done = append(done, r.version)
					waiting = false
					// A pause lets cuts land on an idle vault just after
					// its acknowledgement too.
					pause := time.NewTimer(time.Duration(rnd.IntN(1000)) * time.Millisecond)
					select {
					case <-pause.C:
					case <-timer.C:
						timer.Reset(0) // handled by the select above
					case <-trip:
						pause.Stop()
						vm.Kill()
						break backups
					}
					continue
				case <-timer.C:
					if armed {
						k := 1 + rnd.IntN(4)
						trip, fallback = disk.armCut(k), time.After(15*time.Second)
						when = fmt.Sprintf("when %d writes were unflushed, armed at %v into the backup loop", k, at)
						continue
					}
				case <-trip:
				case <-fallback:
					when += " (it never tripped: cut 15 s later)"
				}
				vm.Kill() // the power first, then the agent learns of it
				var r cutBackup
				select {
				case r = <-res:
				case <-time.After(30 * time.Second):
					bcancel() // an agent still waiting for a dead vault
					r = <-res
				}
				bcancel()
				if r.err == nil { // answered just before the power went
					acked[r.version] = want
					done = append(done, r.version)
				} else {
					unacked++
					interrupted = want
				}
				break backups
			}
		}
		how := "all unflushed writes lost"
		keep := 0.0
		if n%2 == 0 {
			keep, how = 0.5, "half of the unflushed writes kept, at random"
		}
		t.Logf("cut %d/%d %s (%d backups acknowledged: %v; %d interrupted); %s: %s",
			n, cuts, when, len(done), done, unacked, how, cut(vm, keep))

		// Boot on what survived and check.
		vm = boot()
		ready(vm)
		sh = shell(ctx, t, vm)
		if out := sh("vaultctl -data /data/vault verify"); !strings.Contains(out, ": 0 problems") {
			fail(vm, "verify after power cut %d: %s", n, out)
		}
		listed := ag.versions(ctx, "data")
		for v := range acked {
			if !listed[v] {
				fail(vm, "after power cut %d, data@%d is gone although its backup was acknowledged; the vault lists %v", n, v, listed)
			}
		}
		for v := range listed {
			if _, ok := acked[v]; ok {
				continue
			}
			// Committed by the interrupted backup, the answer lost with
			// the power: it must hold that backup's tree, and from now
			// on it must stay like any other.
			if interrupted == nil {
				fail(vm, "after power cut %d the vault lists data@%d, which no backup made", n, v)
			}
			t.Logf("data@%d was committed by the interrupted backup, its answer lost in the cut", v)
			acked[v], interrupted = interrupted, nil
		}
		// Restores through the emulated vault are slow: the newest
		// acknowledged version (the one a missing fsync loses first), up
		// to two more not restored yet and one restored before restore
		// identical; verify above checked every version's data.
		var fresh, old []uint64
		for _, v := range slices.Sorted(maps.Keys(acked)) {
			if checked[v] {
				old = append(old, v)
			} else {
				fresh = append(fresh, v)
			}
		}
		var pick []uint64
		if len(fresh) > 0 {
			pick = append(pick, fresh[len(fresh)-1])
			fresh = fresh[:len(fresh)-1]
		}
		rnd.Shuffle(len(fresh), func(i, j int) { fresh[i], fresh[j] = fresh[j], fresh[i] })
		rnd.Shuffle(len(old), func(i, j int) { old[i], old[j] = old[j], old[i] })
		pick = append(append(pick, fresh[:min(len(fresh), 2)]...), old[:min(len(old), 1)]...)
		for _, v := range pick {
			ag.restoreCompare(ctx, v, src, acked[v])
			checked[v] = true
		}
		t.Logf("after cut %d: verify clean, all %d acknowledged versions listed; restored identical: %v (%v since the start)",
			n, len(acked), pick, time.Since(start).Round(time.Second))
		if n == cuts {
			break
		}
	}
	must(t, vm.PowerButton(ctx))
	if _, err := vm.Expect(ctx, "VAULTNODE-HALT power off"); err != nil {
		fail(vm, "power off: %v", err)
	}
	must(t, vm.Wait(ctx))
	srv.stop()
	writes, flushes, _ := disk.counters()
	t.Logf("%d power cuts, %d acknowledged versions all present and verified; the last boot sent %d writes and %d flushes", cuts, len(acked), writes, flushes)
}

type cutBackup struct {
	version uint64
	out     string
	err     error
}

// backupJSON runs `backup -json data` and returns the version it committed.
func (ag agent) backupJSON(ctx context.Context) cutBackup {
	cmd := exec.CommandContext(ctx, ag.bin, "-state", ag.state, "backup", "-json", "data")
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	r := cutBackup{out: string(out), err: err}
	if err != nil {
		return r
	}
	var s struct {
		Version  uint64   `json:"version"`
		Problems []string `json:"problems"`
	}
	if err := json.Unmarshal(out, &s); err != nil || s.Version == 0 || len(s.Problems) > 0 {
		r.err = fmt.Errorf("backup -json printed %q (%v)", out, err)
	}
	r.version = s.Version
	return r
}

var dataVersionRE = regexp.MustCompile(`data@(\d+)`)

// versions lists the complete versions of config.
func (ag agent) versions(ctx context.Context, config string) map[uint64]bool {
	ag.t.Helper()
	out, err := ag.run(ctx, "versions", config)
	if err != nil {
		ag.t.Fatalf("versions: %v", err)
	}
	m := map[uint64]bool{}
	for _, line := range strings.Split(out, "\n") {
		if sm := dataVersionRE.FindStringSubmatch(line); sm != nil && !strings.Contains(line, "incomplete") {
			v, _ := strconv.ParseUint(sm[1], 10, 64)
			m[v] = true
		}
	}
	return m
}

// restoreCompare restores data@v and compares it with want.
func (ag agent) restoreCompare(ctx context.Context, v uint64, src string, want map[string]string) {
	ag.t.Helper()
	dst := filepath.Join(ag.t.TempDir(), "restored")
	if out, err := ag.run(ctx, "restore", fmt.Sprintf("data@%d", v), "-to", dst); err != nil {
		ag.t.Fatalf("restore data@%d: %v\n%s", v, err, out)
	}
	got := treeState(ag.t, filepath.Join(dst, src))
	var diffs []string
	for p, w := range want {
		if got[p] != w {
			diffs = append(diffs, fmt.Sprintf("%s: %q, want %q", p, got[p], w))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, p+": not in the version")
		}
	}
	if len(diffs) > 0 {
		slices.Sort(diffs)
		ag.t.Fatalf("data@%d does not restore identical: %d differences:\n%s", v, len(diffs), strings.Join(diffs[:min(len(diffs), 20)], "\n"))
	}
	os.RemoveAll(dst)
}

// cutTree is the tree the power-cut test protects: every round adds a
// file of fresh random data, edits one and drops an old one, so each
// version differs from the last.
type cutTree struct {
	t    *testing.T
	root string
	r    *rand.Rand
}

func (g *cutTree) change(round int) {
	g.t.Helper()
	write := func(rel string, n int) {
		p := filepath.Join(g.root, rel)
		must(g.t, os.MkdirAll(filepath.Dir(p), 0o755))
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(g.r.Uint32())
		}
		must(g.t, os.WriteFile(p, b, 0o644))
	}
	if round == 0 {
		for i := 0; i < 20; i++ {
			write(fmt.Sprintf("base/f%02d", i), 1+g.r.IntN(64<<10))
		}
		must(g.t, os.Symlink("base/f00", filepath.Join(g.root, "link")))
	}
	write(fmt.Sprintf("r/%d/new.bin", round), 256<<10+g.r.IntN(2<<20))
	write(fmt.Sprintf("base/f%02d", g.r.IntN(20)), 1+g.r.IntN(64<<10))
	os.RemoveAll(filepath.Join(g.root, fmt.Sprintf("r/%d", round-5)))
}

// state maps every path under the tree to its type, mode and content hash.
func (g *cutTree) state() map[string]string {
	return treeState(g.t, g.root)
}

func treeState(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			out[rel] = fmt.Sprintf("file %v %x", fi.Mode(), h.Sum(nil))
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out[rel] = "symlink " + target
		case fi.IsDir():
			if rel != "." {
				out[rel] = fmt.Sprintf("dir %v", fi.Mode())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return out
}
