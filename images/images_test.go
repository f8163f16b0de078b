package images

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"
)

func needKernel(t *testing.T) {
	t.Helper()
	if _, _, err := FindKernel(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v: .ci/run must install linux-image-amd64", err)
		}
		t.Skipf("SKIPPING THE IMAGE BUILD TEST: %v", err)
	}
	if _, err := exec.LookPath("xz"); err != nil {
		t.Fatalf("xz is needed to extract vmlinux: apt-get install xz-utils")
	}
}

// TestReproducible builds the image twice and compares the bytes, then
// checks what the initramfs holds.
func TestReproducible(t *testing.T) {
	needKernel(t)
	wd, _ := os.Getwd()
	root := filepath.Dir(wd)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var sums []string
	var last Result
	for i := 0; i < 2; i++ {
		res, err := Build(ctx, Options{Root: root, Out: t.TempDir(), Version: "repro"})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("build %d: %.1f MiB in %s, sha256 %s", i, float64(res.InitramfsSize)/(1<<20), res.Took.Round(time.Millisecond), res.InitramfsSHA256)
		sums = append(sums, res.InitramfsSHA256)
		last = res
	}
	if sums[0] != sums[1] {
		t.Fatalf("two builds differ: %s and %s", sums[0], sums[1])
	}

	f, err := os.Open(last.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(f))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]cpio.Record{}
	for _, r := range recs {
		byName[r.Name] = r
		if r.MTime != 0 || r.UID != 0 || r.GID != 0 {
			t.Errorf("%s is not reproducible: %+v", r.Name, r.Info)
		}
	}
	kdir := "lib/modules/" + last.KernelVersion
	for _, want := range []string{"init", "dev/console", "sbin/mdadm", "sbin/mke2fs", "bin/panel", "bin/ps", "bin/dmesg", "bin/ip", "lib64/ld-linux-x86-64.so.2",
		kdir + "/modules.dep", kdir + "/kernel/drivers/md/raid1.ko", kdir + "/kernel/drivers/md/raid456.ko",
		kdir + "/kernel/drivers/scsi/st.ko", kdir + "/kernel/drivers/scsi/ch.ko", kdir + "/kernel/net/sched/sch_htb.ko",
		kdir + "/kernel/fs/ext4/ext4.ko", kdir + "/kernel/drivers/virtio/virtio_pci.ko"} {
		if _, ok := byName[want]; !ok {
			t.Errorf("initramfs lacks %s", want)
		}
	}
	dep, ok := byName[kdir+"/modules.dep"]
	if !ok {
		t.Fatal("no modules.dep")
	}
	b := make([]byte, dep.FileSize)
	if _, err := dep.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if strings.HasSuffix(line, " ") {
			t.Errorf("modules.dep line with a trailing space (u-root's parser misreads it): %q", line)
		}
		for _, d := range strings.Fields(strings.SplitN(line, ":", 2)[1]) {
			if _, ok := byName[kdir+"/"+d]; !ok {
				t.Errorf("dependency %s of %q is not in the image", d, line)
			}
		}
	}
}
