package scsi

import (
	"encoding/binary"
	"fmt"
)

// Operation codes (SPC-4, SSC-4, SMC-3).
const (
	opTestUnitReady     = 0x00
	opRewind            = 0x01
	opRequestSense      = 0x03
	opInitElementStatus = 0x07
	opRead6             = 0x08
	opWrite6            = 0x0A
	opWriteFilemarks    = 0x10
	opSpace6            = 0x11
	opInquiry           = 0x12
	opModeSelect6       = 0x15
	opLoadUnload        = 0x1B
	opLocate10          = 0x2B
	opReadPosition      = 0x34
	opModeSelect10      = 0x55
	opLogSense          = 0x4D
	opModeSense10       = 0x5A
	opLocate16          = 0x92
	opMoveMedium        = 0xA5
	opReadElementStatus = 0xB8
)

// MaxTransfer6 is the largest transfer length READ(6)/WRITE(6) can carry
// (24 bits) in variable-block mode.
const MaxTransfer6 = 1<<24 - 1

// Inquiry asks for the standard INQUIRY data (alloc bytes, at most 65535).
func Inquiry(alloc int) Command {
	cdb := []byte{opInquiry, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(cdb[3:5], uint16(alloc))
	return Command{CDB: cdb, Dir: DirFromDevice, Data: make([]byte, alloc), Timeout: TimeoutShort}
}

// InquiryVPD asks for a vital product data page (EVPD=1), e.g. VPDSerial.
func InquiryVPD(page byte, alloc int) Command {
	c := Inquiry(alloc)
	c.CDB[1] = 0x01
	c.CDB[2] = page
	return c
}

// VPD pages.
const (
	VPDSupported = 0x00
	VPDSerial    = 0x80
	VPDDeviceID  = 0x83
)

// TestUnitReady asks whether the unit can take media access commands.
func TestUnitReady() Command {
	return Command{CDB: make([]byte, 6), Dir: DirNone, Timeout: TimeoutShort}
}

// RequestSense fetches sense data explicitly (descriptor format if desc).
func RequestSense(desc bool) Command {
	cdb := []byte{opRequestSense, 0, 0, 0, MaxSense, 0}
	if desc {
		cdb[1] = 0x01
	}
	return Command{CDB: cdb, Dir: DirFromDevice, Data: make([]byte, MaxSense), Timeout: TimeoutShort}
}

// ModeSense10 reads a mode page (page 0x3F = all, 0x00 = block descriptor
// only) with the block descriptor (DBD=0), current values.
func ModeSense10(page byte, alloc int) Command {
	cdb := make([]byte, 10)
	cdb[0] = opModeSense10
	cdb[2] = page & 0x3F
	binary.BigEndian.PutUint16(cdb[7:9], uint16(alloc))
	return Command{CDB: cdb, Dir: DirFromDevice, Data: make([]byte, alloc), Timeout: TimeoutShort}
}

// ModeSelectBlockSize sets the drive's block length (0 = variable-block
// mode) and buffered mode 1, keeping the density code (0 = default). It
// sends a MODE SELECT(10) header plus one short block descriptor, PF=1.
func ModeSelectBlockSize(blockSize uint32) (Command, error) {
	if blockSize > 0xFFFFFF {
		return Command{}, fmt.Errorf("encode MODE SELECT: block size %d exceeds 24 bits", blockSize)
	}
	data := make([]byte, 8+8)
	// Header: mode data length reserved (0) in MODE SELECT, medium type 0,
	// device-specific parameter: buffered mode 1 (bits 6-4).
	data[3] = 0x10
	binary.BigEndian.PutUint16(data[6:8], 8) // block descriptor length
	// Block descriptor: density 0 (keep), number of blocks 0, block length.
	data[8+5] = byte(blockSize >> 16)
	data[8+6] = byte(blockSize >> 8)
	data[8+7] = byte(blockSize)
	cdb := make([]byte, 10)
	cdb[0] = opModeSelect10
	cdb[1] = 0x10 // PF
	binary.BigEndian.PutUint16(cdb[7:9], uint16(len(data)))
	return Command{CDB: cdb, Dir: DirToDevice, Data: data, Timeout: TimeoutShort}, nil
}

// ModeSelect6BlockSize is ModeSelectBlockSize as MODE SELECT(6), for
// drives that implement only the 6-byte form (tgt, older drives): a 4-byte
// header plus one block descriptor, PF=1.
func ModeSelect6BlockSize(blockSize uint32) (Command, error) {
	if blockSize > 0xFFFFFF {
		return Command{}, fmt.Errorf("encode MODE SELECT(6): block size %d exceeds 24 bits", blockSize)
	}
	data := make([]byte, 4+8)
	data[2] = 0x10 // buffered mode 1
	data[3] = 8    // block descriptor length
	data[4+5], data[4+6], data[4+7] = byte(blockSize>>16), byte(blockSize>>8), byte(blockSize)
	return Command{CDB: []byte{opModeSelect6, 0x10, 0, 0, byte(len(data)), 0}, Dir: DirToDevice, Data: data, Timeout: TimeoutShort}, nil
}

// Element type codes (SMC-3).
const (
	ElementAll       = 0
	ElementTransport = 1 // medium transport element (MTE, the picker)
	ElementStorage   = 2 // storage element (SE, a slot)
	ElementIE        = 3 // import/export element (IEE, the mail slot)
	ElementDrive     = 4 // data transfer element (DTE, a drive)
)

// ReadElementStatus asks for the status of elements of one type from
// address start on, with volume tags (barcodes) if voltag and the drives'
// device identifiers if dvcid (some changers refuse both in one request:
// ask twice). vaultnode asks one type per request (see docs/tape.md: real
// libraries accept it and tgt corrupts type 0). Keep alloc at most 0xFFFF:
// some changers read only the low two bytes of the allocation length.
func ReadElementStatus(typ byte, start, count uint16, alloc int, voltag, dvcid bool) Command {
	cdb := make([]byte, 12)
	cdb[0] = opReadElementStatus
	cdb[1] = typ & 0x0F
	if voltag {
		cdb[1] |= 0x10
	}
	binary.BigEndian.PutUint16(cdb[2:4], start)
	binary.BigEndian.PutUint16(cdb[4:6], count)
	if dvcid {
		cdb[6] = 0x01
	}
	cdb[7], cdb[8], cdb[9] = byte(alloc>>16), byte(alloc>>8), byte(alloc)
	return Command{CDB: cdb, Dir: DirFromDevice, Data: make([]byte, alloc), Timeout: TimeoutShort}
}

// MoveMedium moves a cartridge from src to dst with the given transport.
func MoveMedium(transport, src, dst uint16) Command {
	cdb := make([]byte, 12)
	cdb[0] = opMoveMedium
	binary.BigEndian.PutUint16(cdb[2:4], transport)
	binary.BigEndian.PutUint16(cdb[4:6], src)
	binary.BigEndian.PutUint16(cdb[6:8], dst)
	return Command{CDB: cdb, Dir: DirNone, Timeout: TimeoutMove}
}

// InitializeElementStatus makes the library scan every element (barcodes).
func InitializeElementStatus() Command {
	return Command{CDB: []byte{opInitElementStatus, 0, 0, 0, 0, 0}, Dir: DirNone, Timeout: TimeoutInit}
}

// Read6 reads one variable-length block into buf (FIXED=0). With sili the
// drive does not report a short block as an error (tgt does anyway, see
// Sense.Residue).
func Read6(buf []byte, sili bool) (Command, error) {
	if len(buf) > MaxTransfer6 {
		return Command{}, fmt.Errorf("encode READ(6): %d bytes exceed the 24-bit transfer length", len(buf))
	}
	cdb := []byte{opRead6, 0, byte(len(buf) >> 16), byte(len(buf) >> 8), byte(len(buf)), 0}
	if sili {
		cdb[1] = 0x02
	}
	return Command{CDB: cdb, Dir: DirFromDevice, Data: buf, Timeout: TimeoutIO}, nil
}

// Write6 writes buf as one variable-length block (FIXED=0).
func Write6(buf []byte) (Command, error) {
	if len(buf) > MaxTransfer6 {
		return Command{}, fmt.Errorf("encode WRITE(6): %d bytes exceed the 24-bit transfer length", len(buf))
	}
	cdb := []byte{opWrite6, 0, byte(len(buf) >> 16), byte(len(buf) >> 8), byte(len(buf)), 0}
	return Command{CDB: cdb, Dir: DirToDevice, Data: buf, Timeout: TimeoutIO}, nil
}

// WriteFilemarks writes n filemarks (IMMED=0: returns when they are on tape,
// which also flushes the drive's buffer).
func WriteFilemarks(n uint32) (Command, error) {
	if n > MaxTransfer6 {
		return Command{}, fmt.Errorf("encode WRITE FILEMARKS: count %d exceeds 24 bits", n)
	}
	return Command{CDB: []byte{opWriteFilemarks, 0, byte(n >> 16), byte(n >> 8), byte(n), 0}, Dir: DirNone, Timeout: TimeoutIO}, nil
}

// Rewind rewinds to the beginning of the partition (IMMED=0).
func Rewind() Command {
	return Command{CDB: []byte{opRewind, 0, 0, 0, 0, 0}, Dir: DirNone, Timeout: TimeoutPosition}
}

// SpaceCode says what SPACE counts.
type SpaceCode byte

const (
	SpaceBlocks    SpaceCode = 0
	SpaceFilemarks SpaceCode = 1
	SpaceEOD       SpaceCode = 3
)

// Space moves over count blocks or filemarks (negative: backwards), or to
// end of data (count ignored).
func Space(code SpaceCode, count int32) (Command, error) {
	if code == SpaceEOD {
		count = 0
	}
	if count > 1<<23-1 || count < -(1<<23) {
		return Command{}, fmt.Errorf("encode SPACE(6): count %d outside 24-bit signed range", count)
	}
	u := uint32(count)
	return Command{CDB: []byte{opSpace6, byte(code) & 0x0F, byte(u >> 16), byte(u >> 8), byte(u), 0}, Dir: DirNone, Timeout: TimeoutPosition}, nil
}

// Locate10 positions the tape at logical block (object) number block of
// partition 0.
func Locate10(block uint32) Command {
	cdb := make([]byte, 10)
	cdb[0] = opLocate10
	binary.BigEndian.PutUint32(cdb[3:7], block)
	return Command{CDB: cdb, Dir: DirNone, Timeout: TimeoutPosition}
}

// Locate16 positions the tape at logical object number obj (DEST_TYPE 0).
func Locate16(obj uint64) Command {
	cdb := make([]byte, 16)
	cdb[0] = opLocate16
	binary.BigEndian.PutUint64(cdb[4:12], obj)
	return Command{CDB: cdb, Dir: DirNone, Timeout: TimeoutPosition}
}

// ReadPositionLongLen is the size of the long-form READ POSITION data.
const ReadPositionLongLen = 32

// ReadPositionLong asks for the long form (service action 06h), whose
// allocation length field must be zero.
func ReadPositionLong() Command {
	cdb := make([]byte, 10)
	cdb[0] = opReadPosition
	cdb[1] = 0x06
	return Command{CDB: cdb, Dir: DirFromDevice, Data: make([]byte, ReadPositionLongLen), Timeout: TimeoutShort}
}

// LoadUnload loads (load=true) or unloads the cartridge (IMMED=0).
func LoadUnload(load bool) Command {
	cdb := []byte{opLoadUnload, 0, 0, 0, 0, 0}
	if load {
		cdb[4] = 0x01
	}
	return Command{CDB: cdb, Dir: DirNone, Timeout: TimeoutMove}
}

// TapeAlert log page.
const PageTapeAlert = 0x2E

// LogSense reads a log page, cumulative values (PC=01b).
func LogSense(page byte, alloc int) Command {
	cdb := make([]byte, 10)
	cdb[0] = opLogSense
	cdb[2] = 0x40 | page&0x3F
	binary.BigEndian.PutUint16(cdb[7:9], uint16(alloc))
	return Command{CDB: cdb, Dir: DirFromDevice, Data: make([]byte, alloc), Timeout: TimeoutShort}
}
