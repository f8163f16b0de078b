package emu

import (
	"context"
	"encoding/binary"
	"sync"

	"vaultnode/appliance/tape/scsi"
)

// Tape is an emulated sequential-access drive (SSC): variable-length
// blocks and filemarks on a Media, where the logical object number of a
// block or filemark is its index. With TgtQuirks it answers as tgt 1.0.85
// behind QEMU does (docs/tape.md, LAB.md): a short READ is CHECK CONDITION
// with ILI and the residue in INFORMATION even with SILI=1, the transfer
// residue is always reported as 0, READ POSITION is a stub, and MODE
// SELECT(10), LOG SENSE and LOCATE are invalid operation codes.
//
// A drive attached to a Library (AttachDrive) holds the cartridge the
// library moved into it; NewTape's drive holds a blank in-memory one.
type Tape struct {
	mu      sync.Mutex
	m       *Media
	pos     int
	loaded  bool
	block   uint32
	warming int
	alerts  map[int]bool
	serial  string
	// failAfter > 0: that many more WRITEs succeed, then the drive fails
	// (failWrites).
	failAfter int
	reset     bool // a power-on reset happened: the next command gets 6/29/00
	// misorder > 0: that many more WRITEs are stored in order, then the
	// next one lands before the block preceding it (MisorderAfter).
	misorder int
	reads    int // READ commands answered
	// Capacity and EarlyWarning (bytes) apply to a cartridge that sets
	// none: a write past EarlyWarning succeeds with EOM set; one past
	// Capacity fails with VOLUME OVERFLOW.
	Capacity, EarlyWarning int
	TgtQuirks              bool
	// ZeroResid reports every transfer as complete, as QEMU's iscsi
	// scsi-generic path does (TgtQuirks implies it).
	ZeroResid bool
	// CleaningTURs is how many TEST UNIT READYs a cleaning lasts (0: 3):
	// meanwhile the drive answers NOT READY, cleaning cartridge installed
	// (2/30/03), then it ejects the cartridge (2/3A/00) for the library to
	// take back, as real drives do.
	CleaningTURs int
	cleaning     bool // a cleaning cartridge is in
	cleanLeft    int
	cleanExpired bool
	// OnWrite, when set, is called before each WRITE is executed, outside
	// the drive's lock: tests hold a drive there to see what the others
	// do meanwhile.
	OnWrite func()
}

type record struct {
	data []byte
	mark bool
}

// NewTape returns a drive with serial number serial and a loaded, blank
// cartridge whose first becomingReady TEST UNIT READYs report 2/04/01.
func NewTape(serial string, becomingReady int) *Tape {
	return &Tape{serial: serial, m: &Media{}, loaded: true, warming: becomingReady, alerts: map[int]bool{}, Capacity: 1 << 30, EarlyWarning: 1<<30 - 1<<20}
}

// NewEmptyTape returns a drive with serial number serial and no
// cartridge, for a Library to load.
func NewEmptyTape(serial string) *Tape {
	return &Tape{serial: serial, alerts: map[int]bool{}, Capacity: 1 << 30, EarlyWarning: 1<<30 - 1<<20}
}

// FailWritesAfter makes the drive fail as a drive whose connection or
// power went: after n more WRITEs succeed, the next WRITE answers HARDWARE
// ERROR (4/44/00) and the blocks written since the last filemark, still in
// the drive's buffer, are lost. Later commands work again (the next job
// resumes).
func (t *Tape) FailWritesAfter(n int) { t.mu.Lock(); t.failAfter = n + 1; t.mu.Unlock() }

// MisorderAfter makes the drive store blocks out of order, as a transport
// that reorders queued commands does: after n more WRITEs (n >= 1), the
// next one is stored before the block written just before it. Every WRITE
// is acknowledged.
func (t *Tape) MisorderAfter(n int) { t.mu.Lock(); t.misorder = n + 1; t.mu.Unlock() }

// Reset resets the drive as a power cycle or a bus reset of a drive that
// rewinds does: the blocks still in its buffer are lost, the tape is at
// its beginning, and the next command but INQUIRY and REQUEST SENSE is
// answered with UNIT ATTENTION, power on or reset (6/29/00), and not
// executed.
func (t *Tape) Reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m != nil {
		t.m.lose()
	}
	t.pos, t.reset = 0, true
}

// insert threads a cartridge the library put in.
func (t *Tape) insert(m *Media) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m, t.loaded, t.pos = m, true, 0
}

