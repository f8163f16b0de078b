// Command tapeprobe runs in the appliance image under QEMU (hwtest) and
// drives the tape library attached there through the product's packages
// (discover, changer, drive) over real SG_IO. It prints one line per check,
// "TAPEPROBE PASS name" or "TAPEPROBE FAIL name: why", then
// "TAPEPROBE-DONE pass=N fail=M", for the host test to read on the console.
//
//	tapeprobe scan                       discovery: libraries, drives by serial
//	tapeprobe selftest BARCODE           the drive and changer over SG_IO
//	tapeprobe write BARCODE DIR          DIR as a tar archive in tape file 1 (file 0: a label archive)
//	tapeprobe export BARCODE | import IE move through the import/export slot
//	tapeprobe b64 FILE                   FILE in base64, between TAPEPROBE B64 BEGIN and END lines
//	tapeprobe rate BARCODE DRIVE MIB     stream MIB MiB of 256 KiB blocks, print the rate
//	tapeprobe modes BARCODE DRIVE MIB N  the same through every write path (synchronous SG_IO, direct I/O,
//	                                     queued WRITEs, the st driver, dd), N rounds, one rate line each
//	tapeprobe soak BARCODE DRIVE MIB N   write numbered blocks, read them back N times, report any that differ
//	                                     (N < 0: -N times, unloading and loading the cartridge before each)
//	tapeprobe sigstorm BARCODE DRIVE N   write N numbered blocks and read them back while signals hit the
//	                                     thread waiting in each command (a command must run once, not again)
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"vaultnode/appliance/tape/changer"
	"vaultnode/appliance/tape/discover"
	"vaultnode/appliance/tape/drive"
	"vaultnode/appliance/tape/scsi"
	"vaultnode/internal/clock"
)

func main() {
	p := &probe{out: os.Stdout}
	err := p.run(context.Background(), os.Args[1:])
	fmt.Fprintf(p.out, "TAPEPROBE-DONE pass=%d fail=%d\n", p.pass, p.fail)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tapeprobe:", err)
		os.Exit(1)
	}
	if p.fail > 0 {
		os.Exit(3)
	}
}

type probe struct {
	out        io.Writer
	pass, fail int
}

func (p *probe) check(name string, err error) bool {
	if err != nil {
		p.fail++
		fmt.Fprintf(p.out, "TAPEPROBE FAIL %s: %v\n", name, err)
		return false
	}
	p.pass++
	fmt.Fprintf(p.out, "TAPEPROBE PASS %s\n", name)
	return true
}

func (p *probe) note(format string, args ...any) {
	fmt.Fprintf(p.out, "TAPEPROBE NOTE "+format+"\n", args...)
}

// catalog prints what the changer tells it: the physical state only.
type catalog struct{ p *probe }

func (c catalog) Reconcile(ctx context.Context, inv changer.Inventory) error {
	var full []string
	for _, e := range inv.All() {
		if e.Full {
			full = append(full, e.String())
		}
	}
	c.p.note("catalog reconciled: %s", strings.Join(full, ", "))
	return nil
}

type lab struct {
	lib    discover.Library
	h      *scsi.Device
	chg    *changer.Library
	drives map[uint16]*scsi.Device
}

func (l *lab) close() {
	l.h.Close()
	for _, d := range l.drives {
		d.Close()
	}
}

func (l *lab) drive(addr uint16) (*drive.Drive, error) {
	d, ok := l.lib.DriveAt(addr)
	if !ok {
		return nil, fmt.Errorf("no drive device matched to element %d", addr)
	}
	if h, ok := l.drives[addr]; ok {
		return drive.New(retry(h), nil), nil
	}
	h, err := scsi.Open(d.Device.Path)
	if err != nil {
		return nil, err
	}
	l.drives[addr] = h
	return drive.New(retry(h), nil), nil
}

func retry(h scsi.Executor) *scsi.Retry {
	return &scsi.Retry{Next: h, Clock: clock.Real{}, Log: zap.NewNop(), ReadyWait: 2 * time.Minute, Interval: 200 * time.Millisecond}
}

func (p *probe) open(ctx context.Context) (*lab, error) {
	nodes, err := discover.Nodes("/dev")
	if err != nil {
		return nil, err
	}
	res, err := discover.Scan(ctx, nil, discover.OpenSG(clock.Real{}, zap.NewNop(), 2*time.Minute), nodes)
	for _, pr := range res.Problems {
		p.note("scan problem: %s", pr)
	}
	if err != nil {
		return nil, err
	}
	lib := res.Libraries[0]
	h, err := scsi.Open(lib.Changer.Path)
	if err != nil {
		return nil, err
	}
	return &lab{lib: lib, h: h, chg: changer.New(retry(h), nil), drives: map[uint16]*scsi.Device{}}, nil
}

