package scsi

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Sense keys (SPC-4).
const (
	KeyNoSense        = 0x0
	KeyRecoveredError = 0x1
	KeyNotReady       = 0x2
	KeyMediumError    = 0x3
	KeyHardwareError  = 0x4
	KeyIllegalRequest = 0x5
	KeyUnitAttention  = 0x6
	KeyDataProtect    = 0x7
	KeyBlankCheck     = 0x8
	KeyAborted        = 0xB
	KeyVolumeOverflow = 0xD
	KeyMiscompare     = 0xE
)

var keyNames = [16]string{
	"no sense", "recovered error", "not ready", "medium error", "hardware error",
	"illegal request", "unit attention", "data protect", "blank check", "vendor specific",
	"copy aborted", "aborted command", "reserved (0xC)", "volume overflow", "miscompare", "completed",
}

// Sense is decoded sense data, from either the fixed (70h/71h) or the
// descriptor (72h/73h) format.
type Sense struct {
	Deferred bool // 71h/73h: the error belongs to an earlier command
	Key      byte
	ASC      byte
	ASCQ     byte
	// Stream command bits (SSC): a filemark was crossed, the end of the
	// medium (or partition) was reached, the block length did not match.
	Filemark, EOM, ILI bool
	// InfoValid says Information holds a value. For a READ in variable
	// mode with ILI it is the residue: requested minus actual length
	// (negative when the block was longer than the buffer).
	InfoValid   bool
	Information int64
}

// ParseSense decodes sense data. An empty buffer or an unknown response
// code is an error wrapping ErrMalformed; lengths are bounded by len(b).
func ParseSense(b []byte) (Sense, error) {
	if len(b) < 1 {
		return Sense{}, fmt.Errorf("parse sense: empty: %w", ErrMalformed)
	}
	var s Sense
	switch code := b[0] & 0x7F; code {
	case 0x70, 0x71:
		// Fixed format: 18 bytes normally; 8 bytes minimum carry the key.
		if len(b) < 8 {
			return Sense{}, fmt.Errorf("parse fixed sense: %d bytes, need at least 8: %w", len(b), ErrMalformed)
		}
		s.Deferred = code == 0x71
		s.Key = b[2] & 0x0F
		s.Filemark = b[2]&0x80 != 0
		s.EOM = b[2]&0x40 != 0
		s.ILI = b[2]&0x20 != 0
		s.InfoValid = b[0]&0x80 != 0
		// INFORMATION is a signed 32-bit value for the stream commands.
		s.Information = int64(int32(binary.BigEndian.Uint32(b[3:7])))
		end := min(8+int(b[7]), len(b))
		if end >= 14 {
			s.ASC, s.ASCQ = b[12], b[13]
		}
	case 0x72, 0x73:
		if len(b) < 8 {
			return Sense{}, fmt.Errorf("parse descriptor sense: %d bytes, need at least 8: %w", len(b), ErrMalformed)
		}
		s.Deferred = code == 0x73
		s.Key, s.ASC, s.ASCQ = b[1]&0x0F, b[2], b[3]
		end := min(8+int(b[7]), len(b))
		for off := 8; off+2 <= end; {
			typ, n := b[off], int(b[off+1])
			if off+2+n > end {
				return Sense{}, fmt.Errorf("parse descriptor sense: descriptor 0x%02x at %d claims %d bytes past the %d available: %w", typ, off, n, end, ErrMalformed)
			}
			d := b[off+2 : off+2+n]
			switch typ {
			case 0x00: // information
				if n >= 10 {
					s.InfoValid = d[0]&0x80 != 0
					s.Information = int64(binary.BigEndian.Uint64(d[2:10]))
				}
			case 0x04: // stream commands
				if n >= 2 {
					s.Filemark = d[1]&0x80 != 0
					s.EOM = d[1]&0x40 != 0
					s.ILI = d[1]&0x20 != 0
				}
			}
			off += 2 + n
		}
	default:
		return Sense{}, fmt.Errorf("parse sense: response code 0x%02x is neither fixed (70h/71h) nor descriptor (72h/73h): %w", code, ErrMalformed)
	}
	return s, nil
}

// KeyName names the sense key.
func (s Sense) KeyName() string { return keyNames[s.Key&0x0F] }

// Is tells whether the sense has key k and additional sense asc/ascq.
func (s Sense) Is(k, asc, ascq byte) bool { return s.Key == k && s.ASC == asc && s.ASCQ == ascq }

// BecomingReady is NOT READY, "logical unit is in process of becoming
// ready" (2/04/01): retry after a pause.
func (s Sense) BecomingReady() bool { return s.Is(KeyNotReady, 0x04, 0x01) }

// Residue returns, for a variable-block READ that ended with ILI, how many
// bytes of the buffer were not filled (negative: the block was larger than
// the buffer and the rest is lost). ok is false if the sense carries no
// valid INFORMATION. tgt reports the residue only here, with resid 0 on the
// SG_IO header and even when SILI was set.
func (s Sense) Residue() (int64, bool) {
	if !s.ILI || !s.InfoValid {
		return 0, false
	}
	return s.Information, true
}

