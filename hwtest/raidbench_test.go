package hwtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var progressRE = regexp.MustCompile(`vaultnode_md_sync_progress\{array="md0",action="(\w+)"\} ([0-9.e+-]+)`)

// BenchmarkRaidBackup measures an agent's backup throughput into the
// appliance in QEMU with a healthy RAID6 of four disks, then with one disk
// pulled (degraded), then while md rebuilds onto a new disk, in the same
// run and with the firmware's default md speed limits (make bench
// BENCH_RAID=1; go test -run '^$' -bench BenchmarkRaidBackup -benchtime 1x
// ./hwtest). Each backup sends new random data (no deduplication).
func BenchmarkRaidBackup(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	const size = 512 << 20
	r := newRaidRig(ctx, b, size, "")
	a, vm, ag, sh := r.a, r.vm, r.ag, r.sh
	files := 48 // MiB per backup
	if s := os.Getenv("RAID_BENCH_MIB"); s != "" {
		files, _ = strconv.Atoi(s)
	}
	backup := func(name string, n int) float64 {
		b.Helper()
		src := filepath.Join(b.TempDir(), name)
		writeTree(b, src, n, 1<<20) // n differs per backup: new random data
		if _, err := ag.run(ctx, "config", "set", name, "-path", src); err != nil {
			b.Fatalf("config set: %v", err)
		}
		start := time.Now()
		if _, err := ag.run(ctx, "backup", name); err != nil {
			r.fail(vm, "backup %s: %v", name, err)
		}
		return float64(n) / time.Since(start).Seconds()
	}
	progress := func() string {
		_, body, err := a.get(ctx, "/metrics")
		if m := progressRE.FindStringSubmatch(body); err == nil && m != nil {
			p, _ := strconv.ParseFloat(m[2], 64)
			return fmt.Sprintf("%s %.0f %%", m[1], 100*p)
		}
		return "unknown"
	}

	healthy := backup("healthy", files)

	if _, err := vm.QMPArgs(ctx, "device_del", map[string]any{"id": "disk4"}); err != nil {
		b.Fatal(err)
	}
	r.expect(vm, "*** storage degraded")
	degraded := backup("degraded", files+1)

	disk := filepath.Join(a.dir, "new.img")
	f, err := os.Create(disk)
	must(b, err)
	must(b, f.Truncate(size))
	f.Close()
	if _, err := vm.QMPArgs(ctx, "blockdev-add", map[string]any{"driver": "file", "filename": disk, "node-name": "new5"}); err != nil {
		b.Fatal(err)
	}
	if _, err := vm.QMPArgs(ctx, "device_add", map[string]any{"driver": "virtio-blk-pci", "drive": "new5", "id": "disk5", "serial": "data5"}); err != nil {
		b.Fatal(err)
	}
	r.expect(vm, "can become the missing disk's replacement")
	m := replaceRE.FindStringSubmatch(vm.Console())
	if m == nil {
		r.fail(vm, "no replacement offered")
	}
	if out := sh("vaultctl disk replace " + m[1]); !strings.Contains(out, "rebuilding") {
		r.fail(vm, "vaultctl disk replace: %s", out)
	}
	a.waitMetric(ctx, `vaultnode_md_state{array="md0",state="resyncing"} 1`)
	before := progress()
	rebuilding := backup("rebuilding", files+2)
	after := progress()

	b.Logf("raid: backup of %d MiB into RAID6 (4 × %d MiB, md speed limits at the firmware's defaults)", files, size>>20)
	b.Logf("raid: healthy    %6.2f MiB/s", healthy)
	b.Logf("raid: degraded   %6.2f MiB/s  (%+.0f %%)", degraded, (degraded/healthy-1)*100)
	b.Logf("raid: rebuilding %6.2f MiB/s  (%+.0f %%; rebuild %s at the start, %s at the end)", rebuilding, (rebuilding/healthy-1)*100, before, after)
	b.ReportMetric(healthy, "MiB/s-healthy")
	b.ReportMetric(degraded, "MiB/s-degraded")
	b.ReportMetric(rebuilding, "MiB/s-rebuilding")
	must(b, vm.Send("poweroff"))
	r.expect(vm, "VAULTNODE-HALT power off")
	must(b, vm.Wait(ctx))
}
