package hwtest

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestVolatileDisk drives the NBD server with QEMU's own block layer
// (qemu-io, the NBD client QEMU uses for the appliance's data disk): a
// flushed write survives a power cut, an unflushed one is lost, reads see
// unflushed writes, and QEMU's flush really arrives as NBD_CMD_FLUSH.
func TestVolatileDisk(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("qemu-io is missing in CI: .ci/run must install qemu-utils")
		}
		t.Skip("SKIPPING: qemu-io is not installed (apt-get install qemu-utils)")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	d, err := openVolatileDisk(img, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	sock := filepath.Join(dir, "nbd.sock")
	srv, err := serveNBD(sock, d, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.stop()
	uri := "nbd+unix:///" + nbdExportName + "?socket=" + sock
	qio := func(cmds ...string) string {
		t.Helper()
		args := []string{"-f", "raw", "--cache", "writeback"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		out, err := exec.Command("qemu-io", append(args, uri)...).CombinedOutput()
		if err != nil || bytes.Contains(out, []byte("fail")) || bytes.Contains(out, []byte("Pattern verification failed")) {
			t.Fatalf("qemu-io %v: %v\n%s", cmds, err, out)
		}
		return string(out)
	}
	qio("write -P 0xab 0 64k", "flush", "write -P 0xcd 1M 4k", "write -P 0xee 100 300",
		"read -P 0xcd 1M 4k", "read -P 0xee 100 300", "read -P 0xab 400 1024")
	writes, flushes, flushed := d.counters()
	t.Logf("qemu-io sent %d writes and %d flushes (%d bytes made durable)", writes, flushes, flushed)
	if flushes == 0 || flushed < 64<<10 {
		t.Fatalf("QEMU's flush did not reach the server as NBD_CMD_FLUSH (%d flushes, %d bytes)", flushes, flushed)
	}
	// qemu-io may flush again when it closes the image: cut with writes
	// that certainly are pending.
	must(t, d.writeAt(bytes.Repeat([]byte{0x11}, 4096), 2<<20))
	lost, kept, err := d.powerCut(rand.New(rand.NewPCG(1, 2)), 0)
	must(t, err)
	if lost != 1 || kept != 0 {
		t.Fatalf("power cut: %d writes lost, %d kept; want 1 and 0", lost, kept)
	}
	b, err := os.ReadFile(img)
	must(t, err)
	if !bytes.Equal(b[:100], bytes.Repeat([]byte{0xab}, 100)) || !bytes.Equal(b[400:64<<10], bytes.Repeat([]byte{0xab}, 64<<10-400)) {
		t.Error("a flushed write did not survive the power cut")
	}
	if !bytes.Equal(b[2<<20:2<<20+4096], make([]byte, 4096)) {
		t.Error("an unflushed write survived the power cut")
	}
	qio("read -P 0 2M 4k")

	// With keep, each pending write survives whole or not at all.
	for i := 0; i < 40; i++ {
		must(t, d.writeAt(bytes.Repeat([]byte{byte(i + 1)}, 4096), int64(3<<20+i*4096)))
	}
	lost, kept, err = d.powerCut(rand.New(rand.NewPCG(3, 4)), 0.5)
	must(t, err)
	b, err = os.ReadFile(img)
	must(t, err)
	n := 0
	for i := 0; i < 40; i++ {
		blk := b[3<<20+i*4096 : 3<<20+(i+1)*4096]
		switch {
		case bytes.Equal(blk, bytes.Repeat([]byte{byte(i + 1)}, 4096)):
			n++
		case !bytes.Equal(blk, make([]byte, 4096)):
			t.Errorf("write %d survived torn", i)
		}
	}
	if n != kept || kept == 0 || lost == 0 {
		t.Errorf("a partial power cut kept %d writes (it says %d kept, %d lost)", n, kept, lost)
	}
}