// String renders the sense for an operator: key, condition, the stream
// bits, and what to do next where there is a known answer.
func (s Sense) String() string {
	var b strings.Builder
	b.WriteString(s.KeyName())
	if d, ok := ascText(s.ASC, s.ASCQ); ok {
		b.WriteString(": ")
		b.WriteString(d.text)
		if d.todo != "" {
			b.WriteString(" (")
			b.WriteString(d.todo)
			b.WriteString(")")
		}
	}
	fmt.Fprintf(&b, " [sense %X/%02X/%02X", s.Key, s.ASC, s.ASCQ)
	if s.Filemark {
		b.WriteString(", filemark")
	}
	if s.EOM {
		b.WriteString(", end of medium")
	}
	if s.ILI {
		b.WriteString(", incorrect length")
	}
	if s.InfoValid {
		fmt.Fprintf(&b, ", information %d", s.Information)
	}
	if s.Deferred {
		b.WriteString(", deferred error of an earlier command")
	}
	b.WriteString("]")
	return b.String()
}

type ascDesc struct{ text, todo string }

func ascText(asc, ascq byte) (ascDesc, bool) {
	d, ok := ascTable[uint16(asc)<<8|uint16(ascq)]
	if !ok && asc == 0x40 {
		return ascDesc{text: fmt.Sprintf("diagnostic failure on component 0x%02x", ascq), todo: "call the library's service"}, true
	}
	return d, ok
}

// ascTable holds the additional sense codes a tape drive or medium
// changer reports in practice (SPC-4 annex D), with what to do next.
var ascTable = map[uint16]ascDesc{
	0x0000: {"no additional sense information", ""},
	0x0001: {"filemark detected", ""},
	0x0002: {"end of partition/medium detected", "the cartridge is full: continue on the next one"},
	0x0004: {"beginning of partition/medium detected", ""},
	0x0005: {"end of data detected", ""},
	0x0016: {"operation in progress", ""},
	0x0017: {"cleaning requested", "load a cleaning cartridge"},
	0x0400: {"logical unit not ready, cause not reportable", "check that a cartridge is loaded"},
	0x0401: {"logical unit is becoming ready", "wait; vaultnode retries on its own"},
	0x0402: {"logical unit not ready, initializing command required", "load the cartridge"},
	0x0403: {"logical unit not ready, manual intervention required", "check the library's front panel and door"},
	0x0407: {"logical unit not ready, operation in progress", "wait for the running operation"},
	0x0412: {"logical unit not ready, offline", "bring the device online on the library's panel"},
	0x0B01: {"warning: specified temperature exceeded", "check the library's cooling"},
	0x0C00: {"write error", "retry on another cartridge; clean the drive if it repeats"},
	0x1100: {"unrecovered read error", "clean the drive and retry; the cartridge may be damaged"},
	0x1101: {"read retries exhausted", "clean the drive and retry; the cartridge may be damaged"},
	0x1400: {"recorded entity not found", ""},
	0x1401: {"record not found", ""},
	0x1403: {"end of data not found", "the cartridge's end of data is damaged"},
	0x1501: {"mechanical positioning error", "check the library's mechanics"},
	0x1A00: {"parameter list length error", ""},
	0x2000: {"invalid command operation code", "the device does not support this command"},
	0x2101: {"invalid element address", "re-read the inventory: the address does not exist"},
	0x2400: {"invalid field in CDB", ""},
	0x2500: {"logical unit not supported", ""},
	0x2600: {"invalid field in parameter list", ""},
	0x2700: {"write protected", "slide the cartridge's write-protect tab or use another cartridge"},
	0x2800: {"not ready to ready change, medium may have changed", "re-read the inventory"},
	0x2801: {"import or export element accessed", "a cartridge was inserted or removed: re-read the inventory"},
	0x2900: {"power on, reset, or bus device reset occurred", "re-read the inventory"},
	0x2A01: {"mode parameters changed", ""},
	0x3000: {"incompatible medium installed", "use a cartridge generation the drive can write"},
	0x3001: {"cannot read medium, unknown format", ""},
	0x3002: {"cannot read medium, incompatible format", "use a cartridge generation the drive can read"},
	0x3003: {"cleaning cartridge installed", "unload the cleaning cartridge"},
	0x3007: {"cleaning failure", "replace the cleaning cartridge"},
	0x3100: {"medium format corrupted", "the cartridge is damaged: mark it so"},
	0x3300: {"tape length error", ""},
	0x3A00: {"medium not present", "load a cartridge"},
	0x3A02: {"medium not present, tray open", "close the library's door"},
	0x3B00: {"sequential positioning error", "rewind and retry"},
	0x3B01: {"tape position error at beginning of medium", ""},
	0x3B02: {"tape position error at end of medium", ""},
	0x3B08: {"reposition error", ""},
	0x3B0D: {"medium destination element full", "re-read the inventory: the library holds a cartridge where none was expected"},
	0x3B0E: {"medium source element empty", "re-read the inventory: the cartridge is not where it was expected"},
	0x3B11: {"medium magazine not accessible", "insert the magazine"},
	0x3B12: {"medium magazine removed", "re-read the inventory"},
	0x3B13: {"medium magazine inserted", "re-read the inventory"},
	0x3B14: {"medium magazine locked", ""},
	0x3B15: {"medium magazine unlocked", ""},
	0x3F01: {"microcode has been changed", ""},
	0x4400: {"internal target failure", "power-cycle the device; call its service if it repeats"},
	0x5000: {"write append error", ""},
	0x5001: {"write append position error", ""},
	0x5100: {"erase failure", ""},
	0x5300: {"media load or eject failed", "check the drive and the cartridge"},
	0x5301: {"unload tape failure", "check the drive; the cartridge may be stuck"},
	0x5302: {"medium removal prevented", "allow medium removal first"},
	0x5D00: {"failure prediction threshold exceeded", "replace the device or cartridge soon"},
}
