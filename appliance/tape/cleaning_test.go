package tape

import (
	"encoding/hex"
	"strings"
	"testing"

	"vaultnode/appliance/tape/scsi"
)

// alertPage is LOG SENSE page 2Eh as an LTO drive sends it: all 64 flags,
// each a parameter of code, control byte, length 1 and the flag's value.
func alertPage(set ...int) []byte {
	b := []byte{0x2e, 0x00, 0x01, 0x40}
	for i := 1; i <= 64; i++ {
		v := byte(0)
		for _, s := range set {
			if s == i {
				v = 1
			}
		}
		b = append(b, 0x00, byte(i), 0x03, 0x01, v)
	}
	return b
}

// The flags that ask for a cleaning (20 clean now, 21 clean periodic) and
// those that condemn the cleaning cartridge (22 expired, 23 invalid),
// decoded from whole pages.
func TestCleaningFlags(t *testing.T) {
	for _, c := range []struct {
		set          []int
		clean, worn  bool
		firstMessage string
	}{
		{nil, false, false, ""},
		{[]int{20}, true, false, "TapeAlert 20 (critical): clean now"},
		{[]int{21}, true, false, "TapeAlert 21 (warning): clean periodic"},
		{[]int{3, 22}, false, true, "TapeAlert 3 (warning): hard error"},
		{[]int{20, 23}, true, true, "TapeAlert 20 (critical): clean now"},
		{[]int{11}, false, false, "TapeAlert 11 (information): cleaning media"},
	} {
		page := alertPage(c.set...)
		if len(page) != 4+64*5 {
			t.Fatalf("page of %d bytes", len(page))
		}
		flags, err := scsi.ParseTapeAlert(page)
		if err != nil {
			t.Fatalf("%v: %v (%s)", c.set, err, hex.EncodeToString(page))
		}
		if needsCleaning(flags) != c.clean || hasFlag(flags, AlertExpiredCleaning, AlertInvalidCleaning) != c.worn {
			t.Errorf("flags %v: cleaning %v, worn cleaning cartridge %v; want %v, %v", c.set, needsCleaning(flags),
				hasFlag(flags, AlertExpiredCleaning, AlertInvalidCleaning), c.clean, c.worn)
		}
		if len(flags) != len(c.set) || (len(flags) > 0 && !strings.EqualFold(flags[0].String(), c.firstMessage)) {
			t.Errorf("flags %v decoded as %v", c.set, flags)
		}
	}
}
