package hwtest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// raidFast raises md's sync speed so that resyncs and rebuilds of the
// small test disks take seconds.
const raidFast = "vaultnode.mdspeed=200000,1000000"

var (
	replaceRE = regexp.MustCompile(`disk (vd[a-z]+) can become the missing disk's replacement`)
	spareRE   = regexp.MustCompile(`disk (vd[a-z]+) can become a hot spare`)
)

// raidRig is an appliance set up with four data disks of size bytes
// (RAID6, the dialog answered and checked), a company and an enrolled
// agent on this machine.
type raidRig struct {
	a      *appliance
	vm     *VM
	ag     agent
	sh     func(string) string
	fail   func(vm *VM, format string, args ...any)
	expect func(vm *VM, s string) string
}

func newRaidRig(ctx context.Context, t testing.TB, size int64, append_ string) *raidRig {
	needQEMU(t)
	if !hasFile("bin/vaultd") || !hasFile("bin/vaultctl") {
		t.Fatalf("the image has no vaultd/vaultctl (left out: %v)", image.Skipped)
	}
	dir := t.TempDir()
	a := &appliance{t: t, dir: dir, disks: []Disk{{Serial: "system", Path: filepath.Join(dir, "system.img"), Size: 64 << 20}}}
	for i := 1; i <= 4; i++ {
		a.disks = append(a.disks, Disk{Serial: fmt.Sprintf("data%d", i), Path: filepath.Join(dir, fmt.Sprintf("data%d.img", i)), Size: size})
	}
	var err error
	if a.vaultPort, err = FreePort(); err != nil {
		t.Fatal(err)
	}
	if a.metricsPort, err = FreePort(); err != nil {
		t.Fatal(err)
	}
	ag := agent{t: t, state: filepath.Join(t.TempDir(), "agent"), bin: buildAgent(t)}
	fail := func(vm *VM, format string, args ...any) {
		t.Helper()
		c := vm.Console()
		if len(c) > 8000 {
			c = c[len(c)-8000:]
		}
		t.Fatalf(format+"\nconsole (tail):\n%s", append(args, c)...)
	}
	expect := func(vm *VM, s string) string {
		t.Helper()
		out, err := vm.Expect(ctx, s)
		if err != nil {
			fail(vm, "%v", err)
		}
		return out
	}

	// First boot: the dialog offers RAID6 for four blank disks.
	vm := a.boot(ctx, append_)
	for _, s := range []struct{ prompt, answer string }{
		{"Hostname [vaultnode]: ", "raid-vault"},
		{"Network: dhcp or static [dhcp]: ", ""},
		{"or join (a pair) [standalone]: ", ""},
		{"Admin password (at least 8 characters): ", "test-password"},
		{"Admin password again: ", "test-password"},
		{"[UTC]: ", ""},
		{"[pool.ntp.org]: ", ""},
		{"4 or more RAID6 [vdb vdc vdd vde]: ", ""},
		{"Hot spares: how many of them wait unused and rebuild by themselves [0]: ", "4"},
		{"keep at least one active disk", ""},
		{"rebuild by themselves [0]: ", ""},
		{"Layout: raid6 or raid10 [raid6]: ", ""},
		{fmt.Sprintf("Layout: RAID6 over 4 disks: %d MiB usable, survives the loss of 2 disks", 2*size>>20), ""},
		{"data       raid6 on data1 data2 data3 data4", ""},
		{"(yes/no) [yes]: ", "yes"},
	} {
		expect(vm, s.prompt)
		if strings.HasSuffix(s.prompt, ": ") {
			must(t, vm.Send(s.answer))
		}
	}
	waitReady(ctx, t, vm)
	expect(vm, "*** service vaultd healthy")
	a.waitMetric(ctx, `vaultnode_md_state{array="md0",state="clean"} 1`)
	body := a.waitMetric(ctx, `vaultnode_md_disks_active{array="md0",level="raid6"} 4`)
	if !strings.Contains(body, `vaultnode_storage_state{state="clean"} 1`) {
		t.Errorf("metrics lack the clean storage state:\n%s", body)
	}
	sh := shell(ctx, t, vm)
	// vaultctl reaches the running vault with no flag (issue 15's console fix).
	if out := sh("vaultctl company create acme"); !strings.Contains(out, "company acme created") {
		fail(vm, "vaultctl without -data: %s", out)
	}
	token := tokenRE.FindString(sh("vaultctl token create acme"))
	if token == "" {
		fail(vm, "no enrolment token printed")
	}
	if _, err := ag.run(ctx, "enroll", "-vault", fmt.Sprintf("127.0.0.1:%d", a.vaultPort), "-token", token); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	return &raidRig{a: a, vm: vm, ag: ag, sh: sh, fail: fail, expect: expect}
}

