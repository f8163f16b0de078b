// Package changer drives a tape library's medium changer (SMC) over a
// SCSI handle: it reads the inventory one element type at a time and
// moves cartridges with "physical truth first": a cartridge is reported in
// a new place only after the library's element status, read again after
// MOVE MEDIUM, shows it there. On any error the library's state is read
// again and that, not the intended move, is what the catalog learns.
package changer

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.uber.org/zap"

	"vaultnode/appliance/tape/scsi"
)

// Handle runs SCSI commands on the changer device (a *scsi.Device wrapped
// in scsi.Retry in the product, an emulated library in tests).
type Handle interface {
	Exec(ctx context.Context, c scsi.Command) (scsi.Response, error)
}

// Catalog is told the library's physical state: after every move,
// successful or not, and whenever the caller syncs. It never hears of an
// intended move, only of what READ ELEMENT STATUS returned.
type Catalog interface {
	Reconcile(ctx context.Context, inv Inventory) error
}

// Sentinel errors.
var (
	ErrNoSuchElement = errors.New("no such element")
	ErrSourceEmpty   = errors.New("source element empty")
	ErrDestFull      = errors.New("destination element full")
	ErrNotFound      = errors.New("cartridge not in the library")
	ErrNoFreeSlot    = errors.New("no free element")
	// ErrMoveFailed: the library refused or failed a move; the error is a
	// *MoveError saying where the cartridge physically is.
	ErrMoveFailed = errors.New("move failed")
	// ErrStateUnknown: after a failed move the library's state could not
	// be read; the catalog was not changed and must be reconciled (Sync)
	// before the library is used again.
	ErrStateUnknown = errors.New("library state unknown")
	// ErrInventory marks a library whose answers contradict themselves.
	ErrInventory = errors.New("inconsistent inventory")
)

// CleaningPrefix marks cleaning cartridges by barcode (LTO convention).
const CleaningPrefix = "CLN"

// Element is one place in the library.
type Element struct {
	Type    byte // scsi.ElementTransport, Storage, IE or Drive
	Address uint16
	Full    bool
	Barcode string // "" for an empty element or a cartridge without label
	// Source is the element the cartridge came from, if the library knows.
	SourceValid bool
	Source      uint16
	// Serial is a drive's serial number (DVCID), matched to the /dev/sg*
	// whose INQUIRY VPD 80h says the same, never by device order.
	Serial     string
	Exception  bool
	ASC, ASCQ  byte
	Accessible bool
	// Inserted: an import/export element holding a cartridge an operator
	// put in.
	Inserted bool
}

// Cleaning says whether the cartridge is a cleaning cartridge.
func (e Element) Cleaning() bool { return e.Full && strings.HasPrefix(e.Barcode, CleaningPrefix) }

func (e Element) String() string {
	name := map[byte]string{1: "picker", 2: "slot", 3: "import/export", 4: "drive"}[e.Type]
	s := fmt.Sprintf("%s %d", name, e.Address)
	if e.Full {
		bc := e.Barcode
		if bc == "" {
			bc = "unlabelled cartridge"
		}
		s += " [" + bc + "]"
	}
	return s
}

// Inventory is the library's state as read from it.
type Inventory struct {
	Transports []Element
	Slots      []Element
	IE         []Element
	Drives     []Element
}

// All returns every element, pickers first, then slots, IE, drives.
func (inv Inventory) All() []Element {
	out := make([]Element, 0, len(inv.Transports)+len(inv.Slots)+len(inv.IE)+len(inv.Drives))
	out = append(out, inv.Transports...)
	out = append(out, inv.Slots...)
	out = append(out, inv.IE...)
	return append(out, inv.Drives...)
}

// At returns the element at addr.
func (inv Inventory) At(addr uint16) (Element, bool) {
	for _, e := range inv.All() {
		if e.Address == addr {
			return e, true
		}
	}
	return Element{}, false
}

// Find returns the element holding the cartridge with this barcode.
func (inv Inventory) Find(barcode string) (Element, bool) {
	if barcode == "" {
		return Element{}, false
	}
	for _, e := range inv.All() {
		if e.Full && e.Barcode == barcode {
			return e, true
		}
	}
	return Element{}, false
}