func (p *probe) run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: tapeprobe scan|selftest|write|export|import|rate ...")
	}
	// Helpers for the support shell, which has no redirection or hashing.
	switch args[0] {
	case "capture": // capture FILE CMD ARGS...: CMD's standard output into FILE
		if len(args) < 3 {
			return errors.New("usage: tapeprobe capture FILE CMD ARGS...")
		}
		cmd := exec.CommandContext(ctx, args[2], args[3:]...)
		cmd.Stderr = p.out
		out, err := cmd.Output()
		if err == nil {
			err = os.WriteFile(args[1], out, 0o600)
		}
		p.check("capture "+args[2], err)
		return nil
	case "b64": // b64 FILE: a binary file (a profile) for the host over the console
		if len(args) != 2 {
			return errors.New("usage: tapeprobe b64 FILE")
		}
		b, err := os.ReadFile(args[1])
		if p.check("read "+args[1], err) {
			enc := base64.StdEncoding.EncodeToString(b)
			fmt.Fprintln(p.out, "TAPEPROBE B64 BEGIN")
			for len(enc) > 0 {
				n := min(len(enc), 76)
				fmt.Fprintln(p.out, enc[:n])
				enc = enc[n:]
			}
			fmt.Fprintln(p.out, "TAPEPROBE B64 END")
		}
		return nil
	case "sums": // sums DIR: the SHA-256 of every regular file under DIR
		err := filepath.WalkDir(args[1], func(path string, de fs.DirEntry, err error) error {
			if err != nil || !de.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(args[1], path)
			fmt.Fprintf(p.out, "TAPEPROBE SUM %x %s\n", sha256.Sum256(b), rel)
			return nil
		})
		p.check("sums of "+args[1], err)
		return nil
	}
	l, err := p.open(ctx)
	if !p.check("discover", err) {
		return nil
	}
	defer l.close()
	p.note("changer %s", l.lib.Changer)
	for _, d := range l.lib.Drives {
		p.note("drive element %d = %s tape %s", d.Element, d.Device, stNode(d.Device.Path))
	}
	for _, u := range l.lib.Unmatched {
		p.note("drive element %d unmatched: %s", u.Element, u.Reason)
	}
	for _, e := range l.lib.Inventory.All() {
		p.note("element %s", e)
	}
	switch args[0] {
	case "scan":
		return nil
	case "selftest":
		if len(args) != 2 {
			return errors.New("usage: tapeprobe selftest BARCODE")
		}
		p.selftest(ctx, l, args[1])
	case "write":
		if len(args) != 3 {
			return errors.New("usage: tapeprobe write BARCODE DIR")
		}
		p.writeTar(ctx, l, args[1], args[2])
	case "export":
		_, err := l.chg.Export(ctx, args[1], catalog{p})
		p.check("export "+args[1], err)
	case "import":
		ie, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		_, err = l.chg.Import(ctx, uint16(ie), catalog{p})
		p.check("import from "+args[1], err)
	case "load":
		if len(args) != 3 {
			return errors.New("usage: tapeprobe load BARCODE DRIVE")
		}
		addr, err := strconv.Atoi(args[2])
		if err != nil {
			return err
		}
		if d, ok := p.load(ctx, l, args[1], uint16(addr)); ok {
			p.check("rewind", d.Rewind(ctx))
		}
	case "unload":
		addr, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		if d, err := l.drive(uint16(addr)); p.check("open drive", err) {
			p.unload(ctx, l, d, uint16(addr))
		}
	case "compare":
		p.check(fmt.Sprintf("%s and %s identical", args[1], args[2]), compareDirs(args[1], args[2]))
	case "stream":
		if len(args) != 4 {
			return errors.New("usage: tapeprobe stream BARCODE DRIVE MIB")
		}
		addr, _ := strconv.Atoi(args[2])
		mib, _ := strconv.Atoi(args[3])
		p.stream(ctx, l, args[1], uint16(addr), mib)
	case "resume":
		if len(args) != 3 {
			return errors.New("usage: tapeprobe resume BARCODE DRIVE")
		}
		addr, _ := strconv.Atoi(args[2])
		p.resumeStream(ctx, l, args[1], uint16(addr))
	case "locatebench":
		if len(args) != 5 {
			return errors.New("usage: tapeprobe locatebench BARCODE DRIVE FILES MIB")
		}
		addr, _ := strconv.Atoi(args[2])
		files, _ := strconv.Atoi(args[3])
		mib, _ := strconv.Atoi(args[4])
		p.locateBench(ctx, l, args[1], uint16(addr), files, mib)
	case "soak":
		if len(args) != 5 {
			return errors.New("usage: tapeprobe soak BARCODE DRIVE MIB PASSES")
		}
		addr, _ := strconv.Atoi(args[2])
		mib, _ := strconv.Atoi(args[3])
		passes, _ := strconv.Atoi(args[4])
		p.soak(ctx, l, args[1], uint16(addr), mib, passes)
	case "sigstorm":
		if len(args) != 4 {
			return errors.New("usage: tapeprobe sigstorm BARCODE DRIVE BLOCKS")
		}
		addr, _ := strconv.Atoi(args[2])
		n, _ := strconv.Atoi(args[3])
		p.sigstorm(ctx, l, args[1], uint16(addr), n)
	case "modes":
		if len(args) != 5 {
			return errors.New("usage: tapeprobe modes BARCODE DRIVE MIB ROUNDS")
		}
		addr, _ := strconv.Atoi(args[2])
		mib, _ := strconv.Atoi(args[3])
		rounds, _ := strconv.Atoi(args[4])
		p.modes(ctx, l, args[1], uint16(addr), mib, rounds)
	case "rate":
		if len(args) != 4 {
			return errors.New("usage: tapeprobe rate BARCODE DRIVE MIB")
		}
		addr, _ := strconv.Atoi(args[2])
		mib, _ := strconv.Atoi(args[3])
		p.rate(ctx, l, args[1], uint16(addr), mib)
	default:
		return fmt.Errorf("unknown command %q", args[0])
	}
	return nil
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

