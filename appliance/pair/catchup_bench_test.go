package pair

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"vaultnode/appliance/pki"
	"vaultnode/appliance/store"
	"vaultnode/internal/pack"
)

// BenchmarkCatchUp: a member that missed 64 MiB of 1 MiB entries (and
// holds 16 MiB it had before) is brought back by CatchUp; b.SetBytes
// counts what is copied, so the rate reads against the disk's;
// cpu-ms/MiB is the CPU both members spend per MiB copied, what the rate
// follows when the cores are busy.
func BenchmarkCatchUp(b *testing.B) {
	ca, err := pki.LoadOrCreate(b.TempDir(), testStart)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	aead := pack.NewSealer([32]byte{7})
	put := func(st *store.Store, mib int) {
		payload := make([]byte, 1<<20)
		var es []store.Entry
		for i := 0; i < mib; i++ {
			rand.Read(payload)
			h := pack.EntryHeader{Kind: pack.KindData, PlainLen: uint32(len(payload))}
			rand.Read(h.ID[:])
			es = append(es, store.Entry{Header: h, Data: pack.AppendEntry(nil, aead, &h, payload)})
			if len(es) == 16 {
				if err := st.Put("acme", es); err != nil {
					b.Fatal(err)
				}
				es = es[:0]
			}
		}
	}
	const missed = 64
	b.SetBytes(missed << 20)
	var cpu time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		x := startLeader(b, ca, "a")
		y := startData(b, ca, "b", b.TempDir(), "")
		w := startMember(b, ca, "w", b.TempDir(), "", true, 0)
		join(b, x, Member{ID: "b", Raft: y.addr, Agent: "agent-b"}, Member{ID: "w", Raft: w.addr, Witness: true})
		waitFor(b, "a to know b as a member", func() bool { ms, _ := Members(x.cat); return len(ms) == 3 })
		put(x.st, 16)
		yDir, yAddr := y.dir, y.addr
		y.stop(b)
		put(x.st, missed)
		y = startData(b, ca, "b", yDir, yAddr)
		waitFor(b, "a to lead", func() bool { return x.node.IsLeader() })
		c0 := cpuTime()
		b.StartTimer()
		if err := x.rep.CatchUp(ctx, "b", nil); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		cpu += cpuTime() - c0
		y.stop(b)
		w.stop(b)
		x.stop(b)
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N*missed)*1000, "cpu-ms/MiB")
}
