// Package discover finds the tape libraries attached to the appliance: it
// asks every SCSI generic node (/dev/sg*) what it is (INQUIRY peripheral
// type 8: medium changer, 1: tape drive) and pairs each changer's drive
// elements with drive devices by serial number: the changer's READ
// ELEMENT STATUS with DVCID against the drive's INQUIRY VPD page 80h.
//
// Never by device order: the order of /dev/sg* nodes follows the bus scan,
// which says nothing about which drive bay a drive sits in. A drive element
// whose serial number no device reports (an empty bay, a drive that is off,
// a library that does not report DVCID) stays unmatched and is reported
// with the reason, so the operator can fix it; it is never guessed.
package discover

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"vaultnode/appliance/tape/changer"
	"vaultnode/appliance/tape/drive"
	"vaultnode/appliance/tape/scsi"
)

// Handle runs SCSI commands on one device node.
type Handle interface {
	Exec(ctx context.Context, c scsi.Command) (scsi.Response, error)
}

// Opener opens a device node for Scan; Scan closes what it opened.
type Opener func(path string) (Handle, func() error, error)

// Device is a SCSI generic node and what it says it is.
type Device struct {
	Path   string
	Type   byte // scsi.TypeChanger or scsi.TypeSequential
	Vendor string
	Model  string
	Rev    string
	Serial string // VPD 80h ("" if the device has none)
}

func (d Device) String() string {
	s := fmt.Sprintf("%s (%s %s", d.Path, d.Vendor, d.Model)
	if d.Serial != "" {
		s += " serial " + d.Serial
	}
	return s + ")"
}

// Drive is a drive element matched to the device that holds its drive.
type Drive struct {
	Element uint16
	Device  Device
}

// Unmatched is a drive element no device could be paired with.
type Unmatched struct {
	Element uint16
	Serial  string // the DVCID serial, "" if the library reported none
	Reason  string
}

// Library is a changer with its drives.
type Library struct {
	Changer   Device
	Drives    []Drive // by element address
	Unmatched []Unmatched
	Inventory changer.Inventory
}

// DriveAt returns the drive at element addr.
func (l Library) DriveAt(addr uint16) (Drive, bool) {
	for _, d := range l.Drives {
		if d.Element == addr {
			return d, true
		}
	}
	return Drive{}, false
}

// Result is what a scan found.
type Result struct {
	Libraries []Library
	// Standalone are drives no library claims (a drive on its own, or one
	// whose library could not be read).
	Standalone []Device
	// Problems are devices that did not answer; the scan goes on without
	// them.
	Problems []string
}

// ErrNoLibrary: the scan found no medium changer.
var ErrNoLibrary = errors.New("no tape library found")

// Nodes lists the SCSI generic nodes under dev (/dev in the product), in
// numeric order (sg2 before sg10) for stable logs; the order decides
// nothing.
func Nodes(dev string) ([]string, error) {
	paths, err := filepath.Glob(filepath.Join(dev, "sg*"))
	if err != nil {
		return nil, fmt.Errorf("list SCSI generic devices: %w", err)
	}
	num := func(p string) int { n, _ := strconv.Atoi(strings.TrimPrefix(filepath.Base(p), "sg")); return n }
	sort.Slice(paths, func(i, j int) bool { return num(paths[i]) < num(paths[j]) })
	return paths, nil
}

