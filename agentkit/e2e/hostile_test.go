package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"vaultnode/internal/hostile"
	"vaultnode/internal/wire"
)

// vaultRSSBound is the peak resident set docs/protocol.md ("Memory
// bounds") promises for vaultd whatever the agents send.
const vaultRSSBound = 256 << 20

// TestHostileAgents: one company's agents attack the real vaultd with
// everything the vault must survive — uploads trickling a byte every 20 s,
// 24 downloads of 32 GiB never read, the memory-exhaustion commit, deeply
// nested, huge-count and long-path listings, a flood of sessions, and slow
// enrolments without a certificate — while another company's real
// vault-agent backs up. The victim's backup completes and restores
// identical, every attack is cut off or refused, and vaultd's peak RSS
// stays under its documented bound. Limits, not timing: the only clock
// here is the generous deadline a hang would hit.
func TestHostileAgents(t *testing.T) {
	e := newEnv(t) // the victim: company acme, computer pc1
	g := newGen(t, e.src, 10)
	g.makeTree(200, 48<<20)
	want := snapshot(t, e.src)

	e.v.mustCtl("company", "create", "evil")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var evil []*hostile.Agent
	for i := 0; i < 4; i++ {
		a, err := hostile.Enroll(ctx, e.v.addr, e.v.token("evil"), fmt.Sprintf("evil%d", i))
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		evil = append(evil, a)
	}

	actx, stop := context.WithCancel(ctx)
	defer stop()
	type attack struct {
		name  string
		tally hostile.Tally
		ready chan struct{}
		ended chan struct{} // closed when run returned; err is then set
		err   error
		run   func(t *hostile.Tally, ready func()) error
	}
	// The first three upload a chunk of up to 15 MiB before they get
	// going, through the company's two upload slots; they start first,
	// for the slow uploads would hold those slots 30 s at a time, and a
	// waiter that gives up after SlotWait goes to the back of the queue
	// and may wait minutes behind them. Same company, so that starving
	// itself is its own affair (companies get their share: TestSlotsFair).
	attacks := []*attack{
		{name: "stalled downloads", run: func(tl *hostile.Tally, ready func()) error {
			return evil[2].StalledDownloads(actx, 4, 24, 45*time.Second, tl, ready)
		}},
		{name: "memory-exhaustion commit", run: func(tl *hostile.Tally, ready func()) error {
			return evil[0].BigListingCommits(actx, tl, ready)
		}},
		{name: "malformed listings", run: func(tl *hostile.Tally, ready func()) error {
			return evil[1].MalformedListingCommits(actx, tl, ready)
		}},
		{name: "slow uploads", run: func(tl *hostile.Tally, ready func()) error {
			return evil[0].SlowUploads(actx, 2, 4, 20*time.Second, tl, ready)
		}},
		{name: "slow uploads (second computer)", run: func(tl *hostile.Tally, ready func()) error {
			return evil[1].SlowUploads(actx, 2, 4, 20*time.Second, tl, ready)
		}},
		{name: "session flood", run: func(tl *hostile.Tally, ready func()) error {
			return evil[3].SessionFlood(actx, 100, 4, tl, ready)
		}},
		{name: "slow enrolments", run: func(tl *hostile.Tally, ready func()) error {
			hostile.SlowEnrolls(actx, e.v.addr, 8, 10*time.Second, tl, ready)
			return nil
		}},
	}
	find := func(name string) *attack {
		for _, at := range attacks {
			if at.name == name {
				return at
			}
		}
		t.Fatalf("no attack %q", name)
		return nil
	}
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	for i, phase := range [][]*attack{attacks[:3], attacks[3:]} {
		for _, at := range phase {
			at.ready, at.ended = make(chan struct{}), make(chan struct{})
			var once sync.Once
			wg.Add(1)
			go func() { // owner: this test, which cancels actx and waits
				defer wg.Done()
				defer close(at.ended)
				at.err = at.run(&at.tally, func() { once.Do(func() { close(at.ready) }) })
				once.Do(func() { close(at.ready) }) // an attack that failed to start
			}()
		}
		startBy := time.After(2 * time.Minute) // generous: a hang, not a speed
		for _, at := range phase {
			select {
			case <-at.ready:
			case <-startBy:
				t.Fatalf("attack %q (phase %d) did not get going within 2 minutes: the vault stopped answering it (%s)", at.name, i+1, at.tally.String())
			}
		}
	}
	for _, at := range attacks {
		select {
		case <-at.ended:
			t.Fatalf("%s: ended before the victim's backup: %v (%s)", at.name, at.err, at.tally.String())
		default:
		}
	}
	t.Log("every attack is in flight; the victim backs up")

	began := time.Now()
	s := e.a.backup("home") // fails the test if it does not complete (runCmd's deadline)
	t.Logf("victim's backup under attack: version %d, %d bytes sent, %s", s.Version, s.BytesSent, time.Since(began).Round(time.Millisecond))

	// Keep the attacks on until the vault's deadlines (30 s idle) have
	// cut the slow and stalled ones at least once. The first cut comes
	// within ReadIdle (30 s) of a slot, or hold (45 s) plus WriteIdle for
	// a download; 4 minutes is a hang, not a speed, and failing then (not
	// at ctx's 10) leaves the tallies and vaultd's log to say which.
	cutOff := []string{"slow uploads", "stalled downloads", "slow enrolments"}
	cutBy := time.After(4 * time.Minute)
	tallies := func() string {
		var b strings.Builder
		for _, at := range attacks {
			fmt.Fprintf(&b, "\n\t%s: %s", at.name, at.tally.String())
		}
		return b.String()
	}
	for _, name := range cutOff {
		at := find(name)
		for at.tally.Get("cut off") == 0 {
			select {
			case <-time.After(time.Second):
			case <-at.ended:
				if at.tally.Get("cut off") == 0 {
					t.Fatalf("%s: ended without being cut off: %v; tallies:%s", name, at.err, tallies())
				}
			case <-cutBy:
				t.Fatalf("%s: not cut off within 4 minutes of the victim's backup; vaultd lets them hold on; tallies:%s", name, tallies())
			}
		}
		t.Logf("%s: cut off (%s)", name, at.tally.String())
	}
	peak, err := hostile.VmHWM(e.v.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	wg.Wait()
	for _, at := range attacks {
		t.Logf("%s: %s", at.name, at.tally.String())
		if at.err != nil {
			t.Errorf("%s: %v", at.name, at.err)
		}
	}
	for _, name := range []string{"memory-exhaustion commit", "malformed listings"} {
		at := find(name)
		if at.tally.Get(wire.CodeBadRequest)+at.tally.Get(wire.CodeTooLarge)+at.tally.Get(wire.CodeLimit) == 0 {
			t.Errorf("%s: never refused as a bad, too large or over-limit request (%s)", name, at.tally.String())
		}
	}
	if find("session flood").tally.Get("ok") == 0 {
		t.Error("session flood: no session was opened; the attack did not run")
	}
	t.Logf("vaultd peak RSS %.1f MB (bound %d MB)", float64(peak)/1e6, vaultRSSBound>>20)
	if peak > vaultRSSBound {
		t.Errorf("vaultd peaked at %d MB resident under attack, over the documented %d MB", peak>>20, vaultRSSBound>>20)
	}

	// The victim's version is whole.
	root, r := e.restore(s.Version)
	if r.code != 0 {
		t.Fatalf("restore the victim's version: %s", r)
	}
	compareTrees(t, "victim's version restored after the attack", want, snapshot(t, root))
}
