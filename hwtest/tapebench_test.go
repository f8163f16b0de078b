package hwtest

import (
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// tapeBenchMiB is the size of the backup the tape job streams:
// TAPE_BENCH_MIB, 64 by default.
func tapeBenchMiB(b *testing.B) int {
	if s := os.Getenv("TAPE_BENCH_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("TAPE_BENCH_MIB=%q: want a positive number", s)
		}
		return n
	}
	return 64
}

var (
	jobRateRE = regexp.MustCompile(`\(([0-9.]+) (MiB|KiB) at ([0-9.]+) (MiB|KiB)/s\)`)
	streamRE  = regexp.MustCompile(`data files: ([0-9.]+) (MiB|KiB) streamed at ([0-9.]+) (MiB|KiB)/s`)
	ddRE      = regexp.MustCompile(`(\d+) bytes .* copied, ([0-9.]+) s`)
	locateRE  = regexp.MustCompile(`TAPEPROBE LOCATE .*`)
	rateRE    = regexp.MustCompile(`TAPEPROBE RATE \d+ MiB in [0-9.]+ s = ([0-9.]+) MiB/s`)
)

func toMiB(v, unit string) float64 {
	f, _ := strconv.ParseFloat(v, 64)
	if unit == "KiB" {
		f /= 1024
	}
	return f
}

