package e2e

import (
	"context"
	"fmt"
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
		err   error
		run   func(t *hostile.Tally, ready func()) error
	}
	attacks := []*attack{
		{name: "slow uploads", run: func(tl *hostile.Tally, ready func()) error {
			return evil[0].SlowUploads(actx, 2, 4, 20*time.Second, tl, ready)
		}},
		{name: "slow uploads (second computer)", run: func(tl *hostile.Tally, ready func()) error {
			return evil[1].SlowUploads(actx, 2, 4, 20*time.Second, tl, ready)
		}},
		{name: "stalled downloads", run: func(tl *hostile.Tally, ready func()) error {
			return evil[2].StalledDownloads(actx, 4, 24, 45*time.Second, tl, ready)
		}},
		{name: "memory-exhaustion commit", run: func(tl *hostile.Tally, ready func()) error {
			return evil[0].BigListingCommits(actx, tl, ready)
		}},
		{name: "malformed listings", run: func(tl *hostile.Tally, ready func()) error {
			return evil[1].MalformedListingCommits(actx, tl, ready)
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
	for _, at := range attacks {
		at.ready = make(chan struct{})
		var once sync.Once
		wg.Add(1)
		go func() { // owner: this test, which cancels actx and waits
			defer wg.Done()
			at.err = at.run(&at.tally, func() { once.Do(func() { close(at.ready) }) })
			once.Do(func() { close(at.ready) }) // an attack that failed to start
		}()
	}
	defer func() { stop(); wg.Wait() }()
	startBy := time.After(2 * time.Minute) // generous: a hang, not a speed
	for _, at := range attacks {
		select {
		case <-at.ready:
		case <-startBy:
			t.Errorf("attack %q did not get going within 2 minutes: the vault stopped answering it", at.name)
		}
	}
	t.Log("every attack is in flight; the victim backs up")

	began := time.Now()
	s := e.a.backup("home") // fails the test if it does not complete (runCmd's deadline)
	t.Logf("victim's backup under attack: version %d, %d bytes sent, %s", s.Version, s.BytesSent, time.Since(began).Round(time.Millisecond))

	// Keep the attacks on until the vault's deadlines (30 s idle) have
	// cut the slow and stalled ones at least once.
	cutOff := []string{"slow uploads", "stalled downloads", "slow enrolments"}
	for _, name := range cutOff {
		at := find(name)
		for at.tally.Get("cut off") == 0 {
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
				t.Fatalf("%s: never cut off (%s); vaultd lets them hold on forever", name, at.tally.String())
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
