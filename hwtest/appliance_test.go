package hwtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// appliance is one virtual machine's hardware: disks and forwarded ports,
// kept across boots.
type appliance struct {
	t                      testing.TB // the running (sub)test: set by each subtest
	dir                    string
	disks                  []Disk
	vaultPort, metricsPort int
}

func newAppliance(t *testing.T) *appliance {
	dir := t.TempDir()
	a := &appliance{t: t, dir: dir, disks: []Disk{
		{Serial: "system", Path: filepath.Join(dir, "system.img"), Size: 64 << 20},
		{Serial: "data1", Path: filepath.Join(dir, "data1.img"), Size: 512 << 20},
		{Serial: "data2", Path: filepath.Join(dir, "data2.img"), Size: 512 << 20},
		{Serial: "data3", Path: filepath.Join(dir, "data3.img"), Size: 256 << 20},
	}}
	var err error
	if a.vaultPort, err = FreePort(); err != nil {
		t.Fatal(err)
	}
	if a.metricsPort, err = FreePort(); err != nil {
		t.Fatal(err)
	}
	return a
}

// boot starts the VM; it is killed when the test ends.
func (a *appliance) boot(ctx context.Context, extraAppend string) *VM {
	a.t.Helper()
	vm, err := Boot(ctx, Options{Kernel: image.Kernel, Initramfs: image.Initramfs, Dir: a.dir, Disks: a.disks,
		Append: extraAppend, Forward: map[int]int{7443: a.vaultPort, 9100: a.metricsPort},
		Log: func(l string) { a.t.Log("console: " + l) }}, a.t.Logf)
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() {
		if !vm.Exited() {
			vm.Kill()
		}
		if strings.Contains(vm.Console(), "test-password") {
			a.t.Error("the admin password was echoed on the console")
		}
	})
	return vm
}

