// Package emu is an in-memory SCSI medium changer (SMC-3) for tests: slots,
// drives with serial numbers, import/export slots, a picker and barcodes,
// answering the commands of package scsi with the layouts and sense codes
// of a real library. It refuses bad moves the way a library does, and can
// be told to fail a move halfway, so the changer logic above it is tested
// against the failure modes where tape software lets its catalog run ahead.
package emu

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"

	"vaultnode/appliance/tape/scsi"
)

// MoveFailure says how the next MOVE MEDIUM fails.
type MoveFailure int

const (
	MoveOK MoveFailure = iota
	// MoveStuckInPicker leaves the cartridge in the transport element and
	// reports HARDWARE ERROR, mechanical positioning error (4/15/01).
	MoveStuckInPicker
	// MoveNotStarted leaves the cartridge at its source, same error.
	MoveNotStarted
	// MoveDoneButError puts the cartridge at the destination and still
	// reports the error (a timeout on the way back, for instance).
	MoveDoneButError
)

type element struct {
	typ      byte
	addr     uint16
	full     bool
	barcode  string
	source   uint16
	srcValid bool
	id       string
	impexp   bool
}

// Library is the emulated changer. The zero value is not usable; call New.
type Library struct {
	mu        sync.Mutex
	elems     map[uint16]*element
	transport uint16
	// PageLimit caps the descriptors in one READ ELEMENT STATUS answer
	// (tgt fits about 78 in its 4 KiB reply), to exercise paging.
	PageLimit int
	// RejectType0 answers element type 0 with ILLEGAL REQUEST, as a test
	// that the caller asks one type per request.
	RejectType0 bool
	// RejectDVCID answers DVCID=1 with ILLEGAL REQUEST, invalid field in
	// CDB, as older libraries do.
	RejectDVCID bool
	// RejectVoltagDVCID refuses VOLTAG and DVCID in one request, as some
	// changers do (PBS asks them separately for that reason).
	RejectVoltagDVCID bool
	next              MoveFailure
	failReads         int
	tapes             map[uint16]*Tape  // drives attached by address
	media             map[string]*Media // cartridges' contents by barcode
	mediaDir          string
	attention         bool
	moves             int
	// CleaningLife is how many cleanings a cleaning cartridge (barcode
	// CLN...) gives before a drive refuses it as expired (0: 50).
	CleaningLife int
	cleanUses    map[string]int
}

// New returns an empty library whose picker sits at transport.
func New(transport uint16) *Library {
	l := &Library{elems: map[uint16]*element{}, transport: transport}
	l.elems[transport] = &element{typ: scsi.ElementTransport, addr: transport}
	return l
}

func (l *Library) add(e *element) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, dup := l.elems[e.addr]; dup {
		panic(fmt.Sprintf("emu: element address %d used twice", e.addr))
	}
	l.elems[e.addr] = e
}

// AddSlots adds len(barcodes) storage elements from start; "" is an empty
// slot, "-" a cartridge without a barcode label.
func (l *Library) AddSlots(start uint16, barcodes ...string) {
	for i, bc := range barcodes {
		e := &element{typ: scsi.ElementStorage, addr: start + uint16(i)}
		if bc != "" {
			e.full = true
			if bc != "-" {
				e.barcode = bc
			}
		}
		l.add(e)
	}
}

// AddDrive adds an empty data transfer element whose DVCID is serial.
func (l *Library) AddDrive(addr uint16, serial string) {
	l.add(&element{typ: scsi.ElementDrive, addr: addr, id: serial})
}

// AttachDrive couples the drive element at addr with an emulated drive:
// a cartridge moved into the element is loaded into t, and a cartridge is
// taken out only after t unloaded it (else 2/53/02, medium removal
// prevented, as a library whose drive still holds the tape answers).
func (l *Library) AttachDrive(addr uint16, t *Tape) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tapes == nil {
		l.tapes = map[uint16]*Tape{}
	}
	l.tapes[addr] = t
	if l.media == nil {
		l.media = map[string]*Media{}
	}
}

// KeepMedia keeps every cartridge's content in an image file
// dir/BARCODE.img (Media's format), made when a cartridge is first loaded.
func (l *Library) KeepMedia(dir string) { l.mu.Lock(); l.mediaDir = dir; l.mu.Unlock() }

// Media returns the content of the cartridge with barcode, making it
// (blank, or read from its image) if it has none yet.
func (l *Library) Media(barcode string) (*Media, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mediaOf(barcode)
}

func (l *Library) mediaOf(barcode string) (*Media, error) {
	if m := l.media[barcode]; m != nil {
		return m, nil
	}
	m := NewMedia()
	if l.mediaDir != "" && barcode != "" {
		var err error
		if m, err = OpenMedia(l.mediaDir + "/" + barcode + ".img"); err != nil {
			return nil, err
		}
	}
	if l.media == nil {
		l.media = map[string]*Media{}
	}
	l.media[barcode] = m
	return m, nil
}

// AddIE adds an empty import/export element.
func (l *Library) AddIE(addr uint16) { l.add(&element{typ: scsi.ElementIE, addr: addr}) }