// insertCleaning threads a cleaning cartridge: it cleans (clearing
// TapeAlert 20 and 21) or, expired, sets TapeAlert 22 instead, then ejects.
func (t *Tape) insertCleaning(expired bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m, t.loaded, t.pos = &Media{}, true, 0
	t.cleaning, t.cleanExpired, t.cleanLeft = true, expired, t.CleaningTURs
	if t.cleanLeft <= 0 {
		t.cleanLeft = 3
	}
}

// clean answers a command while a cleaning cartridge is threaded.
func (t *Tape) clean(op byte) scsi.Response {
	if op != 0x00 || t.cleanLeft > 1 {
		if op == 0x00 {
			t.cleanLeft--
		}
		t.alerts[11] = op != 0x00 // data access with a cleaning cartridge in
		return sense(scsi.KeyNotReady, 0x30, 0x03)
	}
	t.cleanLeft = 0
	if t.cleanExpired {
		t.alerts[22] = true
	} else {
		delete(t.alerts, 20)
		delete(t.alerts, 21)
		delete(t.alerts, 22)
	}
	delete(t.alerts, 11)
	t.cleaning, t.loaded = false, false // ejected: the library may take it
	return sense(scsi.KeyNotReady, 0x3A, 0x00)
}

// ClearAlert lowers TapeAlert flag n.
func (t *Tape) ClearAlert(n int) { t.mu.Lock(); delete(t.alerts, n); t.mu.Unlock() }

// remove gives the cartridge to the library; false while it is still
// threaded (not unloaded).
func (t *Tape) remove() (*Media, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		return nil, true // nothing threaded (a move that never started)
	}
	if t.loaded {
		return nil, false
	}
	m := t.m
	t.m = nil
	m.save()
	return m, true
}

func (t *Tape) capacity() (int, int) {
	if t.m.Capacity > 0 {
		return t.m.Capacity, t.m.EarlyWarning
	}
	return t.Capacity, t.EarlyWarning
}

// Reads counts the READ commands the drive answered.
func (t *Tape) Reads() int { t.mu.Lock(); defer t.mu.Unlock(); return t.reads }

// SetAlert raises TapeAlert flag n.
func (t *Tape) SetAlert(n int) { t.mu.Lock(); t.alerts[n] = true; t.mu.Unlock() }

func good(n int) scsi.Response { return scsi.Response{Status: scsi.StatusGood, Transferred: n} }

// streamSense builds fixed sense with the stream bits and INFORMATION.
func streamSense(key, asc, ascq byte, fm, eom, ili bool, info int32) scsi.Response {
	r := sense(key, asc, ascq)
	if fm {
		r.Sense[2] |= 0x80
	}
	if eom {
		r.Sense[2] |= 0x40
	}
	if ili {
		r.Sense[2] |= 0x20
	}
	r.Sense[0] |= 0x80
	binary.BigEndian.PutUint32(r.Sense[3:7], uint32(info))
	return r
}

