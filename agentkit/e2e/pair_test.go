package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pairStatus is what `vaultctl pair status -json` prints (the fields the
// tests read).
type pairStatus struct {
	ID      string `json:"id"`
	State   string `json:"state"`
	Leader  string `json:"leader"`
	Members []struct {
		ID      string `json:"id"`
		Voter   bool   `json:"voter"`
		Witness bool   `json:"witness"`
	} `json:"members"`
	Behind []struct {
		Member string `json:"member"`
	} `json:"behind"`
	StoreBytes int64 `json:"store_bytes"` // committed bytes of the member's packs
}

func (v *vaultProc) pairStatus() (pairStatus, bool) {
	var st pairStatus
	r := v.ctl("pair", "status", "-json")
	if r.code != 0 {
		return st, false
	}
	return st, json.Unmarshal([]byte(r.stdout), &st) == nil
}

// until polls cond every 100 ms for at most a minute (a bound, not a
// timing assertion: the load of the machine decides how long it takes).
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited a minute for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// whole reports whether v leads a pair of want voters with no member behind.
func (v *vaultProc) whole(want int) bool {
	st, ok := v.pairStatus()
	if !ok || st.State != "Leader" || len(st.Behind) > 0 {
		return false
	}
	n := 0
	for _, m := range st.Members {
		if m.Voter {
			n++
		}
	}
	return n == want
}

type pairEnv struct {
	*env
	a, b *vaultProc
	w    *vaultProc
}

// newPair forms a pair a+b with a witness w, all real processes on
// loopback, and enrols an agent through the leader.
func newPair(t *testing.T) *pairEnv {
	t.Helper()
	root := t.TempDir()
	p := &pairEnv{env: &env{t: t, root: root, src: filepath.Join(root, "src")}}
	if err := os.MkdirAll(p.src, 0o755); err != nil {
		t.Fatal(err)
	}
	timing := []string{"-pair-heartbeat", "500ms", "-pair-degrade-after", "2s"}
	member := func(id, dir string, extra ...string) *vaultProc {
		pa := freeAddr(t)
		return startVaultWith(t, filepath.Join(root, dir), "off", func(addr string) []string {
			return append(append([]string{"-data", filepath.Join(root, dir), "-listen", addr, "-portal", "off",
				"-pair-id", id, "-pair-listen", pa}, timing...), extra...)
		}, "serving agents on")
	}
	p.a = member("a", "vault-a", "-pair-form")
	until(t, "a to lead its pair of one", func() bool { return p.a.whole(1) })
	tok := strings.TrimSpace(p.a.mustCtl("pair", "create", "-ttl", "10m"))
	p.b = member("b", "vault-b", "-pair-join", tok)
	wtok := strings.TrimSpace(p.a.mustCtl("pair", "create"))
	wa := freeAddr(t)
	p.w = startVaultWith(t, filepath.Join(root, "witness"), "off", func(string) []string {
		return append([]string{"witness", "-data", filepath.Join(root, "witness"), "-pair-id", "w", "-pair-listen", wa,
			"-pair-join", wtok}, timing...)
	}, "vaultd: witness")
	until(t, "a pair of three voters, nobody behind", func() bool { return p.a.whole(3) })
	if r := p.a.ctl("pair", "create"); r.code != 0 {
		t.Fatalf("pair create on the leader: %s", r)
	}
	if r := p.b.ctl("pair", "create"); r.code == 0 || !strings.Contains(r.stderr, "leader is a at") {
		t.Fatalf("pair create on the follower: %s", r)
	}

	p.v = p.a
	p.v.mustCtl("company", "create", "acme")
	p.env.a = &agent{t: t, state: filepath.Join(root, "agent")}
	out := p.env.a.must("enroll", "-vault", p.a.addr, "-token", p.a.token("acme"), "-name", "pc1")
	if f := strings.Fields(out); len(f) < 3 || f[0] != "enrolled" {
		t.Fatalf("enroll printed %q", out)
	} else {
		p.comp = f[2]
	}
	id, err := os.ReadFile(filepath.Join(root, "agent", "identity.json"))
	if err != nil || !strings.Contains(string(id), p.a.addr+","+p.b.addr) {
		t.Fatalf("the agent's identity does not hold both addresses of the pair: %s %v", id, err)
	}
	p.env.a.must("config", "set", "home", "-path", p.src)
	return p
}

// TestPairFailover: kill -9 the leader in the middle of a backup: the
// agent finishes against the other member (elected with the witness's
// vote) in a new session; the dead member restarts, catches up from the
// log and the packs; every committed version restores identical from
// both members and verify is clean on both.
func TestPairFailover(t *testing.T) {
	p := newPair(t)
	g := newGen(t, p.src, 14)
	g.makeTree(300, 8<<20)
	s1 := p.env.a.backup("home")
	want := map[uint64]map[string]entryState{s1.Version: snapshot(t, p.src)}

	g.mutate(1)
	g.write("big/second.bin", g.random(48<<20), 0o644) // the backup that the kill interrupts
	g.setTimes()
	want[s1.Version+1] = snapshot(t, p.src)
	stored := func() int64 { st, _ := p.b.pairStatus(); return st.StoreBytes }
	base := stored()
	done := make(chan result, 1)
	go func() { done <- p.env.a.run("backup", "-json", "home") }()
	// Killed once b committed 8 MiB of the backup's copies: uploads
	// the pair acknowledged (or was about to).
	until(t, "the backup's chunks to be committed on b", func() bool { return stored() > base+8<<20 })
	p.a.kill()
	onB := stored() - base
	r := <-done
	if r.code != 0 {
		t.Fatalf("the backup did not finish against the new leader: %s", r)
	}
	var s2 summary
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &s2); err != nil || s2.Version != s1.Version+1 {
		t.Fatalf("backup after the failover: %q %v", r.stdout, err)
	}
	t.Logf("at the kill b held %d bytes of the backup; the new session sent %d bytes", onB, s2.BytesSent)
	// The synchronization's new data is about 53 MB (48 MiB of random
	// bytes and the mutations): what b held at the kill must not be sent
	// again (framing and the interrupted request's share aside).
	if s2.BytesSent+onB > 60<<20 {
		t.Errorf("the new session sent %d bytes while b already held %d: what the pair acknowledged was sent again", s2.BytesSent, onB)
	}
	if st, _ := p.b.pairStatus(); st.State != "Leader" {
		t.Fatalf("b does not lead after a's death: %+v", st)
	}

	// a comes back: a follower now, it catches up with the log and the
	// chunks stored without it.
	p.a.start()
	until(t, "b to lead a whole pair again", func() bool { return p.b.whole(3) })
	for _, m := range []*vaultProc{p.b, p.a} {
		// m leads: the other member is stopped (its data stays); verify
		// and restore every version from m alone.
		other := p.a
		if m == p.a {
			other = p.b
		}
		other.kill()
		until(t, m.dir+" to lead", func() bool { st, ok := m.pairStatus(); return ok && st.State == "Leader" })
		if r := m.ctl("verify"); r.code != 0 {
			t.Fatalf("verify on %s: %s", m.dir, r)
		}
		for v, tree := range want {
			got, r := p.restore(v)
			if r.code != 0 {
				t.Fatalf("restore home@%d from %s: %s", v, m.dir, r)
			}
			compareTrees(t, fmt.Sprintf("home@%d restored from %s", v, filepath.Base(m.dir)), tree, snapshot(t, got))
		}
		other.start()
		until(t, "the pair whole again", func() bool { return m.whole(3) })
	}
}
