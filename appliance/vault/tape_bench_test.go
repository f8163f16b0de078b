package vault

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/appliance/jobs"
	"vaultnode/appliance/tape"
	"vaultnode/appliance/tape/drive"
	"vaultnode/appliance/tape/emu"
	"vaultnode/appliance/tape/format"
	"vaultnode/internal/clock"
)

// BenchmarkTapeJob is the daily tape job on the host, without QEMU: a
// backup of TAPE_JOB_BENCH_MIB MiB (default 64) in 1 MiB files (a version
// per 16 MiB), streamed
// by the job from the vault's store to an emulated drive (cartridges kept
// as image files), against the drive package alone writing as many 256
// KiB blocks to the same kind of drive (what the job could reach if
// preparing its blocks cost nothing). job-MiB/s counts the whole job
// (library sync, load, label, unload); both figures go to docs/tape.md.
//
//	go test -run '^$' -bench BenchmarkTapeJob -benchtime 3x ./appliance/vault/
func BenchmarkTapeJob(b *testing.B) {
	mib := 64
	if s := os.Getenv("TAPE_JOB_BENCH_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("TAPE_JOB_BENCH_MIB=%q: want a positive number", s)
		}
		mib = n
	}
	ctx := context.Background()
	var jobSecs, driveSecs, bytes float64
	for range b.N {
		b.StopTimer()
		lab := newTapeLab(b, 4<<30, 4<<30-64<<20, "TAPE01L5", "TAPE02L5")
		v, err := Open(Options{Dir: b.TempDir(), Listen: "127.0.0.1:0", Zone: time.UTC, Clock: clock.Real{}, Tape: lab.lib})
		if err != nil {
			b.Fatal(err)
		}
		if err := v.NewCompany("acme"); err != nil {
			b.Fatal(err)
		}
		a := newGCAgent(b, v, "acme", "pc-1")
		for left := mib; left > 0; left -= 16 { // one version per 16 MiB
			if _, err := a.backup(ctx, randomFiles(min(left, 16), 1<<20)); err != nil {
				b.Fatal(err)
			}
		}
		tapeOp(b, v, TapeRequest{Op: "pool", PoolSpec: &catalog.TapePool{Name: "bench", Allocation: catalog.AllocContinue}})
		tapeOp(b, v, TapeRequest{Op: "cover", Cover: &catalog.TapeCover{Company: "acme", Pool: "bench"}})
		b.StartTimer()
		start := time.Now()
		view := runJob(b, v, tape.KindTape)
		el := time.Since(start)
		b.StopTimer()
		if view.State != jobs.Done {
			b.Fatalf("tape job: %s %q", view.State, view.Error)
		}
		n := v.Tape.Status().Bytes
		v.Close()
		jobSecs += el.Seconds()
		bytes += float64(n)

		// The drive alone: as many blocks, one buffer, same emulated drive.
		tp := emu.NewTape("SN-BENCH", 0)
		tp.Capacity, tp.EarlyWarning = 4<<30, 4<<30-64<<20
		d := drive.New(tp, nil)
		blk := make([]byte, format.RecordSize)
		start = time.Now()
		for range n / format.RecordSize {
			if err := d.WriteBlock(ctx, blk); err != nil {
				b.Fatal(err)
			}
		}
		if err := d.WriteFilemarks(ctx, 1); err != nil {
			b.Fatal(err)
		}
		driveSecs += time.Since(start).Seconds()
	}
	b.ReportMetric(bytes/(1<<20)/jobSecs, "job-MiB/s")
	b.ReportMetric(bytes/(1<<20)/driveSecs, "drive-MiB/s")
}
