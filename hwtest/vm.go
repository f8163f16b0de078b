// Package hwtest boots the appliance image in QEMU (TCG, PVH vmlinux) and
// drives it like a datacenter would: through the serial console, the ACPI
// power button (QMP system_powerdown), forwarded ports and power cuts.
package hwtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Disk is a raw disk file attached as virtio-blk with a serial.
type Disk struct {
	Serial string
	Path   string
	Size   int64
}

// Options configure one boot.
type Options struct {
	Kernel, Initramfs string
	Dir               string // for the QMP socket and the console log
	Disks             []Disk
	Append            string       // extra kernel command line
	Forward           map[int]int  // guest TCP port -> host port on 127.0.0.1
	Memory            string       // default 1G
	CPUs              int          // default 2
	Log               func(string) // each console line
	Stdout            io.Writer    // optional copy of the console
	Extra             []string     // extra QEMU arguments
	// Netdev replaces the user-mode network (and Forward) with another
	// -netdev, e.g. "tap,id=n0,ifname=tapA,script=no,downscript=no"; its
	// id must be n0.
	Netdev string
	MAC    string   // the NIC's MAC address; QEMU's default when empty
	Wrap   []string // run QEMU under this command, e.g. ip netns exec NS
	Env    []string
}

// VM is a running QEMU.
type VM struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	qmpPath string

	mu     sync.Mutex
	buf    []byte
	cursor int
	notify chan struct{}
	exited chan struct{}
	err    error // exit error once exited
	killed bool  // Kill was called
}