// load puts barcode into drive element addr and waits for it to be ready.
func (p *probe) load(ctx context.Context, l *lab, barcode string, addr uint16) (*drive.Drive, bool) {
	inv, err := l.chg.Load(ctx, barcode, addr, catalog{p})
	if err == nil {
		if e, _ := inv.At(addr); !e.Full || e.Barcode != barcode {
			err = fmt.Errorf("after the move the drive element shows %s", e)
		}
	}
	if !p.check(fmt.Sprintf("load %s into drive %d (confirmed by READ ELEMENT STATUS)", barcode, addr), err) {
		return nil, false
	}
	d, err := l.drive(addr)
	if !p.check("open drive", err) {
		return nil, false
	}
	start := time.Now()
	if !p.check("drive ready (retried while becoming ready)", d.Ready(ctx)) {
		return nil, false
	}
	p.note("ready %v after the move", time.Since(start).Round(time.Millisecond))
	return d, p.check("variable-block mode", d.SetVariable(ctx))
}

func (p *probe) unload(ctx context.Context, l *lab, d *drive.Drive, addr uint16) {
	p.check("unload cartridge", d.Unload(ctx))
	_, err := l.chg.Unload(ctx, addr, catalog{p})
	p.check(fmt.Sprintf("move cartridge from drive %d home", addr), err)
}

func (p *probe) selftest(ctx context.Context, l *lab, barcode string) {
	const addr = 1
	// Sense decoding for an operator, from the real device: the drive is
	// empty before the load.
	if d, err := l.drive(addr); err == nil {
		err := d.Ready(ctx)
		s, ok := scsi.AsSense(err)
		if ok && s.Is(scsi.KeyNotReady, 0x3A, 0) {
			p.note("empty drive says: %v", err)
			p.check("empty drive: not ready, medium not present, decoded", nil)
		} else {
			p.check("empty drive: not ready, medium not present, decoded", fmt.Errorf("got %v", err))
		}
	}
	d, ok := p.load(ctx, l, barcode, addr)
	if !ok {
		return
	}
	files := [][][]byte{
		{pattern(1000, 1), pattern(65536, 2), pattern(256<<10, 3), pattern(12, 4)},
		{pattern(300, 5), pattern(256<<10, 6)},
		{pattern(77, 7)},
	}
	err := func() error {
		for _, f := range files {
			for _, b := range f {
				if err := d.WriteBlock(ctx, b); err != nil {
					return err
				}
			}
			if err := d.WriteFilemarks(ctx, 1); err != nil {
				return err
			}
		}
		return nil
	}()
	p.check("write 3 tape files of variable blocks with filemarks", err)
	_, err = d.Position(ctx)
	if errors.Is(err, scsi.ErrPositionUnknown) {
		p.note("READ POSITION: %v", err)
		err = nil
	} else if err == nil {
		err = errors.New("tgt's READ POSITION stub was taken for a position")
	}
	p.check("READ POSITION stub recognized as unknown", err)
	buf := make([]byte, 256<<10)
	readFileOn := func(d *drive.Drive, f [][]byte) error {
		for i, want := range f {
			n, err := d.ReadBlock(ctx, buf)
			if err != nil {
				return fmt.Errorf("block %d: %w", i, err)
			}
			if !bytes.Equal(buf[:n], want) {
				return fmt.Errorf("block %d: %d bytes, want %d identical", i, n, len(want))
			}
		}
		if _, err := d.ReadBlock(ctx, buf); !errors.Is(err, drive.ErrFilemark) {
			return fmt.Errorf("at the end of the file: %v, want a filemark", err)
		}
		return nil
	}
	readFile := func(f [][]byte) error { return readFileOn(d, f) }
	p.check("rewind", d.Rewind(ctx))
	for i, f := range files {
		p.check(fmt.Sprintf("read back tape file %d byte for byte, lengths from the sense residue", i), readFile(f))
	}
	_, err = d.ReadBlock(ctx, buf)
	if errors.Is(err, drive.ErrEndOfData) {
		err = nil
	}
	p.check("read past the last file: end of data", err)
	// Tape file 2 from anywhere: tgt has no LOCATE and no position, so
	// SeekFile rewinds and spaces over filemarks.
	m := drive.Mark{File: 2, Block: 7, BlockKnown: true}
	err = d.SeekFile(ctx, m)
	if err == nil {
		err = readFile(files[2])
	}
	p.check("seek tape file 2 (LOCATE refused: REWIND + SPACE filemarks) and read it", err)
	err = d.Locate(ctx, 3)
	if errors.Is(err, drive.ErrUnsupported) {
		p.note("LOCATE: %v", err)
		err = nil
	} else {
		err = fmt.Errorf("LOCATE on tgt: %v, want unsupported", err)
	}
	p.check("LOCATE refused as unsupported, decoded", err)
	err = d.SeekFile(ctx, drive.Mark{File: 1})
	if err == nil {
		var n int
		small := make([]byte, 100)
		n, err = d.ReadBlock(ctx, small)
		if errors.Is(err, drive.ErrBlockTooLarge) {
			p.note("short buffer: %v (%d)", err, n)
			err = nil
		} else {
			err = fmt.Errorf("a 300-byte block into 100 bytes: %d, %v", n, err)
		}
	}
	p.check("block larger than the buffer: ILI with negative residue", err)
	err = d.SpaceEOD(ctx)
	if err == nil {
		err = d.WriteBlock(ctx, pattern(500, 8))
	}
	if err == nil {
		err = d.WriteFilemarks(ctx, 1)
	}
	if err == nil {
		err = d.SeekFile(ctx, drive.Mark{File: 3})
	}
	if err == nil {
		err = readFile([][]byte{pattern(500, 8)})
	}
	p.check("append after SPACE to end of data, read it back", err)
	alerts, err := d.TapeAlerts(ctx)
	if errors.Is(err, drive.ErrUnsupported) {
		p.note("TapeAlert: %v", err)
		err = nil
	}
	p.check(fmt.Sprintf("TapeAlert read after the job (%d flags)", len(alerts)), err)
	p.unload(ctx, l, d, addr)
	// The other drive, found by its serial number, works too.
	if d2, ok := p.load(ctx, l, barcode, 2); ok {
		err := d2.Rewind(ctx)
		if err == nil {
			err = readFileOn(d2, files[0])
		}
		p.check("the cartridge reads back in drive 2", err)
		p.unload(ctx, l, d2, 2)
	}
}

