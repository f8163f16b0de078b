package hwtest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Tape library lab (docs/tape.md, "The QEMU/tgt lab"): tgt's virtual tape
// library (a medium changer and drives backed by files) served over iSCSI
// on 127.0.0.1, attached by QEMU's libiscsi as scsi-generic devices on
// virtio-scsi, so the appliance sees /dev/sg*, /dev/nst* and /dev/sch*.
//
// tgt 1.0.85's bugs are worked around here, in the setup, never in the
// product (LAB.md section 5):
//   - each test runs its own tgtd with its own control port (-C) and iSCSI
//     port, and fresh media files: changer state lives in tgtd's memory;
//   - media_home + "/" + barcode must fit in 128 bytes: the media directory
//     is a short one under /tmp, not t.TempDir();
//   - tgtd ignores SIGTERM: it is stopped through tgtadm, or killed;
//   - the product asks one element type per READ ELEMENT STATUS (tgt
//     corrupts a type-0 answer and then crashes); nothing to do here;
//   - tgt copies a READ ELEMENT STATUS answer 8 bytes short, which cuts the
//     last descriptor's tail: with DVCID that is the end of the last drive's
//     serial number. The library therefore gets one more drive element than
//     drives, last and without a drive (an empty drive bay, which real
//     libraries have too), so every real drive's serial arrives whole;
//   - tgt puts at most 10 characters of a drive's serial number in DVCID:
//     the drives' serial numbers (tgtadm scsi_sn) are at most 10 long;
//   - drives sit at LUNs in the opposite order of their drive elements, so
//     device order and element order differ and only matching by serial
//     number (DVCID against VPD page 80h) pairs them right.

// Cartridge is a virtual cartridge: a tgtimg media file named by its
// barcode in the library's media directory.
type Cartridge struct {
	Barcode string
	SizeMB  int // capacity; tgt reports end of medium past it
}

// LibraryConfig describes a virtual library.
type LibraryConfig struct {
	// Drives are the drives' serial numbers (at most 10 characters), drive
	// element i+1 holding Drives[i].
	Drives []string
	// Slots is the number of storage elements (addresses from SlotBase);
	// Cartridges fill the first slots, in order.
	Slots      int
	Cartridges []Cartridge
	// IE is the number of import/export elements (addresses from IEBase).
	IE int
}

// Element addresses of the virtual library.
const (
	VTLPicker    = 16
	VTLIEBase    = 32
	VTLSlotBase  = 1024
	VTLDriveBase = 1
	vtlIQN       = "iqn.2026-12.test.vaultnode:vtl"
)

// Library is a running (or stopped) tgtd serving one virtual library.
type Library struct {
	Config LibraryConfig
	Dir    string // media directory (short path)
	Port   int    // iSCSI port on 127.0.0.1
	cn     int    // tgtd control port number (-C)
	cmd    *exec.Cmd
	exited chan struct{}
	log    *os.File
	logf   func(string, ...any)
}

