package pair

import (
	"crypto/rand"
	"syscall"
	"testing"
	"time"

	"vaultnode/appliance/pki"
	"vaultnode/appliance/store"
	"vaultnode/internal/pack"
)

// BenchmarkStreamedCopy: 64 MiB of 1 MiB entries stored on the leader in
// commits of 16 (given to the appender, as an upload does), each streamed to the other member as it is written (an
// upload's path). Both members run in this process: cpu-s/MiB is the CPU
// both spend per MiB (the store's own writes included), the figure the
// pair's throughput follows on a machine whose cores are busy.
func BenchmarkStreamedCopy(b *testing.B) {
	ca, err := pki.LoadOrCreate(b.TempDir(), testStart)
	if err != nil {
		b.Fatal(err)
	}
	aead := pack.NewSealer([32]byte{7})
	const mib = 64
	var es []store.Entry
	payload := make([]byte, 1<<20)
	for range mib {
		rand.Read(payload)
		h := pack.EntryHeader{Kind: pack.KindData, PlainLen: uint32(len(payload))}
		rand.Read(h.ID[:])
		es = append(es, store.Entry{Header: h, Data: pack.AppendEntry(nil, aead, &h, payload)})
	}
	b.SetBytes(mib << 20)
	var cpu time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		x := startLeader(b, ca, "a")
		y := startData(b, ca, "b", b.TempDir(), "")
		join(b, x, Member{ID: "b", Raft: y.addr, Agent: "agent-b"})
		waitFor(b, "a to know b as a member", func() bool { ms, _ := Members(x.cat); return len(ms) == 2 })
		c0 := cpuTime()
		b.StartTimer()
		for j := 0; j < mib; j += 16 {
			// As an upload does: each entry given to the appender.
			app, err := x.st.Append("acme")
			if err != nil {
				b.Fatal(err)
			}
			for _, e := range es[j : j+16] {
				if err := app.AddOwned(e.Header, e.Data, func() {}); err != nil {
					b.Fatal(err)
				}
			}
			if err := app.Commit(); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		cpu += cpuTime() - c0
		if x.rep.recopied.Load() != 0 || x.rep.streamed.Load() != mib/16 {
			b.Fatalf("streamed %d, copied again %d", x.rep.streamed.Load(), x.rep.recopied.Load())
		}
		y.stop(b)
		x.stop(b)
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N*mib)*1000, "cpu-ms/MiB")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
