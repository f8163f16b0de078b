// Command panelemu is the front panel, emulated inside the test image: a
// USB gadget made through configfs with one FunctionFS function, bound to
// dummy_hcd's UDC, so the guest kernel's own USB host stack enumerates it
// and the firmware's gousb driver talks to it as to the real unit
// (docs/panel.md). It keeps the LCD and LED and takes commands from the
// host test on the virtio-serial port "vaultnode.panel", one per line:
//
//	key up|down|enter|back   press a key           -> ok
//	state                    LCD, LED, greetings   -> one JSON line
//	unplug / plug            unbind / bind the UDC -> ok
//
// PID 1 runs it (kernel flag vaultnode.testpanel=1); it is in the test
// image only.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"

	"vaultnode/firmware/panel"
)

const (
	gadget = "/sys/kernel/config/usb_gadget/vnpanel"
	ffsDir = "/dev/ffs-panel"
	serial = "VNP-TEST-0001"
	port   = "vaultnode.panel"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "panelemu:", err)
		os.Exit(1)
	}
}

type emu struct {
	mu     sync.Mutex
	lines  [panel.Rows][]byte
	led    panel.LED
	hellos int
	frames int
	errors []string
	ver    uint8
	udc    string
	in     *os.File // ep2: bulk IN (device -> host)
	inMu   sync.Mutex
}

func run() error {
	for _, m := range []string{"configfs", "libcomposite", "usb_f_fs", "dummy_hcd", "virtio_console"} {
		if err := kmodule.Probe(m, ""); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load %s: %w", m, err)
		}
	}
	if err := unix.Mount("configfs", "/sys/kernel/config", "configfs", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount configfs: %w", err)
	}
	e := &emu{ver: panel.Version}
	for i := range e.lines {
		e.lines[i] = bytes.Repeat([]byte{' '}, panel.Cols)
	}
	if err := makeGadget(); err != nil {
		return err
	}
	if err := os.MkdirAll(ffsDir, 0o755); err != nil {
		return fmt.Errorf("make %s: %w", ffsDir, err)
	}
	if err := unix.Mount("panel", ffsDir, "functionfs", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount functionfs: %w", err)
	}
	ep0, err := os.OpenFile(filepath.Join(ffsDir, "ep0"), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open ep0: %w", err)
	}
	if _, err := ep0.Write(descriptors()); err != nil {
		return fmt.Errorf("write descriptors to ep0: %w", err)
	}
	if _, err := ep0.Write(stringsDesc()); err != nil {
		return fmt.Errorf("write strings to ep0: %w", err)
	}
	out, err := os.OpenFile(filepath.Join(ffsDir, "ep1"), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open ep1: %w", err)
	}
	if e.in, err = os.OpenFile(filepath.Join(ffsDir, "ep2"), os.O_RDWR, 0); err != nil {
		return fmt.Errorf("open ep2: %w", err)
	}
	udcs, _ := filepath.Glob("/sys/class/udc/*")
	if len(udcs) == 0 {
		return errors.New("no UDC: is dummy_hcd loaded?")
	}
	e.udc = filepath.Base(udcs[0])
	go e.events(ep0) // the process's life
	go e.serveOut(out)
	if err := e.bind(true); err != nil {
		return err
	}
	fmt.Println("panelemu: gadget bound to", e.udc)
	return e.commands()
}

func write(path, val string) error {
	if err := os.WriteFile(path, []byte(val), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func makeGadget() error {
	for _, d := range []string{gadget, gadget + "/strings/0x409", gadget + "/configs/c.1/strings/0x409", gadget + "/functions/ffs.panel"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("make %s: %w", d, err)
		}
	}
	for f, v := range map[string]string{
		"idVendor": fmt.Sprintf("0x%04x", panel.VendorID), "idProduct": fmt.Sprintf("0x%04x", panel.ProductID), "bcdUSB": "0x0200",
		"strings/0x409/manufacturer": "vaultnode", "strings/0x409/product": "vaultnode front panel",
		"strings/0x409/serialnumber": serial, "configs/c.1/strings/0x409/configuration": "panel", "configs/c.1/MaxPower": "100",
	} {
		if err := write(filepath.Join(gadget, f), v); err != nil {
			return err
		}
	}
	link := gadget + "/configs/c.1/ffs.panel"
	if err := os.Symlink(gadget+"/functions/ffs.panel", link); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("link the function into the configuration: %w", err)
	}
	return nil
}

