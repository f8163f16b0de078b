package e2e

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
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

// member starts pair member id (a witness when id is "w") with its data in
// root/dir; with ns, a lives inside the namespace and the others listen
// on the namespace's root end.
func (p *pairEnv) member(ns *netns, id, dir string, extra ...string) *vaultProc {
	t := p.t
	t.Helper()
	ip, inside := "127.0.0.1", false
	if ns != nil {
		ip, inside = ns.rootIP, id == "a"
		if inside {
			ip = ns.insideIP
		}
	}
	data := filepath.Join(p.root, dir)
	logf, err := os.Create(data + "-vaultd.log")
	if err != nil {
		t.Fatal(err)
	}
	v := &vaultProc{t: t, dir: data, addr: addrOn(t, ip, inside), log: logf, portal: "off", ready: "serving agents on"}
	timing := []string{"-pair-heartbeat", "500ms", "-pair-degrade-after", "2s"}
	pa := addrOn(t, ip, inside)
	if id == "w" {
		v.args, v.ready = append([]string{"witness", "-data", data, "-pair-id", id, "-pair-listen", pa}, timing...), "vaultd: witness"
	} else {
		v.args = append([]string{"-data", data, "-listen", v.addr, "-portal", "off", "-pair-id", id, "-pair-listen", pa}, timing...)
	}
	v.args = append(v.args, extra...)
	if inside {
		v.prefix = []string{"ip", "netns", "exec", ns.name}
	}
	v.start()
	t.Cleanup(func() {
		v.kill()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			t.Logf("%s log (tail):\n%s", dir, b)
		}
	})
	return v
}