// writeTar writes a label archive as tape file 0 and DIR as a tar archive
// of 256 KiB blocks (blocking factor 512) as tape file 1, as the tape
// format does, for `mt` and `tar` to read back.
func (p *probe) writeTar(ctx context.Context, l *lab, barcode, dir string) {
	const addr = 1
	d, ok := p.load(ctx, l, barcode, addr)
	if !ok {
		return
	}
	err := func() error {
		if err := d.Rewind(ctx); err != nil {
			return err
		}
		bw := &blockWriter{ctx: ctx, d: d, buf: make([]byte, 0, 256<<10)}
		tw := tar.NewWriter(bw)
		label := []byte("vaultnode tape " + barcode + "\n")
		if err := tw.WriteHeader(&tar.Header{Name: "VAULTNODE-LABEL", Mode: 0o644, Size: int64(len(label)), Format: tar.FormatPAX}); err != nil {
			return err
		}
		tw.Write(label)
		if err := tw.Close(); err != nil {
			return err
		}
		if err := bw.end(); err != nil {
			return err
		}
		tw = tar.NewWriter(bw)
		err := filepath.WalkDir(dir, func(path string, de fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := de.Info()
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(dir, path)
			if rel == "." {
				return nil
			}
			link := ""
			if fi.Mode()&fs.ModeSymlink != 0 {
				if link, err = os.Readlink(path); err != nil {
					return err
				}
			}
			h, err := tar.FileInfoHeader(fi, link)
			if err != nil {
				return err
			}
			h.Name, h.Format = rel, tar.FormatPAX
			if de.IsDir() {
				h.Name += "/"
			}
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			if fi.Mode().IsRegular() {
				f, err := os.Open(path)
				if err != nil {
					return err
				}
				defer f.Close()
				_, err = io.Copy(tw, f)
				return err
			}
			return nil
		})
		if err != nil {
			return err
		}
		if err := tw.Close(); err != nil {
			return err
		}
		return bw.end()
	}()
	p.check("write a label file and a data tar archive of "+dir, err)
	p.check("unload cartridge", d.Unload(ctx))
	_, err = l.chg.Unload(ctx, addr, catalog{p})
	p.check("move cartridge home", err)
}

// blockWriter cuts a stream into 256 KiB blocks and ends a tape file with
// a filemark.
type blockWriter struct {
	ctx context.Context
	d   *drive.Drive
	buf []byte
	n   int64
}

func (w *blockWriter) Write(b []byte) (int, error) {
	total := len(b)
	for len(b) > 0 {
		k := min(cap(w.buf)-len(w.buf), len(b))
		w.buf = append(w.buf, b[:k]...)
		b = b[k:]
		if len(w.buf) == cap(w.buf) {
			if err := w.flush(); err != nil {
				return 0, err
			}
		}
	}
	return total, nil
}