func (e *emu) bind(on bool) error {
	v := "\n"
	if on {
		v = e.udc
	}
	return write(gadget+"/UDC", v)
}

// descriptors are FunctionFS v2 descriptors: full and high speed, one
// vendor interface with a bulk OUT then a bulk IN endpoint.
func descriptors() []byte {
	intf := []byte{9, 4, 0, 0, 2, panel.IfaceClass, panel.IfaceSub, panel.IfaceProto, 1}
	ep := func(addr byte, size uint16) []byte {
		return []byte{7, 5, addr, 2, byte(size), byte(size >> 8), 0}
	}
	var body []byte
	body = binary.LittleEndian.AppendUint32(body, 3) // fs count
	body = binary.LittleEndian.AppendUint32(body, 3) // hs count
	for _, size := range []uint16{64, 512} {
		body = append(body, intf...)
		body = append(body, ep(0x01, size)...)
		body = append(body, ep(0x82, size)...)
	}
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, 3) // FUNCTIONFS_DESCRIPTORS_MAGIC_V2
	b = binary.LittleEndian.AppendUint32(b, uint32(12+len(body)))
	b = binary.LittleEndian.AppendUint32(b, 1|2) // HAS_FS_DESC | HAS_HS_DESC
	return append(b, body...)
}

func stringsDesc() []byte {
	s := "vaultnode front panel\x00"
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, 2) // FUNCTIONFS_STRINGS_MAGIC
	b = binary.LittleEndian.AppendUint32(b, uint32(16+2+len(s)))
	b = binary.LittleEndian.AppendUint32(b, 1) // strings
	b = binary.LittleEndian.AppendUint32(b, 1) // languages
	b = binary.LittleEndian.AppendUint16(b, 0x0409)
	return append(b, s...)
}