// Insert puts a cartridge into an empty import/export element as an
// operator does, and raises a unit attention (28/01).
func (l *Library) Insert(addr uint16, barcode string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.elems[addr]
	if !ok || e.typ != scsi.ElementIE || e.full {
		return fmt.Errorf("emu: insert at %d: not an empty import/export element", addr)
	}
	e.full, e.barcode, e.impexp, e.srcValid = true, barcode, true, false
	l.attention = true
	return nil
}

// Take removes the cartridge from an import/export element as an
// operator does (it goes off site), and raises a unit attention.
func (l *Library) Take(addr uint16) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.elems[addr]
	if !ok || e.typ != scsi.ElementIE || !e.full {
		return "", fmt.Errorf("emu: take from %d: not a full import/export element", addr)
	}
	bc := e.barcode
	e.full, e.barcode, e.impexp, e.srcValid = false, "", false, false
	l.attention = true
	return bc, nil
}

// FailNextMove makes the next MOVE MEDIUM fail as f says.
func (l *Library) FailNextMove(f MoveFailure) { l.mu.Lock(); l.next = f; l.mu.Unlock() }

// FailReads makes the next n READ ELEMENT STATUS fail with HARDWARE ERROR.
func (l *Library) FailReads(n int) { l.mu.Lock(); l.failReads = n; l.mu.Unlock() }

// CleaningUses counts the cleanings a cleaning cartridge gave.
func (l *Library) CleaningUses(barcode string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cleanUses[barcode]
}

// Moves counts the MOVE MEDIUM commands that reached the mechanics.
func (l *Library) Moves() int { l.mu.Lock(); defer l.mu.Unlock(); return l.moves }

// Where returns the address holding barcode.
func (l *Library) Where(barcode string) (uint16, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.elems {
		if e.full && e.barcode == barcode {
			return e.addr, true
		}
	}
	return 0, false
}

func sense(key, asc, ascq byte) scsi.Response {
	s := make([]byte, 18)
	s[0], s[2], s[7], s[12], s[13] = 0x70, key, 10, asc, ascq
	return scsi.Response{Status: scsi.StatusCheckCondition, Sense: s}
}