// StartLibrary makes fresh media and starts tgtd with the library.
func StartLibrary(ctx context.Context, cfg LibraryConfig, logf func(string, ...any)) (*Library, error) {
	for _, tool := range []string{"tgtd", "tgtadm", "tgtimg"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("start tape library: %s is missing (apt-get install tgt): %w", tool, err)
		}
	}
	if _, err := os.Stat("/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so"); err != nil {
		return nil, fmt.Errorf("start tape library: QEMU has no iSCSI block driver (apt-get install qemu-block-extra): %w", err)
	}
	for _, s := range cfg.Drives {
		if len(s) == 0 || len(s) > 10 {
			return nil, fmt.Errorf("start tape library: drive serial %q: tgt carries 1 to 10 characters in DVCID", s)
		}
	}
	if len(cfg.Cartridges) > cfg.Slots {
		return nil, fmt.Errorf("start tape library: %d cartridges for %d slots", len(cfg.Cartridges), cfg.Slots)
	}
	dir, err := os.MkdirTemp("/tmp", "vtl")
	if err != nil {
		return nil, fmt.Errorf("make media directory: %w", err)
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	l := &Library{Config: cfg, Dir: dir, Port: port, logf: logf}
	if l.logf == nil {
		l.logf = func(string, ...any) {}
	}
	if err := l.makeMedia(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := l.Start(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return l, nil
}

func (l *Library) makeMedia(ctx context.Context) error {
	if err := os.WriteFile(filepath.Join(l.Dir, "smc"), make([]byte, 1024), 0o644); err != nil {
		return fmt.Errorf("make changer backing file: %w", err)
	}
	imgs := []Cartridge{}
	for i := range l.Config.Drives {
		imgs = append(imgs, Cartridge{Barcode: fmt.Sprintf("NOTAPE%d", i), SizeMB: 1})
	}
	imgs = append(imgs, l.Config.Cartridges...)
	for _, c := range imgs {
		if err := run(ctx, "tgtimg", "--op", "new", "--device-type", "tape", "--barcode", c.Barcode,
			"--size", fmt.Sprint(c.SizeMB), "--type", "data", "--file", filepath.Join(l.Dir, c.Barcode)); err != nil {
			return fmt.Errorf("make cartridge %s: %w", c.Barcode, err)
		}
	}
	return nil
}

func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// pickControlPort finds a tgtd control port number whose socket is free.
func pickControlPort(port int) int {
	for cn := 100 + port%800; ; cn++ {
		if _, err := os.Stat(fmt.Sprintf("/var/run/tgtd/socket.%d", cn)); errors.Is(err, os.ErrNotExist) {
			return cn
		}
	}
}

// Start starts tgtd and configures the library: every cartridge in its
// home slot, drives empty. After Kill, Start serves the same media files
// again (what a library does after a power cycle: the cartridges are back
// in their slots, the data on them kept).
func (l *Library) Start(ctx context.Context) error {
	if l.cmd != nil && !l.exitedNow() {
		return errors.New("start tgtd: already running")
	}
	l.cn = pickControlPort(l.Port)
	logf, err := os.OpenFile(filepath.Join(l.Dir, "tgtd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open tgtd log: %w", err)
	}
	// Not tied to ctx: the library outlives single steps; Stop or Kill
	// ends it, and the test's cleanup calls Stop.
	cmd := exec.Command("tgtd", "-f", "-C", fmt.Sprint(l.cn), "--iscsi", fmt.Sprintf("portal=127.0.0.1:%d", l.Port))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start tgtd: %w", err)
	}
	l.cmd, l.log, l.exited = cmd, logf, make(chan struct{})
	go func() { // owned by the Library: ends when tgtd exits (Stop or Kill)
		err := cmd.Wait()
		fmt.Fprintf(logf, "tgtd-exit: %v\n", err)
		logf.Close()
		close(l.exited)
	}()
	for i := 0; ; i++ {
		if l.adm(ctx, "--op", "show", "--mode", "system") == nil {
			break
		}
		if l.exitedNow() || i > 100 {
			return fmt.Errorf("start tgtd: it did not answer on control port %d; see %s/tgtd.log", l.cn, l.Dir)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := l.configure(ctx); err != nil {
		l.Kill()
		return err
	}
	l.logf("tape library: tgtd pid %d on 127.0.0.1:%d (control %d), media in %s", cmd.Process.Pid, l.Port, l.cn, l.Dir)
	return nil
}

func (l *Library) exitedNow() bool {
	select {
	case <-l.exited:
		return true
	default:
		return false
	}
}

func (l *Library) adm(ctx context.Context, args ...string) error {
	return run(ctx, "tgtadm", append([]string{"-C", fmt.Sprint(l.cn), "--lld", "iscsi"}, args...)...)
}

// ChangerLUN is the changer's LUN; drive i is at LUN DriveLUN(i).
const ChangerLUN = 1

// DriveLUN returns the LUN of drive i: the drives sit in the opposite order
// of their elements.
func (l *Library) DriveLUN(i int) int { return ChangerLUN + len(l.Config.Drives) - i }

func (l *Library) configure(ctx context.Context) error {
	lu := func(lun int, args ...string) error {
		return l.adm(ctx, append([]string{"--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", fmt.Sprint(lun)}, args...)...)
	}
	steps := [][]string{{"--op", "new", "--mode", "target", "--tid", "1", "-T", vtlIQN}}
	for i := range l.Config.Drives {
		steps = append(steps, []string{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", fmt.Sprint(l.DriveLUN(i)),
			"-b", filepath.Join(l.Dir, fmt.Sprintf("NOTAPE%d", i)), "--device-type=tape"})
	}
	steps = append(steps, []string{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", fmt.Sprint(ChangerLUN),
		"-b", filepath.Join(l.Dir, "smc"), "--device-type=changer"})
	for _, s := range steps {
		if err := l.adm(ctx, s...); err != nil {
			return fmt.Errorf("configure tape library: %w", err)
		}
	}
	for i, serial := range l.Config.Drives {
		if err := lu(l.DriveLUN(i), "--params", "scsi_sn="+serial); err != nil {
			return fmt.Errorf("configure drive %d: %w", i, err)
		}
		if err := lu(l.DriveLUN(i), "--params", "online=0"); err != nil {
			return fmt.Errorf("configure drive %d: %w", i, err)
		}
	}
	params := []string{
		"media_home=" + l.Dir,
		fmt.Sprintf("element_type=1,start_address=%d,quantity=1", VTLPicker),
		// One drive element more than drives: see the package comment.
		fmt.Sprintf("element_type=4,start_address=%d,quantity=%d", VTLDriveBase, len(l.Config.Drives)+1),
	}
	for i := range l.Config.Drives {
		params = append(params, fmt.Sprintf("element_type=4,address=%d,tid=1,lun=%d", VTLDriveBase+i, l.DriveLUN(i)))
	}
	params = append(params, fmt.Sprintf("element_type=2,start_address=%d,quantity=%d", VTLSlotBase, l.Config.Slots))
	for i, c := range l.Config.Cartridges {
		params = append(params, fmt.Sprintf("element_type=2,address=%d,barcode=%s,sides=1", VTLSlotBase+i, c.Barcode))
	}
	if l.Config.IE > 0 {
		params = append(params, fmt.Sprintf("element_type=3,start_address=%d,quantity=%d", VTLIEBase, l.Config.IE))
	}
	for _, p := range params {
		if err := lu(ChangerLUN, "--params", p); err != nil {
			return fmt.Errorf("configure changer: %w", err)
		}
	}
	if err := l.adm(ctx, "--op", "bind", "--mode", "target", "--tid", "1", "-I", "127.0.0.1"); err != nil {
		return fmt.Errorf("configure tape library: %w", err)
	}
	return nil
}

// TakeOut empties import/export element addr, as an operator taking the
// cartridge out of the mail slot.
func (l *Library) TakeOut(ctx context.Context, addr int) error {
	return l.adm(ctx, "--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", fmt.Sprint(ChangerLUN),
		"--params", fmt.Sprintf("element_type=3,address=%d,clear_slot=1", addr))
}

// PutIn puts the cartridge barcode into import/export element addr, as an
// operator does; its media file must be in the media directory.
func (l *Library) PutIn(ctx context.Context, addr int, barcode string) error {
	return l.adm(ctx, "--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", fmt.Sprint(ChangerLUN),
		"--params", fmt.Sprintf("element_type=3,address=%d,barcode=%s,sides=1", addr, barcode))
}

// QEMUArgs attaches the library's LUNs as scsi-generic devices on a
// virtio-scsi controller.
func (l *Library) QEMUArgs() []string {
	args := []string{"-device", "virtio-scsi-pci,id=tapescsi"}
	luns := []int{ChangerLUN}
	for i := range l.Config.Drives {
		luns = append(luns, l.DriveLUN(i))
	}
	for _, lun := range luns {
		args = append(args,
			"-drive", fmt.Sprintf("if=none,id=tape%d,file=iscsi://127.0.0.1:%d/%s/%d,format=raw", lun, l.Port, vtlIQN, lun),
			"-device", fmt.Sprintf("scsi-generic,drive=tape%d,bus=tapescsi.0,channel=0,scsi-id=0,lun=%d", lun, lun))
	}
	return args
}

// Kill kills tgtd at once (SIGKILL), as a library losing power: what was
// written to the media files stays.
func (l *Library) Kill() {
	if l.cmd == nil || l.exitedNow() {
		return
	}
	_ = syscall.Kill(-l.cmd.Process.Pid, syscall.SIGKILL)
	<-l.exited
	os.Remove(fmt.Sprintf("/var/run/tgtd/socket.%d", l.cn))
	os.Remove(fmt.Sprintf("/var/run/tgtd/socket.%d.lock", l.cn))
}

// Stop stops tgtd cleanly (it ignores SIGTERM) and reports whether it had
// crashed before (tgt segfaults on some requests: LAB.md section 5).
func (l *Library) Stop(ctx context.Context) error {
	if l.cmd == nil {
		return nil
	}
	if l.exitedNow() {
		return fmt.Errorf("tgtd had exited by itself: %s", l.tail())
	}
	_ = l.adm(ctx, "--op", "delete", "--mode", "target", "--tid", "1", "--force")
	_ = run(ctx, "tgtadm", "-C", fmt.Sprint(l.cn), "--op", "delete", "--mode", "system")
	select {
	case <-l.exited:
	case <-time.After(5 * time.Second):
		l.Kill()
	}
	return nil
}

// Close stops tgtd and removes the media.
func (l *Library) Close() {
	l.Kill()
	os.RemoveAll(l.Dir)
}

// Log returns the tail of tgtd's log.
func (l *Library) tail() string {
	b, _ := os.ReadFile(filepath.Join(l.Dir, "tgtd.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// MediaBlock is one block of a tgt media file as it lies on the host's
// disk: what the drive wrote, independent of any read through QEMU.
type MediaBlock struct {
	Type   uint32 // tgt's block type: mediaData, mediaFilemark, mediaEOD, ...
	Num    uint64 // tgt's block number
	Size   uint32 // the block's length
	Offset int64  // where its data starts in the media file
}

// tgt's block types (usr/bs_ssc.h).
const (
	mediaData     = 0x02
	mediaBOT      = 0x10
	mediaEOD      = 0x20
	mediaFilemark = 0x40
)

// mediaHeader is the size of tgt's on-disk block header (struct
// blk_header: checksum, sizes, type, number, prev/curr/next, big-endian).
const mediaHeader = 48

// ReadMedia lists the blocks of a tgt media file, from the beginning of
// tape to the end of data, following each header's next pointer.
func ReadMedia(path string) ([]MediaBlock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read media %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read media %s: %w", path, err)
	}
	var blocks []MediaBlock
	h := make([]byte, mediaHeader)
	for off := int64(0); ; {
		if _, err := f.ReadAt(h, off); err != nil {
			return blocks, fmt.Errorf("read media %s: header at %d: %w", path, off, err)
		}
		b := MediaBlock{Size: binary.BigEndian.Uint32(h[8:]), Type: binary.BigEndian.Uint32(h[12:]),
			Num: binary.BigEndian.Uint64(h[16:]), Offset: off + mediaHeader}
		curr, next := int64(binary.BigEndian.Uint64(h[32:])), int64(binary.BigEndian.Uint64(h[40:]))
		if curr != off {
			return blocks, fmt.Errorf("read media %s: header at %d says it is at %d", path, off, curr)
		}
		if b.Type == mediaEOD {
			return blocks, nil
		}
		if b.Type != mediaBOT {
			blocks = append(blocks, b)
		}
		if next <= off || next > st.Size() || len(blocks) > 1<<22 {
			return blocks, fmt.Errorf("read media %s: header at %d points to %d (file of %d bytes)", path, off, next, st.Size())
		}
		off = next
	}
}