// events reads ep0's events; set-up requests are stalled (none is defined).
func (e *emu) events(ep0 *os.File) {
	names := []string{"bind", "unbind", "enable", "disable", "setup", "suspend", "resume"}
	buf := make([]byte, 12*4)
	for {
		n, err := ep0.Read(buf)
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			fmt.Fprintln(os.Stderr, "panelemu: read ep0:", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for i := 0; i+12 <= n; i += 12 {
			t := int(buf[i+8])
			name := fmt.Sprint(t)
			if t < len(names) {
				name = names[t]
			}
			fmt.Println("panelemu: event", name)
			if t == 4 { // SETUP: stall by answering in the wrong direction
				if buf[i]&0x80 != 0 {
					_, _ = ep0.Write(nil)
				} else {
					_, _ = ep0.Read(nil)
				}
			}
			if t == 1 || t == 3 { // unplugged or disabled: the unit forgets its screen
				e.mu.Lock()
				for r := range e.lines {
					e.lines[r] = bytes.Repeat([]byte{' '}, panel.Cols)
				}
				e.led = panel.LED{}
				e.mu.Unlock()
			}
		}
	}
}

// serveOut reads the host's frames from the bulk OUT endpoint.
func (e *emu) serveOut(out *os.File) {
	var dec panel.Decoder
	buf := make([]byte, 512)
	for {
		n, err := out.Read(buf)
		if err != nil { // not enabled (unplugged): wait for the host again
			dec.Reset()
			time.Sleep(50 * time.Millisecond)
			continue
		}
		dec.Feed(buf[:n])
		for {
			f, ok, err := dec.Next()
			if err != nil {
				e.send(panel.ErrorFrame(e.ver, panel.ErrCodeFrame, err.Error()))
				dec.Reset()
				break
			}
			if !ok {
				break
			}
			e.frame(f)
		}
	}
}

func (e *emu) frame(f panel.Frame) {
	e.mu.Lock()
	e.frames++
	e.mu.Unlock()
	if f.Type != panel.THello && f.Version != e.ver {
		e.send(panel.ErrorFrame(e.ver, panel.ErrCodeVersion, fmt.Sprintf("frame version %d, speaking %d", f.Version, e.ver)))
		return
	}
	switch f.Type {
	case panel.THello:
		if len(f.Payload) < 1 || f.Payload[0] < 1 {
			e.send(panel.ErrorFrame(1, panel.ErrCodeVersion, "no version this panel speaks"))
			return
		}
		e.mu.Lock()
		e.hellos++
		e.ver = min(f.Payload[0], panel.Version)
		e.mu.Unlock()
		e.send(panel.HelloReply{Version: e.ver, Cols: panel.Cols, Rows: panel.Rows, Serial: serial}.Frame())
	case panel.TText:
		row, col, s, err := panel.ParseText(f.Payload)
		if err != nil {
			e.refuse(err)
			return
		}
		e.mu.Lock()
		copy(e.lines[row][col:], s)
		e.mu.Unlock()
	case panel.TClear:
		e.mu.Lock()
		for r := range e.lines {
			e.lines[r] = bytes.Repeat([]byte{' '}, panel.Cols)
		}
		e.mu.Unlock()
	case panel.TLED:
		l, err := panel.ParseLED(f.Payload)
		if err != nil {
			e.refuse(err)
			return
		}
		e.mu.Lock()
		e.led = l
		e.mu.Unlock()
	case panel.TPing:
		seq, err := panel.ParseSeq(f.Payload)
		if err != nil {
			e.refuse(err)
			return
		}
		e.send(panel.Pong(e.ver, seq))
	default:
		e.send(panel.ErrorFrame(e.ver, panel.ErrCodeType, fmt.Sprintf("unknown frame type %#x", f.Type)))
	}
}

func (e *emu) refuse(err error) {
	e.mu.Lock()
	e.errors = append(e.errors, err.Error())
	e.mu.Unlock()
	e.send(panel.ErrorFrame(e.ver, panel.ErrCodeArgument, err.Error()))
}

// send writes a frame to the bulk IN endpoint; while the host is away it
// is lost, as on the real unit.
func (e *emu) send(f panel.Frame) error {
	b, err := f.Encode()
	if err != nil {
		return err
	}
	e.inMu.Lock()
	defer e.inMu.Unlock()
	if _, err := e.in.Write(b); err != nil {
		return fmt.Errorf("write to the host: %w", err)
	}
	return nil
}

// State is the answer to "state".
type State struct {
	Lines  []string `json:"lines"`
	LED    string   `json:"led"`
	Hellos int      `json:"hellos"`
	Frames int      `json:"frames"`
	Errors []string `json:"errors"`
}

func (e *emu) state() State {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := State{LED: e.led.String(), Hellos: e.hellos, Frames: e.frames, Errors: e.errors}
	for _, l := range e.lines {
		s.Lines = append(s.Lines, string(l))
	}
	return s
}

// commands serves the host test on the virtio-serial port.
func (e *emu) commands() error {
	var dev string
	for i := 0; i < 100 && dev == ""; i++ {
		ports, _ := filepath.Glob("/sys/class/virtio-ports/*")
		for _, p := range ports {
			if b, _ := os.ReadFile(p + "/name"); strings.TrimSpace(string(b)) == port {
				dev = "/dev/" + filepath.Base(p)
			}
		}
		if dev == "" {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if dev == "" {
		return fmt.Errorf("no virtio-serial port named %s (QEMU: -device virtserialport,name=%s)", port, port)
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	fmt.Println("panelemu: commands on", dev)
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) { // the host side is not connected yet
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return fmt.Errorf("read commands: %w", err)
		}
		fmt.Fprintln(f, e.command(strings.Fields(line)))
	}
}

func (e *emu) command(args []string) string {
	if len(args) == 0 {
		return "error: empty command"
	}
	switch {
	case args[0] == "key" && len(args) == 2:
		k, err := panel.ParseKey(args[1])
		if err != nil {
			return "error: " + err.Error()
		}
		if err := e.send(panel.KeyFrame(e.ver, k)); err != nil {
			return "error: " + err.Error()
		}
		return "ok"
	case args[0] == "state":
		b, _ := json.Marshal(e.state())
		return string(b)
	case args[0] == "unplug" || args[0] == "plug":
		if err := e.bind(args[0] == "plug"); err != nil {
			return "error: " + err.Error()
		}
		return "ok"
	}
	return "error: unknown command " + args[0]
}