// Start boots a VM; it dies with ctx.
func Start(ctx context.Context, o Options) (*VM, error) {
	if o.Memory == "" {
		o.Memory = "1G"
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	for _, d := range o.Disks {
		if _, err := os.Stat(d.Path); errors.Is(err, os.ErrNotExist) {
			f, err := os.Create(d.Path)
			if err != nil {
				return nil, fmt.Errorf("make disk %s: %w", d.Path, err)
			}
			if err := f.Truncate(d.Size); err != nil {
				f.Close()
				return nil, fmt.Errorf("size disk %s: %w", d.Path, err)
			}
			f.Close()
		}
	}
	qmp := filepath.Join(o.Dir, fmt.Sprintf("qmp-%d.sock", time.Now().UnixNano()))
	// no_timer_check: under TCG on a loaded machine the kernel's check of
	// the IO-APIC timer can miss its window and panic ("IO-APIC + timer
	// doesn't work!"); the emulated timer is known good.
	args := []string{"-accel", "tcg", "-m", o.Memory, "-smp", fmt.Sprint(o.CPUs), "-nodefaults", "-no-reboot",
		"-display", "none", "-serial", "stdio", "-qmp", "unix:" + qmp + ",server=on,wait=off",
		"-kernel", o.Kernel, "-initrd", o.Initramfs,
		"-append", strings.TrimSpace("console=ttyS0 panic=-1 no_timer_check " + o.Append)}
	for i, d := range o.Disks {
		args = append(args, "-drive", fmt.Sprintf("if=none,id=d%d,file=%s,format=raw,cache=unsafe", i, d.Path),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=d%d,id=disk%d,serial=%s", i, i, d.Serial))
	}
	nic := "user,id=n0"
	for g, h := range o.Forward {
		nic += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", h, g)
	}
	if o.Netdev != "" {
		nic = o.Netdev
	}
	dev := "virtio-net-pci,netdev=n0"
	if o.MAC != "" {
		dev += ",mac=" + o.MAC
	}
	args = append(args, "-netdev", nic, "-device", dev, "-device", "virtio-rng-pci")
	args = append(args, o.Extra...)

	argv := append(append([]string(nil), o.Wrap...), "qemu-system-x86_64")
	cmd := exec.CommandContext(ctx, argv[0], append(argv[1:], args...)...)
	cmd.Env = append(os.Environ(), o.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	cmd.Stderr = cmd.Stdout
	logf, err := os.OpenFile(filepath.Join(o.Dir, "console.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open console log: %w", err)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	vm := &VM{cmd: cmd, stdin: stdin, qmpPath: qmp, notify: make(chan struct{}), exited: make(chan struct{})}
	go func() { // owned by the VM: ends when QEMU's output closes
		defer logf.Close()
		var line []byte
		b := make([]byte, 4096)
		for {
			n, err := stdout.Read(b)
			if n > 0 {
				logf.Write(b[:n])
				if o.Stdout != nil {
					o.Stdout.Write(b[:n])
				}
				vm.mu.Lock()
				vm.buf = append(vm.buf, b[:n]...)
				close(vm.notify)
				vm.notify = make(chan struct{})
				vm.mu.Unlock()
				if o.Log != nil {
					line = append(line, b[:n]...)
					for {
						i := bytes.IndexByte(line, '\n')
						if i < 0 {
							break
						}
						o.Log(strings.TrimRight(string(line[:i]), "\r"))
						line = line[i+1:]
					}
				}
			}
			if err != nil {
				break
			}
		}
		err := cmd.Wait()
		vm.mu.Lock()
		vm.err = err
		close(vm.notify)
		vm.notify = make(chan struct{})
		vm.mu.Unlock()
		close(vm.exited)
	}()
	return vm, nil
}

// ErrExited means QEMU exited while something was expected.
var ErrExited = errors.New("qemu exited")

// exitError wraps ErrExited with how QEMU ended: an exit status of 0 with
// -no-reboot is the guest's reset or power-off (a triple fault prints
// nothing), a signal is the host's doing.
func (vm *VM) exitError(what string) error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	how := "exit status 0"
	if vm.err != nil {
		how = vm.err.Error()
	}
	if vm.killed {
		how += ", killed by the test"
	}
	return fmt.Errorf("%s: %w (%s)", what, ErrExited, how)
}

// banner is the first line the image's PID 1 prints.
const banner = "vaultnode firmware "

// Boot starts a VM and waits until the image's PID 1 has printed its
// banner. A QEMU that exits before then, and was not killed by the test,
// died in the Debian kernel's early boot or of the host (a signal, the OOM
// killer, a fault of TCG; CI once lost a VM so, silently, 0.8 s into the
// kernel's boot): none of the image's own code had run. Boot then says so
// through logf, with QEMU's exit status and the console's last lines, and
// boots once more; a second such death is an error.
func Boot(ctx context.Context, o Options, logf func(format string, args ...any)) (*VM, error) {
	for attempt := 1; ; attempt++ {
		vm, err := Start(ctx, o)
		if err != nil {
			return nil, err
		}
		_, err = vm.expect(ctx, banner, false) // tests still read the console from its start
		if err == nil || !errors.Is(err, ErrExited) {
			return vm, err
		}
		if attempt == 2 {
			return vm, fmt.Errorf("QEMU died twice before the image's init started: %w", err)
		}
		logf("QEMU died before the image's init started (%v); booting again. The console's end:\n%s", err, tail(vm.Console(), 10))
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Expect waits for s on the console after the last match and returns the
// console text from the last match to the end of s.
func (vm *VM) Expect(ctx context.Context, s string) (string, error) {
	return vm.expect(ctx, s, true)
}

// expect waits for s after the last match and returns the text up to its
// end; with move the next match starts after it, without the cursor stays.
func (vm *VM) expect(ctx context.Context, s string, move bool) (string, error) {
	for {
		vm.mu.Lock()
		i := bytes.Index(vm.buf[vm.cursor:], []byte(s))
		ch := vm.notify
		if i >= 0 {
			out := string(vm.buf[vm.cursor : vm.cursor+i+len(s)])
			if move {
				vm.cursor += i + len(s)
			}
			vm.mu.Unlock()
			return out, nil
		}
		vm.mu.Unlock()
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("wait for %q on the console: %w", s, ctx.Err())
		case <-vm.exited:
			vm.mu.Lock()
			found := bytes.Contains(vm.buf[vm.cursor:], []byte(s))
			vm.mu.Unlock()
			if !found {
				return "", vm.exitError(fmt.Sprintf("wait for %q on the console", s))
			}
		case <-ch:
		}
	}
}

// ExpectAny waits for the first of several strings and returns its index.
func (vm *VM) ExpectAny(ctx context.Context, ss ...string) (int, error) {
	for {
		vm.mu.Lock()
		best, at := -1, -1
		for i, s := range ss {
			if j := bytes.Index(vm.buf[vm.cursor:], []byte(s)); j >= 0 && (at < 0 || j < at) {
				best, at = i, j
			}
		}
		ch := vm.notify
		if best >= 0 {
			vm.cursor += at + len(ss[best])
			vm.mu.Unlock()
			return best, nil
		}
		vm.mu.Unlock()
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("wait for %q on the console: %w", ss, ctx.Err())
		case <-vm.exited:
			return -1, vm.exitError(fmt.Sprintf("wait for %q on the console", ss))
		case <-ch:
		}
	}
}

// Since returns the console output after the last match.
func (vm *VM) Since() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return string(vm.buf[vm.cursor:])
}

// Console returns the whole console output.
func (vm *VM) Console() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return string(vm.buf)
}

// Send types a line on the serial console.
func (vm *VM) Send(line string) error {
	_, err := io.WriteString(vm.stdin, line+"\n")
	return err
}

// Answer waits for prompt and types answer.
func (vm *VM) Answer(ctx context.Context, prompt, answer string) error {
	if _, err := vm.Expect(ctx, prompt); err != nil {
		return err
	}
	return vm.Send(answer)
}

// QMP sends one command to QEMU's monitor and returns its answer.
func (vm *VM) QMP(ctx context.Context, command string) (json.RawMessage, error) {
	return vm.QMPArgs(ctx, command, nil)
}

// QMPArgs sends one command with arguments (nil: none), e.g. device_del
// {"id": "disk3"}.
func (vm *VM) QMPArgs(ctx context.Context, command string, args any) (json.RawMessage, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", vm.qmpPath)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	r := bufio.NewReader(c)
	if _, err := r.ReadBytes('\n'); err != nil { // greeting
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	var resp json.RawMessage
	for _, cmd := range []string{"qmp_capabilities", command} {
		req := map[string]any{"execute": cmd}
		if cmd == command && args != nil {
			req["arguments"] = args
		}
		b, err := json.Marshal(req)
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		if _, err := fmt.Fprintf(c, "%s\n", b); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return nil, fmt.Errorf("qmp %s: %w", cmd, err)
			}
			var m map[string]json.RawMessage
			if json.Unmarshal(line, &m) != nil {
				continue
			}
			if e, ok := m["error"]; ok {
				return nil, fmt.Errorf("qmp %s: %s", cmd, e)
			}
			if rr, ok := m["return"]; ok {
				resp = rr
				break
			}
		}
	}
	return resp, nil
}

// PowerButton presses the ACPI power button.
func (vm *VM) PowerButton(ctx context.Context) error {
	_, err := vm.QMP(ctx, "system_powerdown")
	return err
}

// Wait waits for QEMU to exit and returns its exit error.
func (vm *VM) Wait(ctx context.Context) error {
	select {
	case <-vm.exited:
		vm.mu.Lock()
		defer vm.mu.Unlock()
		return vm.err
	case <-ctx.Done():
		return fmt.Errorf("wait for qemu to exit: %w", ctx.Err())
	}
}

// Kill cuts the power: QEMU is killed at once.
func (vm *VM) Kill() {
	if vm.cmd.Process != nil && !vm.Exited() { // once reaped, the group's id may be another's
		vm.mu.Lock()
		vm.killed = true
		vm.mu.Unlock()
		_ = syscall.Kill(-vm.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-vm.exited
}

// Exited reports whether QEMU has exited.
func (vm *VM) Exited() bool {
	select {
	case <-vm.exited:
		return true
	default:
		return false
	}
}

// FreePort returns a TCP port free on 127.0.0.1 now.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
