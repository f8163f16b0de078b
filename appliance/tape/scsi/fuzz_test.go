package scsi

import (
	"encoding/hex"
	"strings"
	"testing"
)

func seed(f *testing.F, hexes ...string) {
	for _, h := range hexes {
		b, err := hex.DecodeString(strings.Join(strings.Fields(h), ""))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// The fuzz targets check the decoders never panic and stay within their
// input; their seed corpus runs in every `go test`.

func FuzzParseSense(f *testing.F) {
	seed(f, "f0 00 20 00 00 fc 18 0a 00 00 00 00 00 00 00 00 00 00",
		"72 00 00 00 00 00 00 10 00 0a 80 00 00 00 00 00 00 00 01 00 04 02 00 20",
		"72 00 00 00 00 00 00 ff 04 f0 00 00", "70 00 03 00 00 00 00 ff 00 00")
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSense(b)
		if err == nil {
			_ = s.String()
		}
	})
}

func FuzzParseElementStatus(f *testing.F) {
	seed(f, tgtSlots(), "0001 0001 00 00002c 01 80 0034 00 000024 0010 00 00 0000 000000 00 0000")
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseElementStatus(b)
		if err == nil && len(p.Elements)*minDescLen > len(b) {
			t.Fatalf("%d elements from %d bytes", len(p.Elements), len(b))
		}
	})
}

func FuzzParseTapeAlert(f *testing.F) {
	seed(f, "2e 00 00 14 00 03 03 01 01 00 04 03 01 00 00 14 03 01 01 00 3e 03 01 01", "2e 00 00 05 00 03 03 09 01")
	f.Fuzz(func(t *testing.T, b []byte) { _, _ = ParseTapeAlert(b) })
}

func FuzzParseSmall(f *testing.F) {
	seed(f, "00 0e 00 10 00 00 00 08 40 00 00 00 00 00 00 00", "01 80 00 0a 48 55 31 32",
		"08 80 05 02 1f 00 00 00 49 45 54 20 20 20 20 20 56 49 52 54 55 41 4c 2d 43 48 41 4e 47 45 52 20 30 30 30 31",
		"14 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00")
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseModeSense10(b)
		_, _ = ParseSerialVPD(b)
		_, _ = ParseInquiry(b)
		_, _ = ParsePosition(b)
	})
}
