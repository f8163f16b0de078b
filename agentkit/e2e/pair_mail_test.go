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
	until(t, "a leader", func() bool { return p.leader() != nil })
	setMail(t, p.leader(), sink.addr)
	p.leaderCtl("contact", p.comp, "it@acme.example")
	g := newGen(t, p.src, 19)
	g.makeTree(20, 1<<20)
	p.env.a.backup("home")
	sink.await(func(m string) bool { return strings.Contains(m, "Subject: pc1 is now protected (home)") }, "the protected mail")
	// A sync point: the test message goes after the notifier's pass.
	_, lead := p.leaderCtl("mail", "test", "admin@provider.example")
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
	until(t, "both members' queues to say what the sink holds was sent", func() bool {
		n := len(sink.messages())
		return n >= 2 && sent(p.a) == n && sent(p.b) == n
	})

	// Failover: the other member leads; the next event is its to tell,
	// once.
	lead.kill()
	fol := p.other(lead)
	until(t, fol.dir+" to lead", func() bool { st, ok := fol.pairStatus(); return ok && st.State == "Leader" })
	docs := filepath.Join(p.root, "docs")
	if err := os.MkdirAll(docs, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(docs, "letter.txt"), []byte("dear sir"), 0o644)
	p.env.a.must("config", "set", "docs", "-path", docs)
	p.env.a.backup("docs")
	sink.await(func(m string) bool { return strings.Contains(m, "Subject: pc1 is now protected (docs)") }, "the new leader's mail")
	p.leaderCtl("mail", "test", "admin@provider.example")
	lead.start()
	until(t, "the pair whole again", func() bool { l := p.leader(); return l != nil && l.whole(3) })
	p.leaderCtl("mail", "test", "admin@provider.example") // after the restart: the old leader sends nothing
	if n := count("pc1 is now protected (docs)"); n != 1 {
		t.Fatalf("%d messages for the event after the failover, want 1", n)
	}
	if n := count("pc1 is now protected (home)"); n != 1 {
		t.Fatalf("the old event was told again after the failover: %d messages", n)
	}
	if n := count("vaultnode test message"); n != 3 {
		t.Fatalf("%d test messages arrived, want 3", n)
	}
	until(t, "both queues to hold what was sent", func() bool {
		n := len(sink.messages())
		return sent(p.a) == n && sent(p.b) == n
	})
}