// Scan identifies every node in paths and pairs drives to changers.
func Scan(ctx context.Context, log *zap.Logger, open Opener, paths []string) (Result, error) {
	if log == nil {
		log = zap.NewNop()
	}
	var res Result
	var changers []Device
	drives := map[string]Device{} // serial -> device
	var noSerial []Device
	for _, p := range paths {
		d, err := identify(ctx, open, p)
		if err != nil {
			if errors.Is(err, errOtherType) {
				continue
			}
			res.Problems = append(res.Problems, err.Error())
			log.Warn("SCSI device did not answer", zap.String("device", p), zap.Error(err))
			continue
		}
		switch d.Type {
		case scsi.TypeChanger:
			changers = append(changers, d)
		case scsi.TypeSequential:
			if d.Serial == "" {
				noSerial = append(noSerial, d)
				continue
			}
			if other, dup := drives[d.Serial]; dup {
				// Two nodes with one serial: the same drive on two paths
				// (multipath), or a bad serial. Either way a serial cannot
				// tell them apart; keep the first and say so.
				res.Problems = append(res.Problems, fmt.Sprintf("%s and %s report the same serial number %q; only %s is used",
					other.Path, d.Path, d.Serial, other.Path))
				continue
			}
			drives[d.Serial] = d
		}
	}
	claimed := map[string]bool{}
	for _, c := range changers {
		lib, err := readLibrary(ctx, log, open, c, drives)
		if err != nil {
			res.Problems = append(res.Problems, err.Error())
			log.Warn("tape library could not be read", zap.String("device", c.Path), zap.Error(err))
			continue
		}
		for _, d := range lib.Drives {
			claimed[d.Device.Serial] = true
		}
		res.Libraries = append(res.Libraries, lib)
	}
	for _, d := range drives {
		if !claimed[d.Serial] {
			res.Standalone = append(res.Standalone, d)
		}
	}
	res.Standalone = append(res.Standalone, noSerial...)
	sort.Slice(res.Standalone, func(i, j int) bool { return res.Standalone[i].Path < res.Standalone[j].Path })
	if len(res.Libraries) == 0 {
		return res, fmt.Errorf("scan %d SCSI devices: %w", len(paths), ErrNoLibrary)
	}
	return res, nil
}

var errOtherType = errors.New("not a changer or tape drive")

func identify(ctx context.Context, open Opener, path string) (Device, error) {
	h, closeFn, err := open(path)
	if err != nil {
		return Device{}, fmt.Errorf("open %s: %w", path, err)
	}
	defer closeFn()
	c := scsi.Inquiry(96)
	r, err := h.Exec(ctx, c)
	if err == nil {
		err = r.Err(c)
	}
	if err != nil {
		return Device{}, fmt.Errorf("identify %s: %w", path, err)
	}
	inq, err := scsi.ParseInquiry(c.Data[:min(r.Transferred, len(c.Data))])
	if err != nil {
		return Device{}, fmt.Errorf("identify %s: %w", path, err)
	}
	if inq.PeripheralType != scsi.TypeChanger && inq.PeripheralType != scsi.TypeSequential {
		return Device{}, errOtherType
	}
	d := Device{Path: path, Type: inq.PeripheralType, Vendor: inq.Vendor, Model: inq.Product, Rev: inq.Revision}
	if d.Type == scsi.TypeSequential {
		id, err := drive.New(h, nil).Identify(ctx)
		if err != nil {
			return Device{}, fmt.Errorf("identify %s: %w", path, err)
		}
		d.Serial = id.Serial
	}
	return d, nil
}

func readLibrary(ctx context.Context, log *zap.Logger, open Opener, c Device, drives map[string]Device) (Library, error) {
	h, closeFn, err := open(c.Path)
	if err != nil {
		return Library{}, fmt.Errorf("open changer %s: %w", c.Path, err)
	}
	defer closeFn()
	inv, err := changer.New(h, log).Inventory(ctx)
	if err != nil {
		return Library{}, fmt.Errorf("read changer %s: %w", c.Path, err)
	}
	lib := Library{Changer: c, Inventory: inv}
	for _, e := range inv.Drives {
		if e.Serial == "" {
			lib.Unmatched = append(lib.Unmatched, Unmatched{Element: e.Address,
				Reason: "the library reports no serial number (DVCID) for this drive bay: empty bay, or a library without DVCID; check the library's drive list"})
			continue
		}
		d, ok := drives[e.Serial]
		if !ok {
			lib.Unmatched = append(lib.Unmatched, Unmatched{Element: e.Address, Serial: e.Serial,
				Reason: "no tape drive device reports serial " + strconv.Quote(e.Serial) + ": is the drive powered and cabled to this host?"})
			continue
		}
		lib.Drives = append(lib.Drives, Drive{Element: e.Address, Device: d})
		log.Info("tape drive matched by serial number", zap.String("changer", c.Path), zap.Uint16("element", e.Address),
			zap.String("device", d.Path), zap.String("serial", d.Serial))
	}
	return lib, nil
}