// TestRaidLifecycle sets up four data disks (RAID6 at first boot, the
// dialog answered here), pulls one through QMP device_del while an agent
// on the host backs up (the vault keeps serving, says degraded, the backup
// completes), plugs a blank disk in (device_add), confirms the replacement
// with vaultctl in the support shell, cuts the power during the rebuild,
// and checks that the next boot resumes it: the array comes back clean,
// the scrub finds no mismatch, verify is clean and every version restores.
// At the end three disks are pulled: the array fails and the vault
// refuses backups with storage_failed.
func TestRaidLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	r := newRaidRig(ctx, t, 96<<20, raidFast)
	a, vm, ag, sh, fail, expect := r.a, r.vm, r.ag, r.sh, r.fail, r.expect
	dir := a.dir
	docs := filepath.Join(t.TempDir(), "docs")
	writeTree(t, docs, 20, 64<<10)
	big := filepath.Join(t.TempDir(), "big")
	writeTree(t, big, 24, 1<<20) // 24 MiB at 16 Mbit/s: about 12 s, the disk is pulled after 3 s
	for _, c := range []struct{ name, path string }{{"docs", docs}, {"big", big}} {
		if _, err := ag.run(ctx, "config", "set", c.name, "-path", c.path); err != nil {
			t.Fatalf("config set: %v", err)
		}
	}
	smart := "SMART unknown: /dev/vdb: Unable to detect device type" // QEMU's virtio disks answer no SMART
	if !hasFile("sbin/smartctl") {
		smart = "smartctl is not in this image"
	}
	if out := sh("vaultctl disk"); !strings.Contains(out, smart) {
		fail(vm, "vaultctl disk does not report SMART as %q:\n%s", smart, out)
	}
	if _, err := ag.run(ctx, "backup", "docs"); err != nil {
		t.Fatalf("backup: %v", err)
	}

	// A disk is pulled in the middle of a backup.
	if _, err := ag.run(ctx, "limit", "16Mbit/s"); err != nil {
		t.Fatalf("limit: %v", err)
	}
	done := make(chan error, 1)
	go func() { _, err := ag.run(ctx, "backup", "big"); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("the backup ended before the disk was pulled (err %v): make the tree bigger", err)
	case <-time.After(3 * time.Second):
	}
	if _, err := vm.QMPArgs(ctx, "device_del", map[string]any{"id": "disk3"}); err != nil {
		t.Fatal(err)
	}
	t.Log("disk data3 pulled while the backup runs")
	expect(vm, "*** storage degraded")
	if err := <-done; err != nil {
		fail(vm, "the backup did not complete on the degraded array: %v", err)
	}
	if _, err := ag.run(ctx, "limit", ""); err != nil {
		t.Fatalf("limit: %v", err)
	}
	out := sh("vaultctl status")
	if !strings.Contains(out, "STORAGE DEGRADED: array md0 (raid6) is degraded: 3 of 4 disks in sync") {
		fail(vm, "vaultctl status does not say degraded:\n%s", out)
	}
	a.waitHealth(ctx, http.StatusServiceUnavailable, "array md0 (raid6) is degraded")

	// A blank disk is plugged in; the replacement is confirmed with vaultctl.
	newDisk := filepath.Join(dir, "data5.img")
	f, err := os.Create(newDisk)
	must(t, err)
	must(t, f.Truncate(96<<20))
	f.Close()
	if _, err := vm.QMPArgs(ctx, "blockdev-add", map[string]any{"driver": "file", "filename": newDisk, "node-name": "new5"}); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.QMPArgs(ctx, "device_add", map[string]any{"driver": "virtio-blk-pci", "drive": "new5", "id": "disk5", "serial": "data5"}); err != nil {
		t.Fatal(err)
	}
	expect(vm, "can become the missing disk's replacement")
	m := replaceRE.FindStringSubmatch(vm.Console())
	if m == nil {
		fail(vm, "no replacement offered")
	}
	// Slow the rebuild down so that the power cut lands in its middle.
	if out := sh("init ctl raid speed 1000 1000"); !strings.Contains(out, "md sync speed 1000-1000") {
		fail(vm, "raid speed: %s", out)
	}
	if out := sh("vaultctl disk replace " + m[1]); !strings.Contains(out, "replaces data3 in /dev/md0: rebuilding") {
		fail(vm, "vaultctl disk replace: %s", out)
	}
	a.waitMetric(ctx, `vaultnode_md_state{array="md0",state="resyncing"} 1`)
	if out := sh("vaultctl disk"); !strings.Contains(out, "rebuilding") || !strings.Contains(out, "action recover") {
		fail(vm, "vaultctl disk during the rebuild:\n%s", out)
	}
	vm.Kill()
	t.Log("power cut during the rebuild")

	// The next boot resumes the rebuild.
	a.disks = []Disk{a.disks[0], a.disks[1], a.disks[2], a.disks[4], {Serial: "data5", Path: newDisk, Size: 96 << 20}}
	vm = a.boot(ctx, raidFast)
	// The controller's first poll, a boot step before the end of boot,
	// finds the rebuild running again; it may end before or after boot.
	expect(vm, "*** storage resyncing")
	expect(vm, "*** storage clean")
	if !strings.Contains(vm.Console(), "VAULTNODE-READY") {
		waitReady(ctx, t, vm)
	}
	a.waitMetric(ctx, `vaultnode_service_up{service="vaultd"} 1`)
	sh = shell(ctx, t, vm)
	if out := sh("cat /persist/config.json"); !strings.Contains(out, `"data5"`) || strings.Contains(out, `"data3"`) {
		fail(vm, "the configuration does not name the replacement:\n%s", out)
	}
	if out := sh("vaultctl disk scrub"); !strings.Contains(out, "scrub started") {
		fail(vm, "scrub: %s", out)
	}
	expect(vm, "scrub of md0 finished: 0 mismatched sectors")
	a.waitMetric(ctx, `vaultnode_md_mismatch_sectors{array="md0"} 0`)
	if out := sh("vaultctl verify"); !strings.Contains(out, " 0 problems") {
		fail(vm, "verify after the rebuild: %s", out)
	}
	for _, v := range []struct{ spec, path string }{{"docs@1", docs}, {"big@latest", big}, {"docs@latest", docs}} {
		dst := filepath.Join(t.TempDir(), "restored")
		if _, err := ag.run(ctx, "restore", v.spec, "-to", dst); err != nil {
			t.Fatalf("restore %s: %v", v.spec, err)
		}
		compareTrees(t, v.path, filepath.Join(dst, v.path))
	}

	// A hot spare: added with vaultctl, then a member is pulled and md
	// rebuilds onto the spare by itself; the configuration follows.
	spare := filepath.Join(dir, "data6.img")
	f, err = os.Create(spare)
	must(t, err)
	must(t, f.Truncate(96<<20))
	f.Close()
	if _, err := vm.QMPArgs(ctx, "blockdev-add", map[string]any{"driver": "file", "filename": spare, "node-name": "new6"}); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.QMPArgs(ctx, "device_add", map[string]any{"driver": "virtio-blk-pci", "drive": "new6", "id": "disk6", "serial": "data6"}); err != nil {
		t.Fatal(err)
	}
	expect(vm, "can become a hot spare")
	m = spareRE.FindStringSubmatch(vm.Console())
	if out := sh("vaultctl disk replace " + m[1]); !strings.Contains(out, "(data6) added to /dev/md0 as a hot spare") {
		fail(vm, "vaultctl disk replace (spare): %s", out)
	}
	a.waitMetric(ctx, `vaultnode_md_spares{array="md0"} 1`)
	if out := sh("init ctl raid speed 1000 20000"); !strings.Contains(out, "md sync speed") { // a rebuild of seconds, seen by the poll
		fail(vm, "raid speed: %s", out)
	}
	if _, err := vm.QMPArgs(ctx, "device_del", map[string]any{"id": "disk1"}); err != nil {
		t.Fatal(err)
	}
	expect(vm, "*** storage resyncing")
	expect(vm, "*** storage clean")
	a.waitMetric(ctx, `vaultnode_md_spares{array="md0"} 0`)
	if out := sh("cat /persist/config.json"); !strings.Contains(out, `"data6"`) || strings.Contains(out, `"data1"`) || strings.Contains(out, `"spares"`) {
		fail(vm, "the configuration does not follow the spare's rebuild:\n%s", out)
	}

	// Three disks lost: the array fails, the vault refuses writes cleanly.
	for _, id := range []string{"disk2", "disk3", "disk4"} {
		if _, err := vm.QMPArgs(ctx, "device_del", map[string]any{"id": id}); err != nil {
			t.Fatal(err)
		}
	}
	expect(vm, "*** storage failed")
	out, err = ag.run(ctx, "backup", "docs")
	if err == nil || !strings.Contains(out, "storage failed") {
		fail(vm, "a backup to a failed array: err %v, output:\n%s", err, out)
	}
	a.waitHealth(ctx, http.StatusServiceUnavailable, "FAILED")
	must(t, vm.Send("poweroff"))
	expect(vm, "VAULTNODE-HALT power off")
	must(t, vm.Wait(ctx))
}
