package hwtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vaultnode/firmware/panel"
)

// panelEmu talks to /bin/panelemu in the guest over its virtio-serial port.
type panelEmu struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

// panelState is panelemu's answer to "state".
type panelState struct {
	Lines  []string `json:"lines"`
	LED    string   `json:"led"`
	Hellos int      `json:"hellos"`
	Frames int      `json:"frames"`
	Errors []string `json:"errors"`
}

func (s panelState) text() string { return strings.Join(s.Lines, "|") }

func dialPanel(ctx context.Context, t *testing.T, path string) *panelEmu {
	t.Helper()
	for ctx.Err() == nil {
		var d net.Dialer
		if c, err := d.DialContext(ctx, "unix", path); err == nil {
			return &panelEmu{t: t, c: c, r: bufio.NewReader(c)}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("connect to the panel emulator's port %s: %v", path, ctx.Err())
	return nil
}

func (p *panelEmu) cmd(ctx context.Context, line string) string {
	p.t.Helper()
	if dl, ok := ctx.Deadline(); ok {
		p.c.SetDeadline(dl)
	}
	if _, err := fmt.Fprintln(p.c, line); err != nil {
		p.t.Fatalf("panel %s: %v", line, err)
	}
	ans, err := p.r.ReadString('\n')
	if err != nil {
		p.t.Fatalf("panel %s: %v", line, err)
	}
	ans = strings.TrimSpace(ans)
	if strings.HasPrefix(ans, "error:") {
		p.t.Fatalf("panel %s: %s", line, ans)
	}
	return ans
}

func (p *panelEmu) state(ctx context.Context) panelState {
	p.t.Helper()
	var s panelState
	if err := json.Unmarshal([]byte(p.cmd(ctx, "state")), &s); err != nil {
		p.t.Fatalf("panel state: %v", err)
	}
	return s
}

func (p *panelEmu) press(ctx context.Context, keys ...panel.Key) {
	p.t.Helper()
	for _, k := range keys {
		p.cmd(ctx, "key "+k.String())
	}
}

func (p *panelEmu) typ(ctx context.Context, s string) {
	p.t.Helper()
	keys, err := panel.Presses(s)
	if err != nil {
		p.t.Fatal(err)
	}
	p.press(ctx, keys...)
}

// waitLCD polls the LCD until cond holds.
func (p *panelEmu) waitLCD(ctx context.Context, what string, cond func(panelState) bool) panelState {
	p.t.Helper()
	var s panelState
	for ctx.Err() == nil {
		if s = p.state(ctx); cond(s) {
			return s
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.t.Fatalf("the LCD never showed %s; it shows %q (LED %s)", what, s.text(), s.LED)
	return s
}

func (p *panelEmu) waitText(ctx context.Context, want string) panelState {
	p.t.Helper()
	return p.waitLCD(ctx, fmt.Sprintf("%q", want), func(s panelState) bool { return strings.Contains(s.text(), want) })
}

// TestPanel boots once with the emulated front panel: the whole first-boot
// setup is done from key presses with the LCD read back, the panel is
// unplugged and plugged in again, and the appliance is powered off from the
// panel's menu.
func TestPanel(t *testing.T) {
	needQEMU(t)
	if !hasFile("bin/panel") || !hasFile("bin/panelemu") {
		t.Fatalf("the test image lacks bin/panel or bin/panelemu")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	a := newAppliance(t)
	a.disks[3].Size = a.disks[1].Size // the spare must be as large as the mirror's members
	sock := filepath.Join(a.dir, "panel.sock")
	vm, err := Boot(ctx, Options{Kernel: image.Kernel, Initramfs: image.Initramfs, Dir: a.dir, Disks: a.disks,
		Append: "vaultnode.testpanel=1", CPUs: 1, Log: func(l string) { t.Log("console: " + l) },
		Extra: []string{"-device", "virtio-serial-pci", "-chardev", "socket,id=panelch,path=" + sock + ",server=on,wait=off",
			"-device", "virtserialport,chardev=panelch,name=vaultnode.panel"}}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	const password = "abcdefgh"
	defer func() {
		if t.Failed() && !vm.Exited() { // the firmware's log (the panel driver's lines are there)
			dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
			_ = vm.Send("") // the first line may go to the console's setup dialog, ended by the panel's
			_ = vm.Send("")
			if vm.Answer(dctx, "login: ", password) == nil && vm.Answer(dctx, "# ", "logs 400") == nil {
				out, _ := vm.Expect(dctx, "# ")
				t.Logf("firmware log:\n%s", out)
			}
			dcancel()
		}
		if !vm.Exited() {
			vm.Kill()
		}
		if strings.Contains(vm.Console(), password) {
			t.Error("the admin password typed on the panel appeared on the console")
		}
	}()
	p := dialPanel(ctx, t, sock)

	// First boot: every answer from the panel's keys.
	p.waitText(ctx, "Hostname [vaultnode]")
	p.waitLCD(ctx, "the LED blinking green during setup", func(s panelState) bool { return s.LED == "green blinking" })
	p.typ(ctx, "bad_host")
	p.waitText(ctx, "only let")
	p.typ(ctx, "panel-test")
	p.waitText(ctx, "< dhcp >")
	p.press(ctx, panel.KeyEnter)
	p.waitText(ctx, "< standalone >")
	p.press(ctx, panel.KeyEnter)
	p.waitText(ctx, "Admin password")
	p.typ(ctx, password)
	s := p.waitText(ctx, "Password again")
	p.typ(ctx, password)
	p.waitText(ctx, "Time zone [UTC]")
	if strings.Contains(s.text(), password) {
		t.Errorf("the LCD showed the password: %q", s.text())
	}
	p.press(ctx, panel.KeyEnter)
	p.waitText(ctx, "NTP server")
	p.press(ctx, panel.KeyEnter)
	p.waitText(ctx, "Data disks")
	for i := 0; i < 10 && !strings.Contains(p.state(ctx).text(), "< vdb vdc >"); i++ {
		p.press(ctx, panel.KeyDown)
		time.Sleep(100 * time.Millisecond)
	}
	p.waitText(ctx, "< vdb vdc >")
	p.press(ctx, panel.KeyEnter)
	p.waitText(ctx, "Apply and format?")
	p.waitText(ctx, "< yes >")
	p.press(ctx, panel.KeyEnter)
	if _, err := vm.Expect(ctx, "*** Setup was done on the front panel."); err != nil {
		t.Fatalf("%v\n%s", err, vm.Since())
	}
	if _, err := vm.Expect(ctx, "Setup complete."); err != nil {
		t.Fatalf("%v\n%s", err, vm.Since())
	}
	waitReady(ctx, t, vm)
	s = p.waitText(ctx, "panel-test")
	t.Logf("status on the LCD: %q, LED %s", s.text(), s.LED)
	p.waitText(ctx, "raid1")
	if len(s.Errors) > 0 {
		t.Errorf("the panel refused frames: %v", s.Errors)
	}

	// Unplug and plug in again: the driver finds the panel and redraws.
	hellos := s.Hellos
	p.cmd(ctx, "unplug")
	if _, err := vm.Expect(ctx, "USB disconnect"); err != nil {
		t.Fatalf("%v\n%s", err, vm.Since())
	}
	p.waitLCD(ctx, "a blank screen while unplugged", func(s panelState) bool {
		return strings.TrimSpace(s.text()) == "|||" || strings.TrimSpace(strings.ReplaceAll(s.text(), "|", "")) == ""
	})
	p.cmd(ctx, "plug")
	s = p.waitLCD(ctx, "the status after the panel came back", func(s panelState) bool {
		return s.Hellos > hellos && strings.TrimSpace(s.Lines[0]) != "" && s.LED != "off"
	})
	t.Logf("after replug: %q, LED %s, greeted %d times", s.text(), s.LED, s.Hellos)

	// A mirror member is pulled out: the LED says so, and the disk is
	// replaced from the panel's menu, with its confirmation.
	if _, err := vm.QMPArgs(ctx, "device_del", map[string]any{"id": "disk1"}); err != nil {
		t.Fatalf("pull data1: %v", err)
	}
	p.waitLCD(ctx, "the LED blinking amber for the degraded mirror", func(s panelState) bool { return s.LED == "amber blinking" })
	p.press(ctx, panel.KeyEnter)
	p.waitText(ctx, ">Replace disk")
	p.press(ctx, panel.KeyEnter)
	p.waitText(ctx, ">vdd > md0")
	p.press(ctx, panel.KeyEnter)
	p.waitText(ctx, "onto vdd?")
	p.press(ctx, panel.KeyBack)
	p.waitText(ctx, ">vdd > md0") // back: nothing touched
	p.press(ctx, panel.KeyEnter)
	p.waitText(ctx, "onto vdd?")
	p.press(ctx, panel.KeyEnter)
	s = p.waitLCD(ctx, "raid's answer to the replacement", func(s panelState) bool {
		return strings.TrimSpace(s.Lines[0]) != "" && !strings.Contains(s.text(), "onto vdd?") && !strings.Contains(s.text(), "Starting the")
	})
	t.Logf("replacement answered: %q", s.text())
	p.press(ctx, panel.KeyBack) // the message goes; the status pages come back
	s = p.waitLCD(ctx, "the mirror rebuilding onto vdd or rebuilt", func(s panelState) bool {
		if strings.TrimSpace(s.Lines[0]) != "RAID" {
			p.press(ctx, panel.KeyDown)
			return false
		}
		return strings.Contains(s.text(), "md0 raid1 2/2") || strings.Contains(s.text(), "%")
	})
	t.Logf("RAID page after the replacement: %q, LED %s", s.text(), s.LED)

	// Power off from the menu, with its confirmation.
	p.press(ctx, panel.KeyEnter)
	p.waitText(ctx, ">Replace disk")
	p.press(ctx, panel.KeyDown, panel.KeyEnter)
	p.waitText(ctx, "Power off?")
	p.press(ctx, panel.KeyBack)
	p.waitText(ctx, ">Power off")
	p.press(ctx, panel.KeyEnter)
	p.waitText(ctx, "Power off?")
	p.press(ctx, panel.KeyEnter)
	if _, err := vm.Expect(ctx, "VAULTNODE-HALT power off"); err != nil {
		t.Fatalf("%v\n%s", err, vm.Since())
	}
	if err := vm.Wait(ctx); err != nil {
		t.Fatalf("qemu exit after power off: %v", err)
	}
	if strings.Contains(vm.Console(), "shutdown step failed") {
		t.Errorf("unclean shutdown:\n%s", vm.Console())
	}
}