// BenchmarkTapeStream (make bench; BENCH_NO_TAPE=1 skips it) boots the
// appliance with tgt's library once and measures, in the same run and on
// the same virtual drive:
//   - the daily tape job's streaming rate for TAPE_BENCH_MIB MiB of backup
//     against GNU dd writing the same bytes (the job's data file read back
//     from its cartridge) to a blank cartridge in that drive; target: the
//     job at least 90 % of dd's rate;
//   - reaching and reading one tape file in the middle of a full cartridge
//     (REWIND + SPACE over filemarks: tgt has no LOCATE) against reading
//     the cartridge from its start up to that file.
func BenchmarkTapeStream(b *testing.B) {
	needQEMU(b)
	mib := tapeBenchMiB(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	size := mib*2 + 64
	cfg := LibraryConfig{Drives: []string{"VNDRV0A", "VNDRV0B"}, Slots: 8, IE: 1, Cartridges: []Cartridge{
		{Barcode: "TAPE01L5", SizeMB: size}, {Barcode: "TAPE02L5", SizeMB: size},
		{Barcode: "DDREF1L5", SizeMB: size}, {Barcode: "PROBE1L5", SizeMB: size}, {Barcode: "FULL01L5", SizeMB: 96}}}
	// TAPE_BENCH_CPUPROFILE=FILE: the CPU profile of vaultd's tape job in
	// the guest (VAULTNODE_JOB_CPUPROFILE, which the kernel hands to the
	// firmware's environment and the firmware to vaultd), fetched into FILE.
	hostProf := os.Getenv("TAPE_BENCH_CPUPROFILE")
	var appendArgs []string
	if hostProf != "" {
		appendArgs = append(appendArgs, "VAULTNODE_JOB_CPUPROFILE=/tmp/vaultd-job")
	}
	l := startTapeLab(ctx, b, cfg, appendArgs...)
	if _, err := l.vm.Expect(ctx, "*** service vaultd healthy"); err != nil {
		b.Fatalf("%v\n%s", err, l.vm.Console())
	}
	fail := func(format string, args ...any) { b.Helper(); b.Fatalf(format, args...) }
	ag, _, src := l.enroll(ctx, fail)
	writeRandom(b, rand.New(rand.NewPCG(3, 4)), src, "bench", mib, 1<<20)
	l.backup(ctx, ag)
	for _, c := range []string{"tape pool bench", "tape enable acme bench"} {
		l.vaultctl(c)
	}
	out := l.vaultctl("tape run")
	sm := tapeRunRE.FindStringSubmatch(out)
	if sm == nil {
		b.Fatalf("tape run: %s", out)
	}
	status := l.vaultctl("tape status")
	rm := jobRateRE.FindStringSubmatch(status)
	if rm == nil {
		b.Fatalf("no rate in tape status:\n%s", status)
	}
	jobMiB, jobRate := toMiB(rm[1], rm[2]), toMiB(rm[3], rm[4])
	sr := streamRE.FindStringSubmatch(status)
	if sr == nil {
		b.Fatalf("no streaming rate in tape status:\n%s", status)
	}
	streamMiB, streamRate := toMiB(sr[1], sr[2]), toMiB(sr[3], sr[4])
	written := strings.Split(strings.TrimSpace(sm[3]), ", ")
	if hostProf != "" {
		fetchGuestFile(b, l, "/tmp/vaultd-job.tape", hostProf)
	}
	// Each data file's bytes, preparation (listing, catalog, first
	// chunks: before its first block) and streaming time, from vaultd's log.
	for _, ln := range strings.Split(l.sh("logs 300"), "\n") {
		if strings.Contains(ln, "tape file written") {
			fmt.Fprintln(os.Stderr, "tape: vaultd:", strings.TrimSpace(ln))
		}
	}

	// The same bytes with dd: the job's data file, read back from its
	// cartridge into the guest's memory, then written to a blank cartridge
	// in the same drive (element 1, the first free one the job took).
	drives := drivesOf(l.probe(false, "scan"))
	nst := drives["1"].nst
	l.vaultctl("tape load " + written[0] + " 1")
	l.sh("mt -f " + nst + " setblk 0")
	l.sh("mt -f " + nst + " asf 1")
	l.sh("dd if=" + nst + " of=/tmp/jobfile bs=256k")
	l.vaultctl("tape unload 1")
	l.vaultctl("tape load DDREF1L5 1")
	l.sh("mt -f " + nst + " setblk 0")
	l.sh("mt -f " + nst + " rewind")
	ddOut := l.sh("dd if=/tmp/jobfile of=" + nst + " bs=256k")
	l.vaultctl("tape unload 1")
	dm := ddRE.FindStringSubmatch(ddOut)
	if dm == nil {
		b.Fatalf("dd: %s", ddOut)
	}
	ddBytes, _ := strconv.ParseFloat(dm[1], 64)
	ddSecs, _ := strconv.ParseFloat(dm[2], 64)
	ddRate := ddBytes / (1 << 20) / ddSecs
	verdict := "meets"
	if streamRate < 0.9*ddRate {
		verdict = "MISSES"
	}
	// The job's streaming rate (its data files, from each one's first
	// block to its filemark) is what compares with dd; the whole job's rate
	// also counts the library sync, load, label file and unload.
	msg := fmt.Sprintf("job streamed %.1f MiB of data files at %.2f MiB/s (whole job %.1f MiB at %.2f MiB/s); dd of the job's data file (%.1f MiB) to the same drive %.2f MiB/s; streaming/dd = %.0f %% (%s the 90 %% target)",
		streamMiB, streamRate, jobMiB, jobRate, ddBytes/(1<<20), ddRate, 100*streamRate/ddRate, verdict)
	b.Logf("tape: %s", msg)
	fmt.Fprintln(os.Stderr, "tape:", msg)
	b.ReportMetric(streamRate, "stream-MiB/s")
	b.ReportMetric(jobRate, "job-MiB/s")
	b.ReportMetric(ddRate, "dd-MiB/s")

	// The drive package alone, same drive, same block size, through a
	// BlockQueue of four queued WRITEs (the job keeps one outstanding since
	// 2 December: docs/tape.md, "A block out of order"): what a drive that
	// keeps the order of queued commands could reach if preparing the
	// blocks cost nothing.
	pr := l.probe(false, "rate", "PROBE1L5", "1", strconv.Itoa(int(ddBytes)>>20))
	if m := rateRE.FindStringSubmatch(pr); m != nil {
		sg, _ := strconv.ParseFloat(m[1], 64)
		msg := fmt.Sprintf("the drive package alone (4 queued WRITE(6)s of 256 KiB, direct I/O, same drive) %.2f MiB/s = %.0f %% of dd", sg, 100*sg/ddRate)
		b.Logf("tape: %s", msg)
		fmt.Fprintln(os.Stderr, "tape:", msg)
		b.ReportMetric(sg, "sgio-MiB/s")
	}

	lo := l.probe(false, "locatebench", "FULL01L5", "2", "21", "4")
	b.Logf("tape: %s", locateRE.FindString(lo))
	fmt.Fprintln(os.Stderr, "tape:", locateRE.FindString(lo))
}

// BenchmarkTapeWritePaths (TAPE_BENCH_MIB, TAPE_BENCH_ROUNDS, default 3)
// boots the appliance with tgt's library and writes the same blocks to one
// cartridge through every write path of the drive package (one synchronous
// SG_IO WRITE at a time, with and without sg direct I/O, 2 to 8 WRITEs
// queued through the sg driver's write(2)/read(2) interface), through the
// st driver from Go, and with dd, in rounds, so that a path is chosen by
// measurement in one run.
func BenchmarkTapeWritePaths(b *testing.B) {
	needQEMU(b)
	mib := tapeBenchMiB(b)
	rounds := 3
	if s := os.Getenv("TAPE_BENCH_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cfg := LibraryConfig{Drives: []string{"VNDRV0A", "VNDRV0B"}, Slots: 8, IE: 1, Cartridges: []Cartridge{
		{Barcode: "PROBE1L5", SizeMB: mib*2 + 64}}}
	l := startTapeLab(ctx, b, cfg)
	out := l.probe(false, "modes", "PROBE1L5", "1", strconv.Itoa(mib), strconv.Itoa(rounds))
	rates := map[string][]float64{}
	var order []string
	for _, m := range regexp.MustCompile(`TAPEPROBE MODE (\S+) ([0-9.]+) MiB/s`).FindAllStringSubmatch(out, -1) {
		f, _ := strconv.ParseFloat(m[2], 64)
		if rates[m[1]] == nil {
			order = append(order, m[1])
		}
		rates[m[1]] = append(rates[m[1]], f)
	}
	for _, n := range order {
		msg := fmt.Sprintf("write path %-10s median %6.1f MiB/s of %v", n, median(rates[n]), rates[n])
		b.Log("tape: " + msg)
		fmt.Fprintln(os.Stderr, "tape:", msg)
	}
	for _, ln := range strings.Split(out, "\n") {
		if strings.Contains(ln, "NOTE") {
			fmt.Fprintln(os.Stderr, "tape:", ln)
		}
	}
}

// fetchGuestFile copies a guest file to the host through the console
// (tapeprobe b64).
func fetchGuestFile(b *testing.B, l *tapeLab, guest, host string) {
	b.Helper()
	out := l.probe(false, "b64", guest)
	_, rest, ok := strings.Cut(out, "TAPEPROBE B64 BEGIN")
	enc, _, ok2 := strings.Cut(rest, "TAPEPROBE B64 END")
	if !ok || !ok2 {
		b.Fatalf("tapeprobe b64 %s: %s", guest, out)
	}
	data, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(enc), ""))
	if err != nil {
		b.Fatalf("decode %s from the console: %v", guest, err)
	}
	if err := os.WriteFile(host, data, 0o644); err != nil {
		b.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "tape: the guest's %s (%d bytes) is in %s\n", guest, len(data), host)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