func (w *blockWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	if err := w.d.WriteBlock(w.ctx, w.buf); err != nil && !errors.Is(err, drive.ErrEarlyWarning) {
		return err
	}
	w.n += int64(len(w.buf))
	w.buf = w.buf[:0]
	return nil
}

// end pads the last block to the full 256 KiB, as GNU tar -b 512 pads its
// last record, and writes the filemark. (tgt 1.0.85 also corrupts a read
// of a block longer than half the buffer and shorter than it: fixed in
// tgt commit c7011f2; full records never meet it.)
func (w *blockWriter) end() error {
	if len(w.buf) > 0 {
		w.buf = append(w.buf, make([]byte, cap(w.buf)-len(w.buf))...)
	}
	if err := w.flush(); err != nil {
		return err
	}
	return w.d.WriteFilemarks(w.ctx, 1)
}

// rate streams mib MiB in 256 KiB blocks to the cartridge through the
// drive package's BlockQueue as the tape job does (up to 4 WRITEs
// outstanding, direct I/O), and prints the rate, for the benchmark's
// comparison against dd.
func (p *probe) rate(ctx context.Context, l *lab, barcode string, addr uint16, mib int) {
	d, ok := p.load(ctx, l, barcode, addr)
	if !ok {
		return
	}
	blocks := make([][]byte, 4)
	for i := range blocks {
		blocks[i] = pattern(256<<10, byte(9+i))
	}
	start := time.Now()
	err := writeQueued(ctx, d, blocks, mib*4)
	if err == nil {
		err = d.WriteFilemarks(ctx, 1)
	}
	el := time.Since(start)
	if p.check("stream", err) {
		fmt.Fprintf(p.out, "TAPEPROBE RATE %d MiB in %.3f s = %.1f MiB/s\n", mib, el.Seconds(), float64(mib)/el.Seconds())
	}
	p.unload(ctx, l, d, addr)
}

// writeQueued writes n blocks taken in turn from blocks through a
// BlockQueue as deep as there are buffers, reusing a buffer only once its
// WRITE is reaped.
func writeQueued(ctx context.Context, d *drive.Drive, blocks [][]byte, n int) error {
	q := d.Queue(len(blocks))
	if len(blocks) > 1 && !q.Queued() {
		return errors.New("the handle cannot queue")
	}
	free := append([][]byte(nil), blocks...)
	for i := 0; i < n; i++ {
		if len(free) == 0 {
			b, _, err := q.Reap(ctx)
			if err != nil && !errors.Is(err, drive.ErrEarlyWarning) {
				return err
			}
			free = append(free, b)
		}
		b := free[len(free)-1]
		free = free[:len(free)-1]
		if err := q.Submit(ctx, b); err != nil {
			return err
		}
	}
	for q.Outstanding() > 0 {
		if _, _, err := q.Reap(ctx); err != nil && !errors.Is(err, drive.ErrEarlyWarning) {
			return err
		}
	}
	return nil
}

// stNode returns the st driver's no-rewind node of the drive behind a
// /dev/sg node, from sysfs (the device's scsi_tape directory).
func stNode(sg string) string {
	ents, err := os.ReadDir(filepath.Join("/sys/class/scsi_generic", filepath.Base(sg), "device", "scsi_tape"))
	if err != nil {
		return "(no st node)"
	}
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, "nst") && !strings.ContainsAny(n[3:], "alm") {
			return "/dev/" + n
		}
	}
	return "(no st node)"
}

// compareDirs checks that every regular file under a is in b with the
// same bytes and mode, and that b has nothing more.
func compareDirs(a, b string) error {
	seen := 0
	err := filepath.WalkDir(a, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		fa, err := os.Lstat(p)
		if err != nil {
			return err
		}
		fb, err := os.Lstat(filepath.Join(b, rel))
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if fa.Mode() != fb.Mode() && rel != "." {
			return fmt.Errorf("%s: mode %v, want %v", rel, fb.Mode(), fa.Mode())
		}
		if !fa.Mode().IsRegular() {
			return nil
		}
		x, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		y, err := os.ReadFile(filepath.Join(b, rel))
		if err != nil {
			return err
		}
		if !bytes.Equal(x, y) {
			return fmt.Errorf("%s: contents differ (%d and %d bytes)", rel, len(x), len(y))
		}
		seen++
		return nil
	})
	if err != nil {
		return err
	}
	extra := 0
	filepath.WalkDir(b, func(p string, de fs.DirEntry, err error) error {
		if err == nil && de.Type().IsRegular() {
			extra++
		}
		return nil
	})
	if extra != seen {
		return fmt.Errorf("%d files in %s, %d in %s", seen, a, extra, b)
	}
	if seen == 0 {
		return fmt.Errorf("no files in %s", a)
	}
	return nil
}

