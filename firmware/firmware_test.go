package firmware

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseCmdline(t *testing.T) {
	got := ParseCmdline("console=ttyS0 quiet vaultnode.testcrash=1 panic=-1\n")
	want := map[string]string{"console": "ttyS0", "quiet": "1", "vaultnode.testcrash": "1", "panic": "-1"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatal(diff)
	}
}

func event(typ, code uint16, value int32) []byte {
	b := make([]byte, 24)
	binary.LittleEndian.PutUint16(b[16:], typ)
	binary.LittleEndian.PutUint16(b[18:], code)
	binary.LittleEndian.PutUint32(b[20:], uint32(value))
	return b
}

func TestWaitPowerKey(t *testing.T) {
	tests := []struct {
		name   string
		events [][]byte
		want   error
	}{
		{"press", [][]byte{event(0, 0, 0), event(evKey, 30, 1), event(evKey, keyPower, 1)}, nil},
		{"release only", [][]byte{event(evKey, keyPower, 0)}, io.EOF},
		{"nothing", nil, io.EOF},
	}
	for _, tt := range tests {
		if got := waitPowerKey(bytes.NewReader(bytes.Join(tt.events, nil))); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestShellFields(t *testing.T) {
	for line, want := range map[string][]string{
		"vaultctl retention acme \"last 1\"\n": {"vaultctl", "retention", "acme", "last 1"},
		"  ls   /data ":                        {"ls", "/data"},
		`echo "" x`:                            {"echo", "", "x"},
		"":                                     nil,
	} {
		if got := shellFields(line); fmt.Sprint(got) != fmt.Sprint(want) || len(got) != len(want) {
			t.Errorf("shellFields(%q) = %q, want %q", line, got, want)
		}
	}
}