// DriveBySerial returns the drive element whose DVCID is serial.
func (inv Inventory) DriveBySerial(serial string) (Element, bool) {
	for _, e := range inv.Drives {
		if serial != "" && e.Serial == serial {
			return e, true
		}
	}
	return Element{}, false
}

// Cleaning returns the elements holding cleaning cartridges.
func (inv Inventory) Cleaning() []Element {
	var out []Element
	for _, e := range inv.All() {
		if e.Cleaning() {
			out = append(out, e)
		}
	}
	return out
}

// Library is a medium changer. Its methods must not run concurrently: one
// owner serializes the library's commands (it has one picker anyway).
type Library struct {
	h      Handle
	log    *zap.Logger
	noDVCD bool
	// Alloc is the allocation length of READ ELEMENT STATUS (default
	// 0xFFFF: some changers read only the low two bytes of it).
	Alloc int
}

// New returns a Library over h.
func New(h Handle, log *zap.Logger) *Library {
	if log == nil {
		log = zap.NewNop()
	}
	return &Library{h: h, log: log, Alloc: 0xFFFF}
}

const (
	maxPages = 4096
	// pageCount is the "number of elements" asked per request; some
	// changers limit it. Paging does not depend on it being honoured.
	pageCount = 1000
)

// Inventory reads the state of every element, one element type per READ
// ELEMENT STATUS (tgt corrupts type 0, real libraries accept per-type
// requests), paging by starting address until the library has no more.
// Drive serial numbers (DVCID) are asked in a request of their own, since
// some changers refuse VOLTAG and DVCID together; a library that refuses
// DVCID altogether is remembered and asked no more.
func (l *Library) Inventory(ctx context.Context) (Inventory, error) {
	var inv Inventory
	for _, t := range []struct {
		typ byte
		dst *[]Element
	}{{scsi.ElementTransport, &inv.Transports}, {scsi.ElementStorage, &inv.Slots}, {scsi.ElementIE, &inv.IE}, {scsi.ElementDrive, &inv.Drives}} {
		els, err := l.readType(ctx, t.typ, true, false)
		if err != nil {
			return Inventory{}, err
		}
		*t.dst = els
	}
	if len(inv.Transports) == 0 {
		return Inventory{}, fmt.Errorf("read inventory: no medium transport element: %w", ErrInventory)
	}
	if len(inv.Drives) > 0 && !l.noDVCD {
		ids, err := l.readType(ctx, scsi.ElementDrive, false, true)
		if s, _ := scsi.AsSense(err); s.Key == scsi.KeyIllegalRequest {
			l.log.Info("library refuses DVCID; drives are matched without serial numbers", zap.Error(err))
			l.noDVCD = true
		} else if err != nil {
			return Inventory{}, err
		}
		for i := range inv.Drives {
			for _, d := range ids {
				if d.Address == inv.Drives[i].Address {
					inv.Drives[i].Serial = d.Serial
				}
			}
		}
	}
	return inv, nil
}

func (l *Library) readType(ctx context.Context, typ byte, voltag, dvcid bool) ([]Element, error) {
	var out []Element
	start := uint16(0)
	for range maxPages {
		c := scsi.ReadElementStatus(typ, start, pageCount, l.Alloc, voltag, dvcid)
		resp, err := l.h.Exec(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("read element status type %d from %d: %w", typ, start, err)
		}
		if err := resp.Err(c); err != nil {
			s, _ := scsi.AsSense(err)
			switch {
			case s.Is(scsi.KeyIllegalRequest, 0x21, 0x01):
				// No element of this type at or past start: the end.
				return out, nil
			}
			return nil, fmt.Errorf("read element status type %d from %d: %w", typ, start, err)
		}
		p, err := scsi.ParseElementStatus(c.Data[:min(resp.Transferred, len(c.Data))])
		if err != nil {
			return nil, fmt.Errorf("read element status type %d from %d: %w", typ, start, err)
		}
		n := 0
		for _, es := range p.Elements {
			if es.Type != typ {
				return nil, fmt.Errorf("read element status type %d: library answered with type %d: %w", typ, es.Type, ErrInventory)
			}
			if es.Address < start {
				return nil, fmt.Errorf("read element status type %d from %d: element %d out of order: %w", typ, start, es.Address, ErrInventory)
			}
			out = append(out, fromStatus(es))
			start = es.Address
			n++
		}
		if n == 0 || start == 0xFFFF {
			return out, nil
		}
		start++
	}
	return nil, fmt.Errorf("read element status type %d: more than %d pages: %w", typ, maxPages, ErrInventory)
}

