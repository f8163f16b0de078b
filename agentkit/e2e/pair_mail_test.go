package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPairMail: the mail of a pair goes from its leader alone, through the
// real SMTP sink. The first complete version yields one "now protected"
// message (not one per member), and the follower's copy of the queue says
// it was sent. After the leader's death the new leader tells the next
// event once and tells nothing of the old ones again; the old leader,
// back as a follower, sends nothing.
func TestPairMail(t *testing.T) {
	p := newPair(t, nil)
	sink := startSink(t, filepath.Join(p.a.dir, "tls"), "127.0.0.1:0")
	setMail(t, p.a, sink.addr)
	p.a.mustCtl("contact", p.comp, "it@acme.example")
	g := newGen(t, p.src, 19)
	g.makeTree(20, 1<<20)
	p.env.a.backup("home")
	sink.await(func(m string) bool { return strings.Contains(m, "Subject: pc1 is now protected (home)") }, "the protected mail")
	// A sync point: the test message goes after the notifier's pass.
	p.a.mustCtl("mail", "test", "admin@provider.example")
	count := func(subject string) int {
		n := 0
		for _, m := range sink.messages() {
			if strings.Contains(m, "Subject: "+subject) {
				n++
			}
		}
		return n
	}
	if n := count("pc1 is now protected (home)"); n != 1 {
		t.Fatalf("%d \"now protected\" messages for one event on a pair", n)
	}
	sent := func(v *vaultProc) int { return strings.Count(v.mustCtl("mail"), " sent ") }
	onA := sent(p.a)
	if onA < 2 || onA != len(sink.messages()) {
		t.Fatalf("a's queue says %d sent, the sink holds %d", onA, len(sink.messages()))
	}
	until(t, "the follower's queue to say the same were sent", func() bool { return sent(p.b) == onA })

	// Failover: b leads; the next event is b's to tell, once.
	p.a.kill()
	until(t, "b to lead", func() bool { st, ok := p.b.pairStatus(); return ok && st.State == "Leader" })
	docs := filepath.Join(p.root, "docs")
	if err := os.MkdirAll(docs, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(docs, "letter.txt"), []byte("dear sir"), 0o644)
	p.env.a.must("config", "set", "docs", "-path", docs)
	p.env.a.backup("docs")
	sink.await(func(m string) bool { return strings.Contains(m, "Subject: pc1 is now protected (docs)") }, "the new leader's mail")
	p.b.mustCtl("mail", "test", "admin@provider.example")
	p.a.start()
	until(t, "the pair whole under b", func() bool { return p.b.whole(3) })
	p.b.mustCtl("mail", "test", "admin@provider.example") // after a's restart: a sends nothing
	if n := count("pc1 is now protected (docs)"); n != 1 {
		t.Fatalf("%d messages for the event after the failover, want 1", n)
	}
	if n := count("pc1 is now protected (home)"); n != 1 {
		t.Fatalf("the old event was told again after the failover: %d messages", n)
	}
	if n := count("vaultnode test message"); n != 3 {
		t.Fatalf("%d test messages arrived, want 3", n)
	}
	until(t, "a's queue to hold what b sent", func() bool { return sent(p.a) == len(sink.messages()) && sent(p.b) == sent(p.a) })
}