// Exec answers one command.
func (l *Library) Exec(ctx context.Context, c scsi.Command) (scsi.Response, error) {
	if err := ctx.Err(); err != nil {
		return scsi.Response{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(c.CDB) == 0 {
		return sense(scsi.KeyIllegalRequest, 0x20, 0), nil
	}
	if l.attention && c.CDB[0] != 0x12 && c.CDB[0] != 0x03 {
		l.attention = false
		return sense(scsi.KeyUnitAttention, 0x28, 0x01), nil
	}
	switch c.CDB[0] {
	case 0x00, 0x07: // TEST UNIT READY, INITIALIZE ELEMENT STATUS
		return scsi.Response{Status: scsi.StatusGood}, nil
	case 0x12: // INQUIRY
		d := make([]byte, 36)
		d[0], d[1], d[4] = scsi.TypeChanger, 0x80, 31
		copy(d[8:], "VAULTEMU")
		copy(d[16:], "EMULATED-SMC    0001")
		n := copy(c.Data, d)
		return scsi.Response{Status: scsi.StatusGood, Transferred: n}, nil
	case 0xB8:
		return l.readElementStatus(c), nil
	case 0xA5:
		return l.moveMedium(c), nil
	}
	return sense(scsi.KeyIllegalRequest, 0x20, 0), nil
}

func (l *Library) sorted(typ byte, start uint16) []*element {
	var out []*element
	for _, e := range l.elems {
		if (typ == 0 || e.typ == typ) && e.addr >= start {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b *element) int {
		if a.typ != b.typ && typ == 0 {
			return int(a.typ) - int(b.typ)
		}
		return int(a.addr) - int(b.addr)
	})
	return out
}

func (l *Library) readElementStatus(c scsi.Command) scsi.Response {
	if len(c.CDB) < 12 {
		return sense(scsi.KeyIllegalRequest, 0x24, 0)
	}
	if l.failReads > 0 {
		l.failReads--
		return sense(scsi.KeyHardwareError, 0x44, 0)
	}
	typ := c.CDB[1] & 0x0F
	voltag := c.CDB[1]&0x10 != 0
	dvcid := c.CDB[6]&0x01 != 0
	start := binary.BigEndian.Uint16(c.CDB[2:4])
	count := int(binary.BigEndian.Uint16(c.CDB[4:6]))
	alloc := int(c.CDB[7])<<16 | int(c.CDB[8])<<8 | int(c.CDB[9])
	if typ > scsi.ElementDrive || (typ == 0 && l.RejectType0) || (dvcid && l.RejectDVCID) || (dvcid && voltag && l.RejectVoltagDVCID) {
		return sense(scsi.KeyIllegalRequest, 0x24, 0)
	}
	els := l.sorted(typ, start)
	if len(els) == 0 {
		return sense(scsi.KeyIllegalRequest, 0x21, 0x01)
	}
	if count < len(els) {
		els = els[:count]
	}
	if l.PageLimit > 0 && len(els) > l.PageLimit {
		els = els[:l.PageLimit]
	}
	var body []byte
	for i := 0; i < len(els); {
		j := i
		for j < len(els) && els[j].typ == els[i].typ {
			j++
		}
		body = append(body, page(els[i:j], voltag, dvcid)...)
		i = j
	}
	out := make([]byte, 8, 8+len(body))
	binary.BigEndian.PutUint16(out[0:2], els[0].addr)
	binary.BigEndian.PutUint16(out[2:4], uint16(len(els)))
	out[5], out[6], out[7] = byte(len(body)>>16), byte(len(body)>>8), byte(len(body))
	out = append(out, body...)
	n := copy(c.Data[:min(alloc, len(c.Data))], out)
	return scsi.Response{Status: scsi.StatusGood, Transferred: n}
}

func page(els []*element, voltag, dvcid bool) []byte {
	dlen := 12
	if voltag {
		dlen += 36
	}
	if dvcid {
		longest := 0
		for _, e := range els {
			if e.typ == scsi.ElementDrive {
				longest = max(longest, len(e.id))
			}
		}
		dlen += 4 + (longest+1)&^1
	}
	h := make([]byte, 8)
	h[0] = els[0].typ
	if voltag {
		h[1] = 0x80
	}
	binary.BigEndian.PutUint16(h[2:4], uint16(dlen))
	n := dlen * len(els)
	h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
	for _, e := range els {
		d := make([]byte, dlen)
		binary.BigEndian.PutUint16(d[0:2], e.addr)
		d[2] = 0x08 // access
		if e.full {
			d[2] |= 0x01
		}
		if e.impexp {
			d[2] |= 0x02
		}
		if e.srcValid {
			d[9] = 0x80
			binary.BigEndian.PutUint16(d[10:12], e.source)
		}
		off := 12
		if voltag {
			copy(d[off:off+32], fmt.Sprintf("%-32s", e.barcode))
			off += 36
		}
		if dvcid && e.typ == scsi.ElementDrive {
			d[off], d[off+1], d[off+3] = 2, 0, byte(len(e.id)) // ASCII, serial only
			copy(d[off+4:], e.id)
		}
		h = append(h, d...)
	}
	return h
}

func (l *Library) moveMedium(c scsi.Command) scsi.Response {
	if len(c.CDB) < 12 {
		return sense(scsi.KeyIllegalRequest, 0x24, 0)
	}
	tr := binary.BigEndian.Uint16(c.CDB[2:4])
	src, dst := l.elems[binary.BigEndian.Uint16(c.CDB[4:6])], l.elems[binary.BigEndian.Uint16(c.CDB[6:8])]
	if (tr != 0 && tr != l.transport) || src == nil || dst == nil || src.typ == scsi.ElementTransport || dst.typ == scsi.ElementTransport {
		return sense(scsi.KeyIllegalRequest, 0x21, 0x01)
	}
	if !src.full {
		return sense(scsi.KeyIllegalRequest, 0x3B, 0x0E)
	}
	if dst.full && dst != src {
		return sense(scsi.KeyIllegalRequest, 0x3B, 0x0D)
	}
	if t := l.tapes[src.addr]; t != nil && src.typ == scsi.ElementDrive {
		m, ok := t.remove()
		if !ok {
			return sense(scsi.KeyNotReady, 0x53, 0x02)
		}
		if m != nil {
			l.media[src.barcode] = m
		}
	}
	f := l.next
	l.next = MoveOK
	l.moves++
	if t := l.tapes[dst.addr]; t != nil && dst.typ == scsi.ElementDrive && f != MoveStuckInPicker && f != MoveNotStarted &&
		strings.HasPrefix(src.barcode, "CLN") {
		life := l.CleaningLife
		if life <= 0 {
			life = 50
		}
		if l.cleanUses == nil {
			l.cleanUses = map[string]int{}
		}
		expired := l.cleanUses[src.barcode] >= life
		if !expired {
			l.cleanUses[src.barcode]++
		}
		t.insertCleaning(expired)
	} else if t := l.tapes[dst.addr]; t != nil && dst.typ == scsi.ElementDrive && f != MoveStuckInPicker && f != MoveNotStarted {
		m, err := l.mediaOf(src.barcode)
		if err != nil {
			return sense(scsi.KeyHardwareError, 0x44, 0)
		}
		t.insert(m)
	}
	switch f {
	case MoveNotStarted:
		return sense(scsi.KeyHardwareError, 0x15, 0x01)
	case MoveStuckInPicker:
		dst = l.elems[l.transport]
	}
	bc := src.barcode
	src.full, src.barcode, src.impexp, src.srcValid = false, "", false, false
	dst.full, dst.barcode, dst.source, dst.srcValid = true, bc, src.addr, true
	if f != MoveOK {
		return sense(scsi.KeyHardwareError, 0x15, 0x01)
	}
	return scsi.Response{Status: scsi.StatusGood}
}