// stream writes a small first tape file (closed by its filemark), then
// mib MiB of 256 KiB blocks as a second one, telling the console when the
// second file is under way (the host kills the library then).
func (p *probe) stream(ctx context.Context, l *lab, barcode string, addr uint16, mib int) {
	d, ok := p.load(ctx, l, barcode, addr)
	if !ok {
		return
	}
	err := d.Rewind(ctx)
	if err == nil {
		err = d.WriteBlock(ctx, pattern(256<<10, 20))
	}
	if err == nil {
		err = d.WriteFilemarks(ctx, 1)
	}
	if !p.check("tape file 0 written and closed by its filemark", err) {
		return
	}
	fmt.Fprintln(p.out, "TAPEPROBE STREAMING")
	blk := pattern(256<<10, 21)
	for i := 0; i < mib*4 && err == nil; i++ {
		if err = d.WriteBlock(ctx, blk); errors.Is(err, drive.ErrEarlyWarning) {
			err = nil
		}
	}
	if err == nil {
		err = d.WriteFilemarks(ctx, 1)
	}
	if err != nil {
		p.note("the write failed: %v", err)
		p.check("tape file 1 (expected to fail)", err)
		return
	}
	p.check("tape file 1 written", err)
	p.unload(ctx, l, d, addr)
}

// resumeStream checks that the tape file closed before the failure reads
// back whole, reports what is left of the interrupted one (its tail may be
// torn: it never got its filemark, so nothing may trust it), then resumes
// as the next job does: it writes a new file over the interrupted one,
// starting right after the last closed file, and reads everything back.
func (p *probe) resumeStream(ctx context.Context, l *lab, barcode string, addr uint16) {
	d, ok := p.load(ctx, l, barcode, addr)
	if !ok {
		return
	}
	buf := make([]byte, 256<<10)
	readFile := func(f [][]byte) error {
		for i, want := range f {
			n, err := d.ReadBlock(ctx, buf)
			if err != nil {
				return fmt.Errorf("block %d: %w", i, err)
			}
			if !bytes.Equal(buf[:n], want) {
				return fmt.Errorf("block %d: %d bytes, not what was written", i, n)
			}
		}
		if _, err := d.ReadBlock(ctx, buf); !errors.Is(err, drive.ErrFilemark) {
			return fmt.Errorf("at the end of the file: %v, want a filemark", err)
		}
		return nil
	}
	file0 := [][]byte{pattern(256<<10, 20)}
	err := d.Rewind(ctx)
	if err == nil {
		err = readFile(file0)
	}
	p.check("the tape file closed before the failure reads back whole", err)
	blocks := 0
	for err == nil {
		var n int
		if n, err = d.ReadBlock(ctx, buf); err == nil {
			if !bytes.Equal(buf[:n], pattern(256<<10, 21)) {
				err = fmt.Errorf("block %d is torn", blocks)
			}
			blocks++
		}
	}
	p.note("the interrupted tape file holds %d blocks, then: %v", blocks, err)
	file1 := [][]byte{pattern(256<<10, 22), pattern(256<<10, 23), pattern(4096, 24)}
	err = d.SeekFile(ctx, drive.Mark{File: 1})
	for _, b := range file1 {
		if err == nil {
			err = d.WriteBlock(ctx, b)
		}
	}
	if err == nil {
		err = d.WriteFilemarks(ctx, 1)
	}
	p.check("resume: a new tape file written after the last closed one", err)
	err = d.Rewind(ctx)
	if err == nil {
		err = readFile(file0)
	}
	if err == nil {
		err = readFile(file1)
	}
	if err == nil {
		if _, err = d.ReadBlock(ctx, buf); errors.Is(err, drive.ErrEndOfData) {
			err = nil
		} else {
			err = fmt.Errorf("after the new file: %v, want end of data", err)
		}
	}
	p.check("both files read back, then end of data (the torn file is gone)", err)
	p.unload(ctx, l, d, addr)
}

// locateBench fills a cartridge with files tape files of mib MiB each,
// then times reaching and reading the middle one two ways: SeekFile (LOCATE
// where the drive has it; REWIND + SPACE over filemarks on tgt) and
// reading every block from the start of the tape.
func (p *probe) locateBench(ctx context.Context, l *lab, barcode string, addr uint16, files, mib int) {
	d, ok := p.load(ctx, l, barcode, addr)
	if !ok {
		return
	}
	err := d.Rewind(ctx)
	for f := 0; f < files && err == nil; f++ {
		blk := pattern(256<<10, byte(30+f))
		for i := 0; i < mib*4 && err == nil; i++ {
			if err = d.WriteBlock(ctx, blk); errors.Is(err, drive.ErrEarlyWarning) {
				err = nil
			}
		}
		if err == nil {
			err = d.WriteFilemarks(ctx, 1)
		}
	}
	if !p.check(fmt.Sprintf("fill the cartridge: %d files of %d MiB", files, mib), err) {
		return
	}
	mid := files / 2
	want := pattern(256<<10, byte(30+mid))
	buf := make([]byte, 256<<10)
	readMid := func() error {
		for i := 0; i < mib*4; i++ {
			n, err := d.ReadBlock(ctx, buf)
			if err != nil {
				return err
			}
			if !bytes.Equal(buf[:n], want) {
				return fmt.Errorf("block %d of file %d differs", i, mid)
			}
		}
		if _, err := d.ReadBlock(ctx, buf); !errors.Is(err, drive.ErrFilemark) {
			return fmt.Errorf("end of file %d: %v", mid, err)
		}
		return nil
	}
	if err := d.SpaceEOD(ctx); err != nil { // start from the far end, as after a write
		p.check("space to end of data", err)
		return
	}
	start := time.Now()
	err = d.SeekFile(ctx, drive.Mark{File: uint64(mid)})
	if err == nil {
		err = readMid()
	}
	seek := time.Since(start)
	if !p.check("seek to the middle file and read it", err) {
		return
	}
	if err := d.SpaceEOD(ctx); err != nil {
		p.check("space to end of data", err)
		return
	}
	start = time.Now()
	err = d.Rewind(ctx)
	for f := 0; f < mid && err == nil; f++ {
		for err == nil {
			if _, err = d.ReadBlock(ctx, buf); errors.Is(err, drive.ErrFilemark) {
				err = nil
				break
			}
		}
	}
	if err == nil {
		err = readMid()
	}
	scan := time.Since(start)
	if p.check("read from the start up to the middle file", err) {
		fmt.Fprintf(p.out, "TAPEPROBE LOCATE file %d of %d (%d MiB each): seek and read %.3f s, read from the start %.3f s\n",
			mid, files, mib, seek.Seconds(), scan.Seconds())
	}
	p.unload(ctx, l, d, addr)
}