func fromStatus(es scsi.ElementStatus) Element {
	e := Element{
		Type: es.Type, Address: es.Address, Full: es.Full, SourceValid: es.SourceValid, Source: es.Source,
		Serial: es.DeviceSerial, Exception: es.Except, ASC: es.ASC, ASCQ: es.ASCQ, Accessible: es.Access, Inserted: es.ImpExp,
	}
	if es.Full {
		e.Barcode = es.VolumeTag
	}
	return e
}

// Sync reads the inventory and hands it to the catalog: on start, after
// a unit attention, and after ErrStateUnknown.
func (l *Library) Sync(ctx context.Context, cat Catalog) (Inventory, error) {
	inv, err := l.Inventory(ctx)
	if err != nil {
		return Inventory{}, err
	}
	if err := cat.Reconcile(ctx, inv); err != nil {
		return Inventory{}, fmt.Errorf("reconcile catalog with library: %w", err)
	}
	return inv, nil
}

// MoveError is a move that did not end where it was asked to. Where is the
// cartridge's physical place after the failure (Found false: the library
// does not show it anywhere, e.g. it has no barcode or fell out).
type MoveError struct {
	Barcode  string
	From, To uint16
	Where    Element
	Found    bool
	Err      error
}

func (e *MoveError) Error() string {
	where := "it is not in the library's inventory: open the library and look"
	if e.Found {
		where = "it is now in " + e.Where.String()
	}
	return fmt.Sprintf("move %q from %d to %d: %v; %s", e.Barcode, e.From, e.To, e.Err, where)
}

func (e *MoveError) Unwrap() []error { return []error{ErrMoveFailed, e.Err} }

// Move moves the cartridge at src to dst. It checks both against a fresh
// inventory first, issues MOVE MEDIUM, reads the inventory again and only
// then tells the catalog, with that inventory, where things are. On
// success it returns the new inventory; on failure a *MoveError (or an
// error wrapping ErrStateUnknown if the library could not be read after
// the failure, in which case the catalog was not changed).
//
// A drive must have unloaded its cartridge (LOAD UNLOAD) before it is the
// source of a move; that is the drive's owner's job.
func (l *Library) Move(ctx context.Context, src, dst uint16, cat Catalog) (Inventory, error) {
	before, err := l.Inventory(ctx)
	if err != nil {
		return Inventory{}, fmt.Errorf("move from %d to %d: %w", src, dst, err)
	}
	s, ok := before.At(src)
	if !ok || s.Type == scsi.ElementTransport {
		return before, fmt.Errorf("move from %d: %w: no slot, drive or import/export element at %d", src, ErrNoSuchElement, src)
	}
	d, ok := before.At(dst)
	if !ok || d.Type == scsi.ElementTransport {
		return before, fmt.Errorf("move to %d: %w: no slot, drive or import/export element at %d", dst, ErrNoSuchElement, dst)
	}
	if !s.Full {
		return before, fmt.Errorf("move from %s: %w", s, ErrSourceEmpty)
	}
	if d.Full {
		return before, fmt.Errorf("move to %s: %w", d, ErrDestFull)
	}
	c := scsi.MoveMedium(before.Transports[0].Address, src, dst)
	l.log.Info("moving cartridge", zap.String("barcode", s.Barcode), zap.Stringer("from", s), zap.Stringer("to", d))
	resp, err := l.h.Exec(ctx, c)
	if err == nil {
		err = resp.Err(c)
	}
	after, ierr := l.Inventory(ctx)
	if ierr != nil {
		l.log.Error("library state unknown after move", zap.Error(ierr), zap.NamedError("move", err))
		return Inventory{}, fmt.Errorf("move %q from %d to %d (move: %v): %w: %w", s.Barcode, src, dst, err, ErrStateUnknown, ierr)
	}
	var where Element
	var found bool
	if s.Barcode != "" {
		where, found = after.Find(s.Barcode)
	} else if de, _ := after.At(dst); de.Full {
		// Unlabelled: the destination filled and the source emptied is
		// the only evidence there is.
		if se, _ := after.At(src); !se.Full {
			where, found = de, true
		}
	} else if se, _ := after.At(src); se.Full {
		where, found = se, true
	}
	if cerr := cat.Reconcile(ctx, after); cerr != nil {
		return after, fmt.Errorf("reconcile catalog after move of %q: %w", s.Barcode, cerr)
	}
	if err == nil && found && where.Address == dst {
		return after, nil
	}
	if err == nil {
		err = fmt.Errorf("library reported success but the inventory disagrees: %w", ErrInventory)
	}
	me := &MoveError{Barcode: s.Barcode, From: src, To: dst, Where: where, Found: found, Err: err}
	if found && where.Address == dst {
		// The cartridge arrived though the command reported an error: the
		// physical state is what counts, and the catalog has it.
		l.log.Warn("move reported an error but the cartridge arrived", zap.Error(err))
		return after, nil
	}
	l.log.Error("move failed", zap.Error(me))
	return after, me
}