func (a *appliance) get(ctx context.Context, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", a.metricsPort, path), nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitMetric polls /metrics until it contains want.
func (a *appliance) waitMetric(ctx context.Context, want string) string {
	a.t.Helper()
	var last string
	for ctx.Err() == nil {
		if _, body, err := a.get(ctx, "/metrics"); err == nil {
			last = body
			if strings.Contains(body, want) {
				return body
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	a.t.Fatalf("metrics never showed %q; last:\n%s", want, last)
	return ""
}

// waitHealth polls /health until it answers code with a body containing want.
func (a *appliance) waitHealth(ctx context.Context, code int, want string) string {
	a.t.Helper()
	var last string
	var lastCode int
	for ctx.Err() == nil {
		if c, body, err := a.get(ctx, "/health"); err == nil {
			last, lastCode = body, c
			if c == code && strings.Contains(body, want) {
				return body
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	a.t.Fatalf("/health never answered %d with %q; last %d:\n%s", code, want, lastCode, last)
	return ""
}

// waitReady waits for the end of boot and fails at once on a failed boot.
func waitReady(ctx context.Context, t testing.TB, vm *VM) {
	t.Helper()
	i, err := vm.ExpectAny(ctx, "VAULTNODE-READY", "BOOT FAILED")
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.Console())
	}
	if i == 1 {
		out, _ := vm.Expect(ctx, "\n")
		t.Fatalf("boot failed: %s\n%s", out, vm.Console())
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// firstBootDialog answers the setup dialog, with one refused answer of each
// kind checked on the console.
func firstBootDialog(ctx context.Context, t *testing.T, vm *VM) {
	steps := []struct{ prompt, answer string }{
		{"Hostname [vaultnode]: ", "bad_host!"},
		{"only letters, digits", ""}, // refused: the message, then the prompt again
		{"Hostname [vaultnode]: ", "vault-test"},
		{"Network: dhcp or static [dhcp]: ", "dhcp"},
		{"or join (a pair) [standalone]: ", ""},
		{"Admin password (at least 8 characters): ", "short"},
		{"too short", ""},
		{"Admin password (at least 8 characters): ", "test-password"},
		{"Admin password again: ", "test-password"},
		{"Time zone (e.g. UTC, Europe/Paris) [UTC]: ", "Atlantis/Nowhere"},
		{"not a known time zone", ""},
		{"Time zone (e.g. UTC, Europe/Paris) [UTC]: ", "Europe/Paris"},
		{"NTP server [pool.ntp.org]: ", ""},
		{"Data disks: 1 disk ext4, 2 RAID1, 3 RAID5, 4 or more RAID6 [vdb vdc vdd]: ", "vdb vdx"},
		{"vdx is not a disk", ""},
		{"Data disks: 1 disk ext4, 2 RAID1, 3 RAID5, 4 or more RAID6 [vdb vdc vdd]: ", "vdb vdc"},
		{"Layout: RAID1 over 2 disks", ""},
		{"(yes/no) [yes]: ", "yes"},
	}
	for _, s := range steps {
		if _, err := vm.Expect(ctx, s.prompt); err != nil {
			t.Fatalf("setup dialog: %v\nconsole since last match:\n%s", err, vm.Since())
		}
		if s.answer != "" || strings.HasSuffix(s.prompt, ": ") {
			must(t, vm.Send(s.answer))
		}
	}
}

func TestAppliance(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	a := newAppliance(t)
	hasVault := hasFile("bin/vaultd") && hasFile("bin/vaultctl")

	ok := t.Run("first boot: setup dialog, vault healthy, ACPI power off", func(t *testing.T) {
		a.t = t // its VMs and failures belong to the subtest
		vm := a.boot(ctx, "")
		firstBootDialog(ctx, t, vm)
		if _, err := vm.Expect(ctx, "Setup complete."); err != nil {
			t.Fatalf("%v\n%s", err, vm.Since())
		}
		waitReady(ctx, t, vm)
		if hasVault {
			if _, err := vm.Expect(ctx, "*** service vaultd healthy"); err != nil {
				t.Fatalf("%v\n%s", err, vm.Since())
			}
			a.waitMetric(ctx, `vaultnode_service_up{service="vaultd"} 1`)
		}
		a.waitHealth(ctx, http.StatusOK, `"status":"ok"`)
		body := a.waitMetric(ctx, `vaultnode_md_disks_active{array="md0",level="raid1"} 2`)
		if !strings.Contains(body, `vaultnode_filesystem_size_bytes{mount="/data"}`) {
			t.Errorf("no data filesystem in metrics:\n%s", body)
		}
		must(t, vm.PowerButton(ctx))
		if _, err := vm.Expect(ctx, "VAULTNODE-HALT power off"); err != nil {
			t.Fatalf("%v\n%s", err, vm.Since())
		}
		if err := vm.Wait(ctx); err != nil {
			t.Fatalf("qemu exit after power off: %v", err)
		}
		if strings.Contains(vm.Console(), "shutdown step failed") {
			t.Errorf("unclean shutdown:\n%s", vm.Console())
		}
	})
	if !ok {
		return
	}

	t.Run("second boot: no dialog, config kept, crashing service contained, console poweroff", func(t *testing.T) {
		a.t = t // its VMs and failures belong to the subtest
		vm := a.boot(ctx, "vaultnode.testcrash=1")
		waitReady(ctx, t, vm)
		if strings.Contains(vm.Console(), "first boot setup") {
			t.Fatal("the setup dialog ran again on the second boot")
		}
		if _, err := vm.Expect(ctx, "*** service testcrash failed"); err != nil {
			t.Fatalf("%v\n%s", err, vm.Since())
		}
		body := a.waitMetric(ctx, `vaultnode_service_failed{service="testcrash"} 1`)
		for _, want := range []string{`vaultnode_service_restarts_total{service="testcrash"} 4`,
			`vaultnode_info{version="hwtest",hostname="vault-test"} 1`} {
			if !strings.Contains(body, want) {
				t.Errorf("metrics lack %q:\n%s", want, body)
			}
		}
		if hasVault && !strings.Contains(body, `vaultnode_service_up{service="vaultd"} 1`) {
			t.Errorf("vaultd is not up beside the failed service:\n%s", body)
		}
		// Log in on the console and look around.
		must(t, vm.Send(""))
		if _, err := vm.Expect(ctx, "login: "); err != nil {
			t.Fatal(err)
		}
		must(t, vm.Send("wrong-password"))
		if _, err := vm.Expect(ctx, "Login incorrect."); err != nil {
			t.Fatal(err)
		}
		must(t, vm.Answer(ctx, "login: ", "test-password"))
		must(t, vm.Answer(ctx, "# ", "cat /persist/config.json"))
		out, err := vm.Expect(ctx, "# ")
		must(t, err)
		for _, want := range []string{`"hostname": "vault-test"`, `"timezone": "Europe/Paris"`, `"level": "raid1"`} {
			if !strings.Contains(out, want) {
				t.Errorf("config lacks %s:\n%s", want, out)
			}
		}
		must(t, vm.Send("ps"))
		out, err = vm.Expect(ctx, "# ")
		must(t, err)
		if hasVault && !strings.Contains(out, "vaultd") {
			t.Errorf("u-root ps does not show vaultd:\n%s", out)
		}
		must(t, vm.Send("ls /data/log"))
		out, err = vm.Expect(ctx, "# ")
		must(t, err)
		if !strings.Contains(out, "firmware.log") {
			t.Errorf("no firmware log on the data volume:\n%s", out)
		}
		must(t, vm.Send("status"))
		out, err = vm.Expect(ctx, "# ")
		must(t, err)
		if !strings.Contains(out, "testcrash") || !strings.Contains(out, "failed after 5 crashes") {
			t.Errorf("status screen does not show the failed service:\n%s", out)
		}
		must(t, vm.Send("poweroff"))
		if _, err := vm.Expect(ctx, "VAULTNODE-HALT power off"); err != nil {
			t.Fatalf("%v\n%s", err, vm.Since())
		}
		must(t, vm.Wait(ctx))
	})

	if !hasVault {
		t.Errorf("THE VAULT TESTS DID NOT RUN: the image has no vaultd/vaultctl (left out: %v)", image.Skipped)
		return
	}
	testVault(ctx, t, a)
}

// shell logs in on the console and returns a function that runs one shell
// command and returns its output.
func shell(ctx context.Context, t testing.TB, vm *VM) func(cmd string) string {
	t.Helper()
	must(t, vm.Send(""))
	must(t, vm.Answer(ctx, "login: ", "test-password"))
	if _, err := vm.Expect(ctx, "# "); err != nil {
		t.Fatalf("%v\n%s", err, vm.Since())
	}
	return func(cmd string) string {
		t.Helper()
		must(t, vm.Send(cmd))
		out, err := vm.Expect(ctx, "# ")
		if err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, vm.Since())
		}
		return out
	}
}

var tokenRE = regexp.MustCompile(`vn1_[A-Za-z0-9_-]{20,}`)

// agent runs vault-agent on this machine.
type agent struct {
	t     testing.TB
	bin   string
	state string
}

func (ag agent) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, ag.bin, append([]string{"-state", ag.state}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	ag.t.Logf("vault-agent %s: %s", strings.Join(args, " "), strings.TrimSpace(string(out)))
	return string(out), err
}

func buildAgent(t testing.TB) string {
	bin := filepath.Join(t.TempDir(), "vault-agent")
	cmd := exec.Command("go", "build", "-o", bin, "./agentkit/cmd/vault-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build vault-agent: %v\n%s", err, out)
	}
	return bin
}

func testVault(ctx context.Context, t *testing.T, a *appliance) {
	ag := agent{t: t, state: filepath.Join(t.TempDir(), "agent")}
	src := filepath.Join(t.TempDir(), "protected")
	writeTree(t, src, 40, 64<<10)
	big := filepath.Join(t.TempDir(), "big")
	writeTree(t, big, 32, 1<<20) // 32 MiB at 16 Mbit/s: at least 16 s, the power is cut after 6 s
	ag.bin = buildAgent(t)

	ok := t.Run("agent on the host backs up to the vault in the VM and restores", func(t *testing.T) {
		a.t = t
		ag.t = t
		vm := a.boot(ctx, "")
		waitReady(ctx, t, vm)
		if _, err := vm.Expect(ctx, "*** service vaultd healthy"); err != nil {
			t.Fatalf("%v\n%s", err, vm.Console())
		}
		sh := shell(ctx, t, vm)
		if out := sh("vaultctl -data /data/vault company create acme"); !strings.Contains(out, "acme") {
			t.Fatalf("company create: %s", out)
		}
		token := tokenRE.FindString(sh("vaultctl -data /data/vault token create acme"))
		if token == "" {
			t.Fatal("no enrolment token printed")
		}
		vault := fmt.Sprintf("127.0.0.1:%d", a.vaultPort)
		if _, err := ag.run(ctx, "enroll", "-vault", vault, "-token", token); err != nil {
			t.Fatalf("enroll: %v", err)
		}
		for _, c := range []struct{ name, path string }{{"docs", src}, {"big", big}} {
			if _, err := ag.run(ctx, "config", "set", c.name, "-path", c.path); err != nil {
				t.Fatalf("config set: %v", err)
			}
		}
		if _, err := ag.run(ctx, "backup", "docs"); err != nil {
			t.Fatalf("backup: %v", err)
		}
		dst := filepath.Join(t.TempDir(), "restored")
		if _, err := ag.run(ctx, "restore", "docs@latest", "-to", dst); err != nil {
			t.Fatalf("restore: %v", err)
		}
		compareTrees(t, src, filepath.Join(dst, src))
		must(t, vm.PowerButton(ctx))
		if _, err := vm.Expect(ctx, "VAULTNODE-HALT power off"); err != nil {
			t.Fatalf("%v\n%s", err, vm.Since())
		}
		must(t, vm.Wait(ctx))
	})
	if !ok {
		return
	}

	ok = t.Run("power cut in the middle of a backup", func(t *testing.T) {
		a.t = t
		ag.t = t
		vm := a.boot(ctx, "")
		waitReady(ctx, t, vm)
		if _, err := vm.Expect(ctx, "*** service vaultd healthy"); err != nil {
			t.Fatalf("%v\n%s", err, vm.Console())
		}
		// The upload limit makes the backup last long enough whatever the
		// machine's speed.
		if _, err := ag.run(ctx, "limit", "16Mbit/s"); err != nil {
			t.Fatalf("limit: %v", err)
		}
		bctx, cancel := context.WithCancel(ctx)
		defer cancel()
		done := make(chan error, 1)
		go func() { _, err := ag.run(bctx, "backup", "big"); done <- err }()
		select {
		case err := <-done:
			t.Fatalf("the backup ended before the power cut (err %v): make the tree bigger", err)
		case <-time.After(6 * time.Second):
		}
		vm.Kill()
		t.Log("power cut while the backup ran")
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("the backup succeeded although the vault lost power")
			}
		case <-time.After(2 * time.Minute):
			cancel()
			<-done
		}
	})
	if !ok {
		return
	}

	t.Run("after the power cut: mounts, verifies, next backup completes, data intact", func(t *testing.T) {
		a.t = t
		ag.t = t
		vm := a.boot(ctx, "")
		waitReady(ctx, t, vm)
		if _, err := vm.Expect(ctx, "*** service vault-verify done"); err != nil {
			t.Fatalf("the vault did not verify clean at boot: %v\n%s", err, vm.Console())
		}
		sh := shell(ctx, t, vm)
		if out := sh("vaultctl -data /data/vault verify"); !strings.Contains(out, " 0 problems") {
			t.Errorf("verify after the power cut: %s", out)
		}
		if _, err := ag.run(ctx, "limit", ""); err != nil {
			t.Fatalf("limit: %v", err)
		}
		if _, err := ag.run(ctx, "backup", "big"); err != nil {
			t.Fatalf("backup after the power cut: %v", err)
		}
		for _, c := range []struct{ name, path string }{{"docs", src}, {"big", big}} {
			dst := filepath.Join(t.TempDir(), "restored")
			if _, err := ag.run(ctx, "restore", c.name+"@latest", "-to", dst); err != nil {
				t.Fatalf("restore %s: %v", c.name, err)
			}
			compareTrees(t, c.path, filepath.Join(dst, c.path))
		}
		// Shut down through the control socket, as a service would.
		must(t, vm.Send("init ctl poweroff"))
		if _, err := vm.Expect(ctx, "VAULTNODE-HALT power off"); err != nil {
			t.Fatalf("%v\n%s", err, vm.Since())
		}
		must(t, vm.Wait(ctx))
	})

	t.Run("a mirror disk is missing: boots degraded, says so, data still served", func(t *testing.T) {
		a.t = t
		ag.t = t
		full := a.disks
		defer func() { a.disks = full }()
		a.disks = []Disk{full[0], full[1], full[3]} // data2 pulled; data3 is now vdc
		vm := a.boot(ctx, "")
		waitReady(ctx, t, vm)
		if _, err := vm.Expect(ctx, "*** service vaultd healthy"); err != nil {
			t.Fatalf("%v\n%s", err, vm.Console())
		}
		a.waitMetric(ctx, `vaultnode_md_degraded{array="md0"} 1`)
		body := a.waitHealth(ctx, http.StatusServiceUnavailable, "array md0 (raid1) is degraded: 1 of 2 disks")
		if !strings.Contains(body, `"status":"degraded"`) {
			t.Errorf("health: %s", body)
		}
		dst := filepath.Join(t.TempDir(), "restored")
		if _, err := ag.run(ctx, "restore", "docs@latest", "-to", dst); err != nil {
			t.Fatalf("restore from a degraded vault: %v", err)
		}
		compareTrees(t, src, filepath.Join(dst, src))
		must(t, vm.PowerButton(ctx))
		if _, err := vm.Expect(ctx, "VAULTNODE-HALT power off"); err != nil {
			t.Fatalf("%v\n%s", err, vm.Since())
		}
		must(t, vm.Wait(ctx))
	})
}

// TestStaticNetworkSingleDisk sets the appliance up with a static address
// and one data disk (ext4 without RAID), then powers it off by ACPI.
func TestStaticNetworkSingleDisk(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a := newAppliance(t)
	vm := a.boot(ctx, "")
	for _, s := range []struct{ prompt, answer string }{
		{"Hostname [vaultnode]: ", "static-vault"},
		{"Network: dhcp or static [dhcp]: ", "static"},
		{"(e.g. 192.168.1.10/24): ", "10.0.2.15/24"},
		{"Gateway: ", "192.168.1.1"},
		{"the gateway must be on the appliance's subnet", ""},
		{"Gateway: ", "10.0.2.2"},
		{"DNS servers (comma separated): ", "10.0.2.3"},
		{"or join (a pair) [standalone]: ", ""},
		{"Admin password (at least 8 characters): ", "test-password"},
		{"Admin password again: ", "test-password"},
		{"[UTC]: ", ""},
		{"[pool.ntp.org]: ", "10.0.2.2"},
		{"4 or more RAID6 [vdb vdc vdd]: ", "vdd"},
		{"One disk has no redundancy", ""},
		{"(yes/no) [yes]: ", "yes"},
	} {
		if _, err := vm.Expect(ctx, s.prompt); err != nil {
			t.Fatalf("setup dialog: %v\n%s", err, vm.Since())
		}
		if strings.HasSuffix(s.prompt, ": ") {
			must(t, vm.Send(s.answer))
		}
	}
	waitReady(ctx, t, vm)
	if _, err := vm.Expect(ctx, "addresses: eth0 10.0.2.15/24"); err != nil {
		t.Fatalf("%v\n%s", err, vm.Since())
	}
	if _, err := vm.Expect(ctx, "qos: eth0 shaped at 1000 Mbit/s"); err != nil {
		t.Fatalf("%v\n%s", err, vm.Since())
	}
	// Reaching the metrics port through the forwarded port proves the
	// static address and route work.
	body := a.waitMetric(ctx, `vaultnode_info{version="hwtest",hostname="static-vault"} 1`)
	if strings.Contains(body, "vaultnode_md_disks_active") && strings.Contains(body, `array="md0"`) {
		t.Errorf("a single data disk made an md array:\n%s", body)
	}
	if !strings.Contains(body, `vaultnode_filesystem_size_bytes{mount="/data"}`) {
		t.Errorf("no data filesystem:\n%s", body)
	}
	// The uplink is shaped with the guest kernel's modules: virtio-net
	// reports no speed, so management is guaranteed 5 % of 1 Gbit/s.
	for _, want := range []string{`vaultnode_qos_rate_bits{direction="egress",class="1:10",name="management"} 5e+07`,
		`vaultnode_qos_ceil_bits{direction="ingress",class="1:41",name="uploads/other"} 1e+09`} {
		if !strings.Contains(body, want) {
			t.Errorf("uplink not shaped: no %s:\n%s", want, body)
		}
	}
	must(t, vm.PowerButton(ctx))
	if _, err := vm.Expect(ctx, "VAULTNODE-HALT power off"); err != nil {
		t.Fatalf("%v\n%s", err, vm.Since())
	}
	must(t, vm.Wait(ctx))
}

// TestPowerButtonDuringSetup presses the power button while the first boot
// dialog waits for an answer: the appliance powers off cleanly.
func TestPowerButtonDuringSetup(t *testing.T) {
	needQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a := newAppliance(t)
	vm := a.boot(ctx, "")
	if _, err := vm.Expect(ctx, "Hostname [vaultnode]: "); err != nil {
		t.Fatalf("%v\n%s", err, vm.Console())
	}
	must(t, vm.PowerButton(ctx))
	if _, err := vm.Expect(ctx, "VAULTNODE-HALT power off"); err != nil {
		t.Fatalf("%v\n%s", err, vm.Since())
	}
	must(t, vm.Wait(ctx))
	if strings.Contains(vm.Console(), "shutdown step failed") {
		t.Errorf("unclean shutdown:\n%s", vm.Since())
	}
}