// soak writes mib MiB of 256 KiB blocks, each carrying its index in its
// first 8 bytes, and reads them back passes times, reporting every block
// that does not come back as written and whose data it holds instead.
func (p *probe) soak(ctx context.Context, l *lab, barcode string, addr uint16, mib, passes int) {
	d, ok := p.load(ctx, l, barcode, addr)
	if !ok {
		return
	}
	n := mib * 4
	block := func(i int) []byte {
		b := pattern(256<<10, byte(i))
		binary.BigEndian.PutUint64(b, uint64(i))
		return b
	}
	err := d.Rewind(ctx)
	for i := 0; i < n && err == nil; i++ {
		if err = d.WriteBlock(ctx, block(i)); errors.Is(err, drive.ErrEarlyWarning) {
			err = nil
		}
	}
	if err == nil {
		err = d.WriteFilemarks(ctx, 1)
	}
	if !p.check("soak: write", err) {
		return
	}
	buf := make([]byte, 256<<10)
	bad := 0
	reload := passes < 0 // unload and load the cartridge again before each pass
	if reload {
		passes = -passes
	}
	for pass := 0; pass < passes; pass++ {
		if reload {
			p.unload(ctx, l, d, addr)
			if d, ok = p.load(ctx, l, barcode, addr); !ok {
				return
			}
		}
		if err := d.Rewind(ctx); err != nil {
			p.check("soak: rewind", err)
			return
		}
		for i := 0; i < n; i++ {
			m, err := d.ReadBlock(ctx, buf)
			if err != nil {
				p.check(fmt.Sprintf("soak: pass %d block %d", pass, i), err)
				return
			}
			if want := block(i); m != len(want) || !bytes.Equal(buf[:m], want) {
				bad++
				first := 0
				for first < m && first < len(want) && buf[first] == want[first] {
					first++
				}
				fmt.Fprintf(p.out, "TAPEPROBE SOAKBAD pass %d block %d: %d bytes, first difference at %d, holds index %d\n",
					pass, i, m, first, binary.BigEndian.Uint64(buf[:8]))
			}
		}
	}
	p.check(fmt.Sprintf("soak: %d passes over %d blocks, %d came back different", passes, n, bad), func() error {
		if bad > 0 {
			return fmt.Errorf("%d blocks differ", bad)
		}
		return nil
	}())
	p.unload(ctx, l, d, addr)
}