// Exec answers one command.
func (t *Tape) Exec(ctx context.Context, c scsi.Command) (scsi.Response, error) {
	if err := ctx.Err(); err != nil {
		return scsi.Response{}, err
	}
	if len(c.CDB) > 0 && c.CDB[0] == 0x0A && t.OnWrite != nil {
		t.OnWrite()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(c.CDB) < 6 {
		return sense(scsi.KeyIllegalRequest, 0x20, 0), nil
	}
	op := c.CDB[0]
	if t.reset && op != 0x12 && op != 0x03 {
		t.reset = false
		return sense(scsi.KeyUnitAttention, 0x29, 0x00), nil
	}
	if t.TgtQuirks {
		switch op {
		case 0x55, 0x4D, 0x2B, 0x92: // tgt 1.0.85's SSC: no MODE SELECT(10), LOG SENSE or LOCATE
			return sense(scsi.KeyIllegalRequest, 0x20, 0), nil
		}
	}
	switch op {
	case 0x12: // INQUIRY
		d := make([]byte, 36)
		if c.CDB[1]&1 != 0 {
			d = append([]byte{scsi.TypeSequential, scsi.VPDSerial, 0, byte(len(t.serial))}, t.serial...)
		} else {
			d[0], d[1], d[4] = scsi.TypeSequential, 0x80, 31
			copy(d[8:], "VAULTEMU")
			copy(d[16:], "EMULATED-TAPE   0001")
		}
		return good(copy(c.Data, d)), nil
	case 0x1B: // LOAD UNLOAD
		if t.m == nil {
			return sense(scsi.KeyNotReady, 0x3A, 0), nil
		}
		t.loaded = c.CDB[4]&1 != 0
		t.pos = 0
		if t.cleaning {
			t.cleaning, t.loaded = false, false // an unload ends a cleaning early
			return good(0), nil
		}
		t.m.save()
		return good(0), nil
	case 0x4D: // LOG SENSE
		if c.CDB[2]&0x3F != scsi.PageTapeAlert {
			return sense(scsi.KeyIllegalRequest, 0x24, 0), nil
		}
		d := []byte{scsi.PageTapeAlert, 0, 0, 0}
		for i := 1; i <= 64; i++ {
			v := byte(0)
			if t.alerts[i] {
				v = 1
			}
			d = append(d, 0, byte(i), 0x03, 1, v)
		}
		binary.BigEndian.PutUint16(d[2:4], uint16(len(d)-4))
		return good(copy(c.Data, d)), nil
	case 0x5A: // MODE SENSE(10)
		d := make([]byte, 16)
		d[1], d[3], d[7] = 14, 0x10, 8
		d[8+5], d[8+6], d[8+7] = byte(t.block>>16), byte(t.block>>8), byte(t.block)
		return good(copy(c.Data, d)), nil
	case 0x15: // MODE SELECT(6)
		if len(c.Data) < 12 || c.Data[3] != 8 {
			return sense(scsi.KeyIllegalRequest, 0x26, 0), nil
		}
		t.block = uint32(c.Data[9])<<16 | uint32(c.Data[10])<<8 | uint32(c.Data[11])
		return good(0), nil
	case 0x55: // MODE SELECT(10)
		if len(c.Data) < 16 || binary.BigEndian.Uint16(c.Data[6:8]) != 8 {
			return sense(scsi.KeyIllegalRequest, 0x26, 0), nil
		}
		t.block = uint32(c.Data[13])<<16 | uint32(c.Data[14])<<8 | uint32(c.Data[15])
		return good(0), nil
	}
	if t.cleaning && t.loaded {
		return t.clean(op), nil
	}
	if !t.loaded || t.m == nil {
		return sense(scsi.KeyNotReady, 0x3A, 0), nil
	}
	if t.warming > 0 {
		t.warming--
		return sense(scsi.KeyNotReady, 0x04, 0x01), nil
	}
	switch op {
	case 0x00:
		return good(0), nil
	case 0x01: // REWIND
		t.pos = 0
		return good(0), nil
	case 0x0A: // WRITE(6), variable
		n := int(c.CDB[2])<<16 | int(c.CDB[3])<<8 | int(c.CDB[4])
		if c.CDB[1]&1 != 0 || n != len(c.Data) {
			return sense(scsi.KeyIllegalRequest, 0x24, 0), nil
		}
		if t.failAfter > 0 {
			if t.failAfter--; t.failAfter == 0 {
				t.m.lose()
				t.pos = min(t.pos, len(t.m.recs))
				return sense(scsi.KeyHardwareError, 0x44, 0x00), nil
			}
		}
		capacity, warning := t.capacity()
		t.truncate()
		if t.m.used+n > capacity {
			return streamSense(scsi.KeyVolumeOverflow, 0, 0x02, false, true, false, int32(n)), nil
		}
		t.m.recs = append(t.m.recs, record{data: append([]byte(nil), c.Data...)})
		if t.misorder > 0 {
			if t.misorder--; t.misorder == 0 && len(t.m.recs) >= 2 && t.pos > t.m.flushed {
				r := t.m.recs
				r[len(r)-1], r[len(r)-2] = r[len(r)-2], r[len(r)-1]
			}
		}
		t.pos++
		t.m.used += n
		if t.m.used > warning {
			return streamSense(scsi.KeyNoSense, 0, 0x02, false, true, false, 0), nil
		}
		return good(n), nil
	case 0x10: // WRITE FILEMARKS
		n := int(c.CDB[2])<<16 | int(c.CDB[3])<<8 | int(c.CDB[4])
		t.truncate()
		for range n {
			t.m.recs = append(t.m.recs, record{mark: true})
			t.pos++
		}
		if err := t.m.flush(); err != nil {
			return sense(scsi.KeyMediumError, 0x0C, 0x00), nil
		}
		return good(0), nil
	case 0x08: // READ(6), variable
		t.reads++
		return t.read(c), nil
	case 0x11: // SPACE(6)
		count := int32(uint32(c.CDB[2])<<16|uint32(c.CDB[3])<<8|uint32(c.CDB[4])) << 8 >> 8
		return t.space(c.CDB[1]&0x0F, int(count)), nil
	case 0x2B, 0x92: // LOCATE
		obj := uint64(binary.BigEndian.Uint32(c.CDB[3:7]))
		if op == 0x92 {
			obj = binary.BigEndian.Uint64(c.CDB[4:12])
		}
		if obj > uint64(len(t.m.recs)) {
			t.pos = len(t.m.recs)
			return sense(scsi.KeyBlankCheck, 0x00, 0x05), nil
		}
		t.pos = int(obj)
		return good(0), nil
	case 0x34: // READ POSITION
		d := make([]byte, 32)
		if t.TgtQuirks { // bs_ssc.c: byte 0 = the form's length, all else zero
			d[0] = 20
			if c.CDB[1]&0x1F == 0x06 {
				d[0] = 32
			}
			return good(copy(c.Data, d)), nil
		}
		if c.CDB[1]&0x1F != 0x06 {
			return sense(scsi.KeyIllegalRequest, 0x24, 0), nil
		}
		if t.pos == 0 {
			d[0] = 0x80
		}
		marks := 0
		for _, r := range t.m.recs[:t.pos] {
			if r.mark {
				marks++
			}
		}
		binary.BigEndian.PutUint64(d[8:16], uint64(t.pos))
		binary.BigEndian.PutUint64(d[16:24], uint64(marks))
		return good(copy(c.Data, d)), nil
	}
	return sense(scsi.KeyIllegalRequest, 0x20, 0), nil
}

// truncate drops everything after the position: writing makes the rest
// of the tape unreadable (a new end of data).
func (t *Tape) truncate() {
	m := t.m
	for _, r := range m.recs[t.pos:] {
		m.used -= len(r.data)
	}
	m.recs = m.recs[:t.pos]
	m.flushed = min(m.flushed, t.pos)
}

func (t *Tape) read(c scsi.Command) scsi.Response {
	want := int(c.CDB[2])<<16 | int(c.CDB[3])<<8 | int(c.CDB[4])
	sili := c.CDB[1]&0x02 != 0
	if c.CDB[1]&1 != 0 || want > len(c.Data) {
		return sense(scsi.KeyIllegalRequest, 0x24, 0)
	}
	if t.pos >= len(t.m.recs) {
		return sense(scsi.KeyBlankCheck, 0x00, 0x05)
	}
	r := t.m.recs[t.pos]
	t.pos++
	if r.mark {
		return streamSense(scsi.KeyNoSense, 0, 0x01, true, false, false, int32(want))
	}
	n := copy(c.Data[:want], r.data)
	reported := n
	if t.TgtQuirks || t.ZeroResid {
		reported = want // resid always 0 through QEMU's scsi-generic
	}
	switch {
	case len(r.data) > want:
		resp := streamSense(scsi.KeyNoSense, 0, 0, false, false, true, int32(want-len(r.data)))
		resp.Transferred = reported
		return resp
	case len(r.data) < want && (!sili || t.TgtQuirks):
		resp := streamSense(scsi.KeyNoSense, 0, 0, false, false, true, int32(want-n))
		resp.Transferred = reported
		return resp
	}
	return good(reported)
}

func (t *Tape) space(code byte, count int) scsi.Response {
	switch scsi.SpaceCode(code) {
	case scsi.SpaceEOD:
		t.pos = len(t.m.recs)
		return good(0)
	case scsi.SpaceBlocks:
		for ; count > 0; count-- {
			if t.pos >= len(t.m.recs) {
				return sense(scsi.KeyBlankCheck, 0x00, 0x05)
			}
			if t.m.recs[t.pos].mark {
				t.pos++
				return streamSense(scsi.KeyNoSense, 0, 0x01, true, false, false, int32(count))
			}
			t.pos++
		}
		for ; count < 0; count++ {
			if t.pos == 0 {
				return streamSense(scsi.KeyNoSense, 0, 0x04, false, true, false, int32(-count))
			}
			t.pos--
		}
		return good(0)
	case scsi.SpaceFilemarks:
		for ; count > 0; count-- {
			for {
				if t.pos >= len(t.m.recs) {
					return sense(scsi.KeyBlankCheck, 0x00, 0x05)
				}
				t.pos++
				if t.m.recs[t.pos-1].mark {
					break
				}
			}
		}
		for ; count < 0; count++ {
			for {
				if t.pos == 0 {
					return streamSense(scsi.KeyNoSense, 0, 0x04, false, true, false, int32(-count))
				}
				t.pos--
				if t.m.recs[t.pos].mark {
					break
				}
			}
		}
		return good(0)
	}
	return sense(scsi.KeyIllegalRequest, 0x24, 0)
}
