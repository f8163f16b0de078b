//go:build linux

package scsi

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestSgIoHdrLayout(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("layout checked for 64-bit only")
	}
	var h sgIoHdr
	// Offsets from include/scsi/sg.h on x86_64/arm64.
	for name, got := range map[string]uintptr{
		"size": unsafe.Sizeof(h), "dxfer_len": unsafe.Offsetof(h.DxferLen), "dxferp": unsafe.Offsetof(h.Dxferp),
		"cmdp": unsafe.Offsetof(h.Cmdp), "sbp": unsafe.Offsetof(h.Sbp), "timeout": unsafe.Offsetof(h.Timeout),
		"usr_ptr": unsafe.Offsetof(h.UsrPtr), "status": unsafe.Offsetof(h.Status), "resid": unsafe.Offsetof(h.Resid),
		"info": unsafe.Offsetof(h.Info),
	} {
		want := map[string]uintptr{"size": 88, "dxfer_len": 12, "dxferp": 16, "cmdp": 24, "sbp": 32, "timeout": 40,
			"usr_ptr": 56, "status": 64, "resid": 72, "info": 80}[name]
		if got != want {
			t.Errorf("%s at %d, want %d", name, got, want)
		}
	}
}

func TestBuildHdr(t *testing.T) {
	c, _ := Read6(make([]byte, 4096), true)
	h, sense, err := buildHdr(c)
	if err != nil {
		t.Fatal(err)
	}
	if h.InterfaceID != 'S' || h.DxferDirection != sgDxferFromDev || h.DxferLen != 4096 || h.CmdLen != 6 ||
		h.MxSbLen != MaxSense || len(sense) != MaxSense || h.Timeout != uint32(TimeoutIO.Milliseconds()) {
		t.Errorf("header %+v", h)
	}
	h.Status, h.SbLenWr, h.Resid = StatusCheckCondition, 18, 3096
	r, err := hdrResponse(c, h, sense, "x")
	if err != nil || r.Transferred != 1000 || len(r.Sense) != 18 {
		t.Errorf("response %+v, %v", r, err)
	}
	h.Resid = -5 // a hostile driver value stays inside the buffer
	if r, _ := hdrResponse(c, h, sense, "x"); r.Transferred != 4096 {
		t.Errorf("negative resid gave %d", r.Transferred)
	}
	h.HostStatus = didTimeOut
	if _, err := hdrResponse(c, h, sense, "x"); !errors.Is(err, ErrTransport) || !strings.Contains(err.Error(), "timed out after 1200000 ms") {
		t.Errorf("timeout: %v", err)
	}
	h.HostStatus = 0x07
	if _, err := hdrResponse(c, h, sense, "x"); !errors.Is(err, ErrTransport) {
		t.Errorf("host status: %v", err)
	}
	if _, _, err := buildHdr(Command{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("empty CDB: %v", err)
	}
}

// A node that is not SCSI generic is refused at Open (SG_GET_VERSION_NUM
// fails with ENOTTY) and nothing is written to it: Exec submits commands
// with write(2), which on a disk or a file would write the header as data.
func TestOpenNotSG(t *testing.T) {
	file := filepath.Join(t.TempDir(), "not-sg")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/dev/null", file} {
		d, err := Open(path)
		if err == nil {
			d.Close()
			t.Fatalf("%s opened as a SCSI generic node", path)
		}
		if !errors.Is(err, ErrTransport) || !errors.Is(err, unix.ENOTTY) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: err = %v", path, err)
		}
	}
	if st, err := os.Stat(file); err != nil || st.Size() != 0 {
		t.Errorf("the file was written to: %v, %v", st, err)
	}
}