// netns puts member a in a network namespace of its own, joined to the
// test's by one veth pair: cutting the pair's root end partitions a from
// b, the witness and the agent.
type netns struct {
	name     string
	rootEnd  string // veth in the test's namespace
	rootIP   string // its address: b and the witness listen there
	insideIP string // a's address
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	var b [2]byte
	rand.Read(b[:])
	n := &netns{name: fmt.Sprintf("vnpair%x", b), rootEnd: fmt.Sprintf("vnp%xr", b),
		rootIP: fmt.Sprintf("10.213.%d.1", b[0]), insideIP: fmt.Sprintf("10.213.%d.2", b[0])}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	ip("netns", "add", n.name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	inside := fmt.Sprintf("vnp%xi", b)
	ip("link", "add", n.rootEnd, "type", "veth", "peer", "name", inside)
	ip("link", "set", inside, "netns", n.name)
	ip("addr", "add", n.rootIP+"/30", "dev", n.rootEnd)
	ip("link", "set", n.rootEnd, "up")
	ip("netns", "exec", n.name, "ip", "addr", "add", n.insideIP+"/30", "dev", inside)
	ip("netns", "exec", n.name, "ip", "link", "set", inside, "up")
	ip("netns", "exec", n.name, "ip", "link", "set", "lo", "up")
	return n
}

// cut and heal partition a and end it.
func (n *netns) cut(t *testing.T) {
	if out, err := exec.Command("ip", "link", "set", n.rootEnd, "down").CombinedOutput(); err != nil {
		t.Fatalf("cut: %v: %s", err, out)
	}
}

func (n *netns) heal(t *testing.T) {
	if out, err := exec.Command("ip", "link", "set", n.rootEnd, "up").CombinedOutput(); err != nil {
		t.Fatalf("heal: %v: %s", err, out)
	}
}

// addrOn picks a port nobody listens on at ip in the test's namespace, or
// a random high port inside the namespace (nothing else listens there).
func addrOn(t *testing.T, ip string, inside bool) string {
	if inside {
		var b [2]byte
		rand.Read(b[:])
		return fmt.Sprintf("%s:%d", ip, 20000+(int(b[0])<<8|int(b[1]))%40000)
	}
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// newPair forms a pair a+b with a witness w, all real processes on
// loopback (or a in a namespace of its own, ns), and enrols an agent
// through the leader.
func newPair(t *testing.T, ns *netns) *pairEnv {
	t.Helper()
	return newPairWith(t, ns)
}

// newPairWith is newPair with more arguments for a's vaultd (its portal).
func newPairWith(t *testing.T, ns *netns, aExtra ...string) *pairEnv {
	t.Helper()
	root := t.TempDir()
	p := &pairEnv{env: &env{t: t, root: root, src: filepath.Join(root, "src")}}
	if err := os.MkdirAll(p.src, 0o755); err != nil {
		t.Fatal(err)
	}
	p.a = p.member(ns, "a", "vault-a", append([]string{"-pair-form"}, aExtra...)...)
	until(t, "a to lead its pair of one", func() bool { return p.a.whole(1) })
	tok := strings.TrimSpace(p.a.mustCtl("pair", "create", "-ttl", "10m"))
	p.b = p.member(ns, "b", "vault-b", "-pair-join", tok)
	p.w = p.member(ns, "w", "witness", "-pair-join", strings.TrimSpace(p.a.mustCtl("pair", "create")))
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
	p := newPair(t, nil)
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
	// An upload limit makes the backup last a few seconds, so the kill
	// below lands in its middle: unlimited, on a loaded machine, the
	// backup once finished before the 100 ms polls saw 8 MiB on b.
	p.env.a.must("limit", "160Mbit/s")
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
	p.env.a.must("limit", "unlimited")
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

// restoreAll restores every version in want through the agent (from the
// pair's leader) and compares it.
func (p *pairEnv) restoreAll(from string, want map[uint64]map[string]entryState) {
	p.t.Helper()
	for v, tree := range want {
		got, r := p.restore(v)
		if r.code != 0 {
			p.t.Fatalf("restore home@%d from %s: %s", v, from, r)
		}
		compareTrees(p.t, fmt.Sprintf("home@%d restored from %s", v, from), tree, snapshot(p.t, got))
	}
}

func (v *vaultProc) companies() string {
	r := v.ctl("company", "list")
	return r.stdout
}

// TestPairPartition: the leader a, alone in a network namespace, is cut
// from b, the witness and the agent. A change asked of a cannot commit;
// b leads with the witness and takes the agent's next backup. After the
// link is back a follows b, the refused change exists nowhere, and both
// versions restore from a alone and verify clean there.
func TestPairPartition(t *testing.T) {
	ns := newNetns(t)
	p := newPair(t, ns)
	g := newGen(t, p.src, 15)
	g.makeTree(200, 4<<20)
	want := map[uint64]map[string]entryState{}
	s1 := p.env.a.backup("home")
	want[s1.Version] = snapshot(t, p.src)

	ns.cut(t)
	// a may still believe it leads for a moment: whatever it accepts now
	// cannot commit without a majority.
	if r := p.a.ctl("company", "create", "split"); r.code == 0 {
		t.Fatalf("the cut-off leader committed a change: %s", r)
	}
	until(t, "b to lead", func() bool { st, ok := p.b.pairStatus(); return ok && st.State == "Leader" })
	if st, ok := p.a.pairStatus(); ok && st.State == "Leader" {
		t.Fatalf("two leaders: a still leads while b does: %+v", st)
	}
	g.mutate(1)
	g.setTimes()
	s2 := p.env.a.backup("home")
	want[s2.Version] = snapshot(t, p.src)

	ns.heal(t)
	until(t, "the pair whole under b", func() bool { return p.b.whole(3) })
	until(t, "a to apply b's log", func() bool { return strings.Contains(p.a.companies(), "acme") && p.a.versions() >= 2 })
	for _, m := range []*vaultProc{p.a, p.b} {
		if strings.Contains(m.companies(), "split") {
			t.Fatalf("%s holds the change the cut-off leader was asked for", m.dir)
		}
	}
	p.b.kill()
	until(t, "a to lead", func() bool { st, ok := p.a.pairStatus(); return ok && st.State == "Leader" })
	if r := p.a.ctl("verify"); r.code != 0 {
		t.Fatalf("verify on a: %s", r)
	}
	p.restoreAll("a", want)
}

func (v *vaultProc) versions() int {
	r := v.ctl("versions", "pc1", "home")
	return strings.Count(r.stdout, "complete")
}

// TestPairReplace: b dies for good; a goes on alone (with the witness),
// b is removed and an empty appliance c joins in its place, catches up
// with every chunk while a serves, and holds the whole vault: a's death
// leaves c leading, verify clean and every version restoring.
func TestPairReplace(t *testing.T) {
	p := newPair(t, nil)
	g := newGen(t, p.src, 16)
	g.makeTree(200, 4<<20)
	want := map[uint64]map[string]entryState{}
	s1 := p.env.a.backup("home")
	want[s1.Version] = snapshot(t, p.src)

	p.b.kill()
	g.mutate(1)
	g.setTimes()
	s2 := p.env.a.backup("home") // degraded: b is recorded behind
	want[s2.Version] = snapshot(t, p.src)
	if st, _ := p.a.pairStatus(); len(st.Behind) != 1 || st.Behind[0].Member != "b" {
		t.Fatalf("b is not recorded behind: %+v", st)
	}
	p.a.mustCtl("pair", "remove", "b")
	c := p.member(nil, "c", "vault-c", "-pair-join", strings.TrimSpace(p.a.mustCtl("pair", "create")))
	until(t, "the pair whole with c", func() bool { return p.a.whole(3) })
	// The agent learns the new member from the leader's answers and keeps
	// it, so it finds c once a is gone.
	p.env.a.must("versions", "home")
	if id, _ := os.ReadFile(filepath.Join(p.root, "agent", "identity.json")); !strings.Contains(string(id), c.addr) {
		t.Fatalf("the agent did not keep the new member's address: %s", id)
	}
	p.a.kill()
	until(t, "c to lead", func() bool { st, ok := c.pairStatus(); return ok && st.State == "Leader" })
	if r := c.ctl("verify"); r.code != 0 {
		t.Fatalf("verify on c: %s", r)
	}
	p.restoreAll("c", want)
}

// leader is the data member that leads now (nil when none answers so).
func (p *pairEnv) leader() *vaultProc {
	for _, m := range []*vaultProc{p.a, p.b} {
		if m.cmd == nil {
			continue
		}
		if st, ok := m.pairStatus(); ok && st.State == "Leader" {
			return m
		}
	}
	return nil
}

// faultAgent is one computer of TestPairRandomFaults: its agent, its tree
// and the history of what it saw acknowledged.
type faultAgent struct {
	name string
	a    *agent
	src  string
	g    *gen
	acks []faultAck
}

type faultAck struct {
	seq  uint64
	tree map[string]entryState
}

// TestPairRandomFaults is a Jepsen-style run: while three agents back up
// at once, one random fault at a time hits the pair (kill -9 of the
// leader, of the follower or of the witness, or a partition of member a),
// then heals. The history of what each agent saw acknowledged is checked
// at the end: every acknowledged version is listed by the leader,
// each computer's sequences never go back or repeat (one history: no
// split brain), each restores identical and verify is clean.
// VAULTNODE_PAIR_FAULTS sets the number of faults (make test: 10; make
// soak: 300).
func TestPairRandomFaults(t *testing.T) {
	faults := envKills(t, "VAULTNODE_PAIR_FAULTS", 10)
	ns := newNetns(t)
	p := newPair(t, ns)
	var seed [8]byte
	if s := os.Getenv("VAULTNODE_FAULT_SEED"); s != "" {
		if b, err := hex.DecodeString(s); err != nil || len(b) != len(seed) {
			t.Fatalf("VAULTNODE_FAULT_SEED=%q: give the 16 hex digits a run logged", s)
		}
		hex.Decode(seed[:], []byte(s))
	} else {
		rand.Read(seed[:])
	}
	r := mrand.New(mrand.NewPCG(binary.LittleEndian.Uint64(seed[:]), 1))
	t.Logf("seed %x: replay the same faults with VAULTNODE_FAULT_SEED=%x go test -count=1 ./agentkit/e2e/ -run 'TestPairRandomFaults$' (the timings differ)", seed, seed)
	fas := []*faultAgent{{name: "pc1", a: p.env.a, src: p.src, g: newGen(t, p.src, 17)}}
	for i := 2; i <= 3; i++ {
		fa := &faultAgent{name: fmt.Sprintf("pc%d", i), a: &agent{t: t, state: filepath.Join(p.root, fmt.Sprintf("agent%d", i))},
			src: filepath.Join(p.root, fmt.Sprintf("src%d", i))}
		if err := os.MkdirAll(fa.src, 0o755); err != nil {
			t.Fatal(err)
		}
		fa.g = newGen(t, fa.src, uint64(17+i))
		fa.a.must("enroll", "-vault", p.a.addr, "-token", p.a.token("acme"), "-name", fa.name)
		fa.a.must("config", "set", "home", "-path", fa.src)
		fas = append(fas, fa)
	}
	for _, fa := range fas {
		fa.g.makeTree(60, 1<<20)
	}
	names := []string{"kill the leader", "kill the follower", "kill the witness", "partition a"}
	counts := make([]int, len(names))
	acked := 0
	for i := 0; i < faults; i++ {
		type run struct {
			tree map[string]entryState
			done chan result
		}
		runs := make([]run, len(fas))
		for j, fa := range fas {
			fa.g.mutate(i + 2)
			fa.g.write(fmt.Sprintf("round/%03d.bin", i), fa.g.random(256<<10+r.IntN(2<<20)), 0o644)
			fa.g.setTimes()
			runs[j] = run{tree: snapshot(t, fa.src), done: make(chan result, 1)}
			go func(a *agent, done chan result) { done <- a.run("backup", "-json", "home") }(fa.a, runs[j].done)
		}
		time.Sleep(time.Duration(r.IntN(800)) * time.Millisecond) // aim the fault within the backups
		f := r.IntN(len(names))
		counts[f]++
		var killed *vaultProc
		switch f {
		case 0, 1:
			lead := p.leader()
			if lead == nil {
				lead = p.a
			}
			killed = lead
			if f == 1 {
				if lead == p.a {
					killed = p.b
				} else {
					killed = p.a
				}
			}
			killed.kill()
		case 2:
			killed = p.w
			killed.kill()
		case 3:
			ns.cut(t)
		}
		for j, fa := range fas {
			res := <-runs[j].done
			if res.code != 0 {
				t.Logf("round %d (%s): %s's backup not acknowledged: %s", i, names[f], fa.name, strings.TrimSpace(res.stderr))
				continue
			}
			var s summary
			if err := json.Unmarshal([]byte(strings.TrimSpace(res.stdout)), &s); err != nil {
				t.Fatalf("round %d: %s's backup printed %q: %v", i, fa.name, res.stdout, err)
			}
			fa.acks = append(fa.acks, faultAck{seq: s.Version, tree: runs[j].tree})
			acked++
		}
		if killed != nil {
			killed.start()
		} else {
			ns.heal(t)
		}
		until(t, "the pair whole again", func() bool {
			for _, m := range []*vaultProc{p.a, p.b, p.w} {
				if m.exited() {
					b, _ := os.ReadFile(m.log.Name())
					if len(b) > 6000 {
						b = b[len(b)-6000:]
					}
					t.Fatalf("round %d (%s): %s's vaultd ended on its own:\n%s", i, names[f], filepath.Base(m.dir), b)
				}
			}
			l := p.leader()
			return l != nil && l.whole(3)
		})
	}
	t.Logf("faults: %v %v; %d of %d backups acknowledged", names, counts, acked, faults*len(fas))
	if acked < faults*len(fas)/2 {
		t.Fatalf("only %d of %d backups were acknowledged with one fault at a time", acked, faults*len(fas))
	}

	// The checker: one history per computer, every acknowledged version
	// present and intact.
	lead := p.leader()
	for _, fa := range fas {
		listed := map[uint64]bool{}
		for _, line := range strings.Split(lead.mustCtl("versions", fa.name, "home"), "\n")[1:] {
			if f := strings.Fields(line); len(f) > 0 { // home@SEQ ...
				var n uint64
				if _, seq, ok := strings.Cut(f[0], "@"); ok {
					fmt.Sscan(seq, &n)
				}
				listed[n] = true
			}
		}
		for i, a := range fa.acks {
			if i > 0 && a.seq <= fa.acks[i-1].seq {
				t.Fatalf("%s: acknowledged version %d after %d: two histories", fa.name, a.seq, fa.acks[i-1].seq)
			}
			if !listed[a.seq] {
				t.Fatalf("%s: acknowledged version %d is not in the pair's catalog", fa.name, a.seq)
			}
		}
	}
	if r := lead.ctl("verify"); r.code != 0 {
		t.Fatalf("verify on the leader: %s", r)
	}
	for _, fa := range fas {
		for _, a := range fa.acks {
			to := filepath.Join(p.root, fmt.Sprintf("restore-%s-%d", fa.name, a.seq))
			if r := fa.a.run("restore", fmt.Sprintf("home@%d", a.seq), "-to", to, "-setid"); r.code != 0 {
				t.Fatalf("restore %s home@%d: %s", fa.name, a.seq, r)
			}
			compareTrees(t, fmt.Sprintf("%s home@%d restored from the leader", fa.name, a.seq), a.tree, snapshot(t, filepath.Join(to, fa.src)))
			// Checked, the copy goes: make soak's 300 faults acknowledge 900
			// versions, and keeping every restored tree filled a 73 GB disk.
			if err := os.RemoveAll(to); err != nil {
				t.Fatal(err)
			}
		}
	}
}