// Load moves the cartridge with barcode to the drive at address drive.
func (l *Library) Load(ctx context.Context, barcode string, drive uint16, cat Catalog) (Inventory, error) {
	inv, err := l.Inventory(ctx)
	if err != nil {
		return Inventory{}, fmt.Errorf("load %q: %w", barcode, err)
	}
	e, ok := inv.Find(barcode)
	if !ok {
		return inv, fmt.Errorf("load %q: %w", barcode, ErrNotFound)
	}
	return l.Move(ctx, e.Address, drive, cat)
}

// Unload returns the cartridge in the drive to the slot it came from if
// that is empty, else to the first empty slot.
func (l *Library) Unload(ctx context.Context, drive uint16, cat Catalog) (Inventory, error) {
	inv, err := l.Inventory(ctx)
	if err != nil {
		return Inventory{}, fmt.Errorf("unload drive %d: %w", drive, err)
	}
	d, ok := inv.At(drive)
	if !ok || d.Type != scsi.ElementDrive {
		return inv, fmt.Errorf("unload drive %d: %w", drive, ErrNoSuchElement)
	}
	if d.SourceValid {
		if s, ok := inv.At(d.Source); ok && s.Type == scsi.ElementStorage && !s.Full {
			return l.Move(ctx, drive, s.Address, cat)
		}
	}
	slot, err := firstEmpty(inv.Slots)
	if err != nil {
		return inv, fmt.Errorf("unload drive %d: %w", drive, err)
	}
	return l.Move(ctx, drive, slot, cat)
}

// Export moves the cartridge with barcode to the first empty
// import/export element, for an operator to take out.
func (l *Library) Export(ctx context.Context, barcode string, cat Catalog) (Inventory, error) {
	inv, err := l.Inventory(ctx)
	if err != nil {
		return Inventory{}, fmt.Errorf("export %q: %w", barcode, err)
	}
	e, ok := inv.Find(barcode)
	if !ok {
		return inv, fmt.Errorf("export %q: %w", barcode, ErrNotFound)
	}
	ie, err := firstEmpty(inv.IE)
	if err != nil {
		return inv, fmt.Errorf("export %q: import/export: %w", barcode, err)
	}
	return l.Move(ctx, e.Address, ie, cat)
}

// Import moves a cartridge an operator put in the import/export element
// at ie into the first empty slot.
func (l *Library) Import(ctx context.Context, ie uint16, cat Catalog) (Inventory, error) {
	inv, err := l.Inventory(ctx)
	if err != nil {
		return Inventory{}, fmt.Errorf("import from %d: %w", ie, err)
	}
	slot, err := firstEmpty(inv.Slots)
	if err != nil {
		return inv, fmt.Errorf("import from %d: %w", ie, err)
	}
	return l.Move(ctx, ie, slot, cat)
}

func firstEmpty(els []Element) (uint16, error) {
	for _, e := range els {
		if !e.Full && !e.Exception {
			return e.Address, nil
		}
	}
	return 0, ErrNoFreeSlot
}
