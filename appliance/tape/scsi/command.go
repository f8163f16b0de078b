// Package scsi is the SCSI layer of the tape library: command descriptor
// block (CDB) encoders for the SSC (tape drive) and SMC (medium changer)
// commands vaultnode uses, decoders for the data they return and for sense
// data, a retry decorator for units that are becoming ready, and the Linux
// SG_IO handle that carries commands to /dev/sg*.
//
// Every decoder is bounded: a device's answer is untrusted input and a
// malformed one yields an error wrapping ErrMalformed, never a panic.
package scsi

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Test them with errors.Is.
var (
	// ErrMalformed marks a device answer that breaks the layout of the
	// standard (lengths past the buffer, descriptors too short, ...).
	ErrMalformed = errors.New("malformed SCSI data")
	// ErrCheckCondition marks a command that ended in CHECK CONDITION;
	// the error is a *SenseError carrying the decoded sense data.
	ErrCheckCondition = errors.New("check condition")
	// ErrStatus marks a command that ended with a status other than GOOD
	// and CHECK CONDITION (BUSY, RESERVATION CONFLICT, ...).
	ErrStatus = errors.New("unexpected SCSI status")
	// ErrTransport marks a failure below SCSI (host adapter, driver).
	ErrTransport = errors.New("SCSI transport failure")
	// ErrPositionUnknown is returned by ParsePosition when the drive says
	// it does not know its logical position.
	ErrPositionUnknown = errors.New("tape position unknown")
)

// Direction of the data phase of a command.
type Direction int

const (
	DirNone       Direction = iota // no data phase
	DirToDevice                    // data goes to the device (WRITE, MODE SELECT)
	DirFromDevice                  // data comes from the device (READ, INQUIRY)
)

// SCSI status codes (SAM-5).
const (
	StatusGood                = 0x00
	StatusCheckCondition      = 0x02
	StatusConditionMet        = 0x04
	StatusBusy                = 0x08
	StatusReservationConflict = 0x18
	StatusTaskSetFull         = 0x28
)

// Timeouts per command class. Tape drives and libraries take minutes for
// things a disk does in milliseconds: a rewind of a full LTO cartridge,
// a locate to its end, or an inventory of a large library.
const (
	TimeoutShort    = 2 * time.Minute  // INQUIRY, TEST UNIT READY, MODE, LOG, REQUEST SENSE, READ POSITION
	TimeoutIO       = 20 * time.Minute // READ, WRITE, WRITE FILEMARKS
	TimeoutMove     = 20 * time.Minute // MOVE MEDIUM, LOAD/UNLOAD
	TimeoutPosition = 4 * time.Hour    // REWIND, SPACE, LOCATE (a full cartridge end to end)
	TimeoutInit     = 4 * time.Hour    // INITIALIZE ELEMENT STATUS (barcode scan of every slot)
)

// MaxSense is the sense buffer handed to the kernel (SPC allows up to 252).
const MaxSense = 252

// Command is one SCSI command: its CDB, the data buffer and direction, and
// a timeout. Data is read from (DirToDevice) or filled (DirFromDevice).
type Command struct {
	CDB     []byte
	Dir     Direction
	Data    []byte
	Timeout time.Duration
}

// Name returns the command's name for logs and errors.
func (c Command) Name() string {
	if len(c.CDB) == 0 {
		return "empty CDB"
	}
	if n, ok := opNames[c.CDB[0]]; ok {
		return n
	}
	return fmt.Sprintf("opcode 0x%02x", c.CDB[0])
}

// Relative says whether the command acts at the tape's current position:
// READ(6), WRITE(6), WRITE FILEMARKS and SPACE(6) other than to end of
// data. After a reset such a command must not simply be repeated: the
// drive may have lost its position (a power-on reset rewinds) and its
// block mode, so a repeated WRITE could overwrite the label.
func (c Command) Relative() bool {
	if len(c.CDB) == 0 {
		return false
	}
	switch c.CDB[0] {
	case opRead6, opWrite6, opWriteFilemarks:
		return true
	case opSpace6:
		return len(c.CDB) < 2 || SpaceCode(c.CDB[1]&0x0F) != SpaceEOD
	}
	return false
}

// LosesPosition says whether s, answering c, means the drive may have lost
// its position: a unit attention or "not ready" to a Relative command.
// Such a command was not executed and must not be repeated in place.
func (c Command) LosesPosition(s Sense) bool {
	return c.Relative() && (s.Key == KeyUnitAttention || s.Key == KeyNotReady)
}

// Response is what came back: the SCSI status, sense data when the status
// is CHECK CONDITION, and how many bytes of Data the device transferred.
// Some transports (QEMU's iscsi scsi-generic path) always report a residue
// of 0: variable-block reads take the length from the sense INFORMATION
// field instead (see Sense.Residue).
type Response struct {
	Status      byte
	Sense       []byte
	Transferred int
	// Direct: the data went straight between the caller's buffer and the
	// device (sg direct I/O), not through a kernel copy.
	Direct bool
}

// Err turns a non-GOOD status into an error: a *SenseError for CHECK
// CONDITION (decoded sense; undecodable sense is reported as such), an
// error wrapping ErrStatus otherwise.
func (r Response) Err(c Command) error {
	switch r.Status {
	case StatusGood, StatusConditionMet:
		return nil
	case StatusCheckCondition:
		s, err := ParseSense(r.Sense)
		if err != nil {
			return fmt.Errorf("%s: %w: %w", c.Name(), ErrCheckCondition, err)
		}
		return &SenseError{Op: c.Name(), Sense: s}
	default:
		return fmt.Errorf("%s: %w 0x%02x (%s)", c.Name(), ErrStatus, r.Status, statusName(r.Status))
	}
}

func statusName(s byte) string {
	switch s {
	case StatusBusy:
		return "busy: the device is occupied, try again later"
	case StatusReservationConflict:
		return "reservation conflict: another host has reserved the device"
	case StatusTaskSetFull:
		return "task set full"
	}
	return "unknown status"
}

// SenseError is a command that ended in CHECK CONDITION.
type SenseError struct {
	Op    string
	Sense Sense
}

func (e *SenseError) Error() string { return e.Op + ": " + e.Sense.String() }

// Is makes errors.Is(err, ErrCheckCondition) true.
func (e *SenseError) Is(target error) bool { return target == ErrCheckCondition }

// AsSense returns the sense data inside err, if err is a *SenseError.
func AsSense(err error) (Sense, bool) {
	var se *SenseError
	if errors.As(err, &se) {
		return se.Sense, true
	}
	return Sense{}, false
}

var opNames = map[byte]string{
	opTestUnitReady: "TEST UNIT READY", opRewind: "REWIND", opRequestSense: "REQUEST SENSE",
	opInitElementStatus: "INITIALIZE ELEMENT STATUS", opRead6: "READ(6)", opWrite6: "WRITE(6)",
	opWriteFilemarks: "WRITE FILEMARKS", opSpace6: "SPACE(6)", opInquiry: "INQUIRY",
	opModeSelect10: "MODE SELECT(10)", opModeSelect6: "MODE SELECT(6)", opModeSense10: "MODE SENSE(10)", opLoadUnload: "LOAD UNLOAD",
	opLocate10: "LOCATE(10)", opReadPosition: "READ POSITION", opLogSense: "LOG SENSE",
	opLocate16: "LOCATE(16)", opMoveMedium: "MOVE MEDIUM", opReadElementStatus: "READ ELEMENT STATUS",
}
