package vault

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"vaultnode/appliance/catalog"
	"vaultnode/internal/wire"
)

// BenchmarkStatus computes the status of every configuration of a catalog
// of 10,000 computers with 3 configurations and 3 versions each (issue 12's
// portal benchmark; STATUS_COMPUTERS to change), written through the
// catalog's own commands in /dev/shm when there is one.
func BenchmarkStatus(b *testing.B) {
	computers := 10000
	if s := os.Getenv("STATUS_COMPUTERS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		computers = n
	}
	dir := b.TempDir()
	if d, err := os.MkdirTemp("/dev/shm", "statusbench-"); err == nil {
		b.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	}
	v, err := Open(Options{Dir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	now := time.Now().UTC()
	const companies = 20
	for c := range companies {
		if err := v.NewCompany(fmt.Sprintf("company-%02d", c)); err != nil {
			b.Fatal(err)
		}
	}
	kinds := []string{"home", "system", "database"}
	for i := range computers {
		company := fmt.Sprintf("company-%02d", i%companies)
		id := fmt.Sprintf("pc-%016x", i)
		cp := catalog.Computer{ID: id, Company: company, Name: fmt.Sprintf("host-%05d", i), Fingerprint: fmt.Sprintf("%064x", i), Enrolled: now.Add(-72 * time.Hour)}
		if err := v.Catalog.RecordComputer(cp); err != nil {
			b.Fatal(err)
		}
		for k, kind := range kinds {
			cfg := wire.Config{Name: kind, Kind: wire.KindFiles, Paths: []string{"/" + kind}}
			if k == 1 {
				cfg.Mode, cfg.Interval = wire.ModeContinuous, "5m"
			}
			if _, err := v.Catalog.PutConfig(id, cfg, now.Add(-48*time.Hour)); err != nil {
				b.Fatal(err)
			}
			for s := uint64(1); s <= 3; s++ {
				at := now.Add(-time.Duration(3-s) * time.Hour)
				m := wire.Manifest{Magic: wire.ManifestMagic, Company: company, Computer: id, Config: kind, Seq: s,
					Started: at.Add(-time.Minute), Finished: at, Totals: wire.Totals{Files: 1000, Bytes: int64(i+1) << 20}}
				if err := v.Catalog.AddVersion(m, [32]byte{}); err != nil {
					b.Fatal(err)
				}
			}
			if err := v.Catalog.PutReport(id, wire.Report{Config: kind, State: wire.AgentIdle, Time: now}); err != nil {
				b.Fatal(err)
			}
		}
		if i%11 != 0 {
			v.Catalog.Seen(id, now)
		}
	}
	if err := v.Catalog.FlushContacts(); err != nil {
		b.Fatal(err)
	}
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	c0, n := cpu(), 0
	for b.Loop() {
		n++
		rows, err := v.Status("")
		if err != nil {
			b.Fatal(err)
		}
		if len(rows) != computers*len(kinds) {
			b.Fatalf("%d rows, want %d", len(rows), computers*len(kinds))
		}
	}
	b.ReportMetric((cpu()-c0).Seconds()/float64(n), "cpu-s/op") // less sensitive to the machine's load than ns/op
}