// sigstorm writes n numbered 256 KiB blocks as one tape file and reads them
// back while another goroutine sends SIGURG (what Go's runtime sends for
// preemption) to the thread waiting in each SCSI command, as fast as it
// can. A command interrupted by a signal must still run exactly once: a
// WRITE run twice puts a block on tape twice, a READ run twice skips one.
func (p *probe) sigstorm(ctx context.Context, l *lab, barcode string, addr uint16, n int) {
	d, ok := p.load(ctx, l, barcode, addr)
	if !ok {
		return
	}
	block := func(i int) []byte {
		b := pattern(256<<10, byte(i))
		binary.BigEndian.PutUint64(b, uint64(i))
		return b
	}
	type result struct {
		err     error
		bad     []string
		signals int
	}
	done := make(chan result)
	tid := make(chan int, 1)
	stop := make(chan struct{})
	go func() { // the drive's goroutine, on a thread of its own for the storm to aim at
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		var r result
		defer func() { close(stop); done <- r }()
		err := d.Rewind(ctx)
		for i := 0; i < n && err == nil; i++ {
			err = d.WriteBlock(ctx, block(i))
		}
		if err == nil {
			err = d.WriteFilemarks(ctx, 1)
		}
		if err == nil {
			err = d.Rewind(ctx)
		}
		buf := make([]byte, 256<<10)
		for i := 0; i < n && err == nil; i++ {
			var m int
			if m, err = d.ReadBlock(ctx, buf); err != nil {
				err = fmt.Errorf("block %d: %w", i, err)
			} else if want := block(i); m != len(want) || !bytes.Equal(buf[:m], want) {
				r.bad = append(r.bad, fmt.Sprintf("block %d came back as block %d (%d bytes)", i, binary.BigEndian.Uint64(buf[:8]), m))
			}
		}
		if err == nil {
			if _, err = d.ReadBlock(ctx, buf); errors.Is(err, drive.ErrFilemark) {
				err = nil
			} else {
				err = fmt.Errorf("after %d blocks: %v, want the filemark", n, err)
			}
		}
		r.err = err
	}()
	target := <-tid
	signals := 0
	var r result
storm:
	for {
		select {
		case <-stop:
			r = <-done
			break storm
		default:
		}
		if unix.Tgkill(os.Getpid(), target, unix.SIGURG) == nil {
			signals++
		}
		time.Sleep(20 * time.Microsecond)
	}
	p.note("sigstorm: %d signals sent to the drive's thread", signals)
	for _, b := range r.bad {
		fmt.Fprintf(p.out, "TAPEPROBE STORMBAD %s\n", b)
	}
	if r.err == nil && len(r.bad) > 0 {
		r.err = fmt.Errorf("%d of %d blocks came back different", len(r.bad), n)
	}
	p.check(fmt.Sprintf("%d blocks written and read back once each under a signal storm", n), r.err)
	p.unload(ctx, l, d, addr)
}

// modes writes mib MiB of 256 KiB blocks from the start of the cartridge
// through each write path in turn, rounds times, and prints one rate per
// path and round: "TAPEPROBE MODE name MiB/s".
func (p *probe) modes(ctx context.Context, l *lab, barcode string, addr uint16, mib, rounds int) {
	d, ok := p.load(ctx, l, barcode, addr)
	if !ok {
		return
	}
	h := l.drives[addr]
	dev, _ := l.lib.DriveAt(addr)
	nst := stNode(dev.Device.Path)
	if out, err := exec.Command("mt", "-f", nst, "setblk", "0").CombinedOutput(); err != nil {
		p.note("mt setblk 0: %v: %s", err, out)
	}
	const dio = "/sys/module/sg/parameters/allow_dio"
	orig, _ := os.ReadFile(dio)
	defer os.WriteFile(dio, orig, 0o644)
	blocks := make([][]byte, 16)
	for i := range blocks {
		blocks[i] = pattern(256<<10, byte(30+i))
	}
	queued := func(depth int) func() error {
		return func() error { return writeQueued(ctx, d, blocks[:depth], mib*4) }
	}
	type mode struct {
		name   string
		direct bool
		run    func() error
	}
	ms := []mode{
		{"sync", false, queued(1)},
		{"sync-dio", true, queued(1)},
		{"queue2", false, queued(2)},
		{"queue4", false, queued(4)},
		{"queue8", false, queued(8)},
		{"queue4-dio", true, queued(4)},
		{"queue8-dio", true, queued(8)},
	}
	if !strings.HasPrefix(nst, "(") {
		ms = append(ms, mode{"st-write", false, func() error {
			f, err := os.OpenFile(nst, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			for i := 0; i < mib*4; i++ {
				if _, err := f.Write(blocks[i%len(blocks)]); err != nil {
					f.Close()
					return err
				}
			}
			return f.Close() // st writes the filemark
		}}, mode{"dd", false, func() error {
			out, err := exec.Command("dd", "if=/dev/zero", "of="+nst, "bs=256k", fmt.Sprintf("count=%d", mib*4)).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		}})
	}
	for r := 0; r < rounds; r++ {
		for _, m := range ms {
			v := []byte("0")
			if m.direct {
				v = []byte("1")
			}
			if err := os.WriteFile(dio, v, 0o644); err != nil {
				p.note("set %s: %v", dio, err)
			}
			h.SetDirectIO(m.direct)
			err := d.Rewind(ctx)
			start := time.Now()
			if err == nil {
				err = m.run()
			}
			if err == nil && !strings.HasPrefix(m.name, "st") && m.name != "dd" {
				err = d.WriteFilemarks(ctx, 1)
			}
			el := time.Since(start)
			h.SetDirectIO(false)
			if !p.check(fmt.Sprintf("round %d: %s", r+1, m.name), err) {
				continue
			}
			fmt.Fprintf(p.out, "TAPEPROBE MODE %s %.1f MiB/s\n", m.name, float64(mib)/el.Seconds())
		}
	}
	// Direct I/O really happened? One WRITE through SG_IO tells.
	os.WriteFile(dio, []byte("1"), 0o644)
	h.SetDirectIO(true)
	c, _ := scsi.Write6(blocks[0])
	if err := d.Rewind(ctx); err == nil {
		r, err := h.Exec(ctx, c)
		p.note("direct I/O with allow_dio=1: %v (%v)", r.Direct, err)
	}
	h.SetDirectIO(false)
	p.unload(ctx, l, d, addr)
}
