package pair

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"vaultnode/appliance/pki"
	"vaultnode/internal/pack"
)

// BenchmarkCopyStream: 64 MiB of 1 MiB entries copied to a member over a
// copy stream ('C', TLS) and a raw one ('D') in the same process and
// minutes, one request of 4 commits; cpu-ms/MiB is both ends' CPU.
func BenchmarkCopyStream(b *testing.B) {
	ca, err := pki.LoadOrCreate(b.TempDir(), testStart)
	if err != nil {
		b.Fatal(err)
	}
	aead := pack.NewSealer([32]byte{7})
	const mib = 64
	var es [][]byte
	payload := make([]byte, 1<<20)
	for range mib {
		rand.Read(payload)
		h := pack.EntryHeader{Kind: pack.KindData, PlainLen: uint32(len(payload))}
		rand.Read(h.ID[:])
		es = append(es, pack.AppendEntry(nil, aead, &h, payload))
	}
	x := startLeader(b, ca, "a")
	defer x.stop(b)
	for _, raw := range []bool{false, true} {
		name := map[bool]string{false: "tls", true: "raw"}[raw]
		b.Run(name, func(b *testing.B) {
			b.SetBytes(mib << 20)
			var cpu time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				y := startData(b, ca, "b", b.TempDir(), "")
				pool := newCopyPool(x.node.cfg.TLS)
				pool.raw = raw
				c0 := cpuTime()
				b.StartTimer()
				q, err := pool.openEntries(context.Background(), "b", y.addr, "acme", 0)
				if err != nil {
					b.Fatal(err)
				}
				for j, e := range es {
					if _, err := q.add(e); err != nil {
						b.Fatal(err)
					}
					if j%16 == 15 {
						if err := q.commit(); err != nil {
							b.Fatal(err)
						}
					}
				}
				if err := q.end(); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				cpu += cpuTime() - c0
				pool.close()
				y.stop(b)
			}
			b.ReportMetric(cpu.Seconds()/float64(b.N*mib)*1000, "cpu-ms/MiB")
		})
	}
}
