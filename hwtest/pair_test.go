package hwtest

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The pair lab: a network namespace the test makes, holding a bridge
// (pairHostIP/24) and one tap per guest. Both QEMUs run inside it with a
// tap netdev on the bridge, so the two guests reach each other, and the
// witness and the agent, real processes on this machine started with `ip
// netns exec`, reach both guests at the bridge's address. Nothing outside
// the namespace sees any of these addresses.
const (
	pairHostIP = "198.18.0.1"
	pairPrefix = "/24"
)

type pairLab struct {
	ns string
}

func newPairLab(t *testing.T, taps ...string) *pairLab {
	t.Helper()
	var b [3]byte
	rand.Read(b[:])
	l := &pairLab{ns: fmt.Sprintf("vnhw%x", b)}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	ip("netns", "add", l.ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", l.ns).Run() }) // after the QEMUs and processes (cleanups run last first)
	ip("-n", l.ns, "link", "set", "lo", "up")
	ip("-n", l.ns, "link", "add", "br0", "type", "bridge")
	ip("-n", l.ns, "addr", "add", pairHostIP+pairPrefix, "dev", "br0")
	ip("-n", l.ns, "link", "set", "br0", "up")
	for _, tap := range taps {
		ip("-n", l.ns, "tuntap", "add", tap, "mode", "tap")
		ip("-n", l.ns, "link", "set", tap, "master", "br0")
		ip("-n", l.ns, "link", "set", tap, "up")
	}
	return l
}

// exec runs a program of this machine inside the lab's namespace.
func (l *pairLab) command(ctx context.Context, bin string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.ns, bin}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// pairGuest is one appliance of the pair: a system disk and one data disk.
type pairGuest struct {
	name, ip, tap, mac string
	dir                string
	vm                 *VM
	sh                 func(cmd string) string // the support shell, once logged in
}

func (g *pairGuest) boot(ctx context.Context, t *testing.T, l *pairLab, heartbeat string) {
	t.Helper()
	g.dir = t.TempDir()
	vm, err := Boot(ctx, Options{Kernel: image.Kernel, Initramfs: image.Initramfs, Dir: g.dir,
		Disks: []Disk{{Serial: "system", Path: filepath.Join(g.dir, "system.img"), Size: 64 << 20},
			{Serial: "data1", Path: filepath.Join(g.dir, "data1.img"), Size: 256 << 20}},
		Append: "vaultnode.pairheartbeat=" + heartbeat, Memory: "512M", CPUs: 1,
		Netdev: "tap,id=n0,ifname=" + g.tap + ",script=no,downscript=no", MAC: g.mac,
		Wrap: []string{"ip", "netns", "exec", l.ns},
		Log:  func(s string) { t.Logf("%s console: %s", g.name, s) }}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	g.vm = vm
	t.Cleanup(func() {
		if !vm.Exited() {
			vm.Kill()
		}
	})
}

// answer waits for each prompt and types its answer.
func (g *pairGuest) answer(ctx context.Context, t *testing.T, steps [][2]string) {
	t.Helper()
	for _, s := range steps {
		if _, err := g.vm.Expect(ctx, s[0]); err != nil {
			t.Fatalf("%s setup dialog: %v\nconsole since the last answer:\n%s", g.name, err, g.vm.Since())
		}
		if strings.HasSuffix(s[0], ": ") {
			must(t, g.vm.Send(s[1]))
		}
	}
}

// dialogUpToPair answers the questions before the pair step, with a
// static address on the lab's bridge.
func (g *pairGuest) dialogUpToPair(ctx context.Context, t *testing.T) {
	g.answer(ctx, t, [][2]string{
		{"Hostname [vaultnode]: ", "vault-" + g.name},
		{"Network: dhcp or static [dhcp]: ", "static"},
		{"(e.g. 192.168.1.10/24): ", g.ip + pairPrefix},
		{"Gateway: ", pairHostIP},
		{"DNS servers (comma separated): ", pairHostIP},
	})
}

// dialogRest answers the questions after the pair step.
func (g *pairGuest) dialogRest(ctx context.Context, t *testing.T) {
	g.answer(ctx, t, [][2]string{
		{"Admin password (at least 8 characters): ", "test-password"},
		{"Admin password again: ", "test-password"},
		{"[UTC]: ", ""},
		{"[pool.ntp.org]: ", pairHostIP},
		{"4 or more RAID6 [vdb]: ", ""},
		{"(yes/no) [yes]: ", "yes"},
	})
}

func (g *pairGuest) waitVault(ctx context.Context, t *testing.T) {
	t.Helper()
	waitReady(ctx, t, g.vm)
	if _, err := g.vm.Expect(ctx, "*** service vaultd healthy"); err != nil {
		t.Fatalf("%s: %v\n%s", g.name, err, g.vm.Console())
	}
}

var pairTokenRE = regexp.MustCompile(`vnpair1\.[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}\.[0-9.]+:[0-9]+`)

// pairStatusJSON is what `vaultctl pair status -json` prints (the fields
// the test reads).
type pairStatusJSON struct {
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
}

func pairStatusOf(sh func(string) string) (pairStatusJSON, string) {
	out := sh("vaultctl -data /data/vault pair status -json")
	var st pairStatusJSON
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "{") && json.Unmarshal([]byte(l), &st) == nil {
			return st, out
		}
	}
	return st, out
}

func buildHost(t testing.TB, pkg, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// TestPairAppliances boots two appliance images, forms a pair through the
// first-boot setup dialog (the first appliance forms it and prints a join
// token, the second joins with it), adds a witness on this machine, backs
// up from an agent on this machine, cuts the leader's power, and shows
// that the agent's next backup is acknowledged by the other appliance and
// that both versions restore byte for byte from it.
//
// Both guests run under TCG with one vCPU and 512 MiB each; raft's
// heartbeat is 3 s (vaultnode.pairheartbeat) so that a guest slowed by the
// shared machine does not lose its leadership for nothing.
func TestPairAppliances(t *testing.T) {
	needQEMU(t)
	if !hasFile("bin/vaultd") || !hasFile("bin/vaultctl") {
		t.Fatalf("the image has no vaultd/vaultctl (left out: %v)", image.Skipped)
	}
	limit := 15 * time.Minute
	if os.Getenv("VAULTNODE_PAIR_REPLACE") != "" {
		limit = 25 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	const heartbeat = "3s"
	a := &pairGuest{name: "a", ip: "198.18.0.10", tap: "tapa", mac: "52:54:00:18:00:0a"}
	b := &pairGuest{name: "b", ip: "198.18.0.11", tap: "tapb", mac: "52:54:00:18:00:0b"}
	lab := newPairLab(t, a.tap, b.tap)
	vaultd := buildHost(t, "./appliance/cmd/vaultd", "vaultd")
	agentBin := buildHost(t, "./agentkit/cmd/vault-agent", "vault-agent")

	a.boot(ctx, t, lab, heartbeat)
	b.boot(ctx, t, lab, heartbeat)

	// A forms the pair.
	a.dialogUpToPair(ctx, t)
	a.answer(ctx, t, [][2]string{
		{"or join (a pair) [standalone]: ", "first"},
		{"reach this appliance at [" + a.ip + "]: ", ""},
		{"Member name in the pair (unique in it) [vault-a]: ", "a"},
	})
	a.dialogRest(ctx, t)
	// B gets as far as the token while A prepares its disk.
	b.dialogUpToPair(ctx, t)
	b.answer(ctx, t, [][2]string{
		{"or join (a pair) [standalone]: ", "join"},
		{"reach this appliance at [" + b.ip + "]: ", ""},
		{"Member name in the pair (unique in it) [vault-b]: ", "b"},
	})
	if _, err := b.vm.Expect(ctx, "the first appliance prints it): "); err != nil {
		t.Fatalf("%v\n%s", err, b.vm.Since())
	}
	a.waitVault(ctx, t)
	t.Logf("a serves %.0fs after the boots began", time.Since(start).Seconds())
	if _, err := a.vm.Expect(ctx, "Join token for the second appliance"); err != nil {
		t.Fatalf("a printed no join token: %v\n%s", err, a.vm.Since())
	}
	out, err := a.vm.Expect(ctx, "*** A witness")
	if err != nil {
		t.Fatalf("%v\n%s", err, a.vm.Since())
	}
	token := pairTokenRE.FindString(out)
	if token == "" || !strings.HasSuffix(token, a.ip+":7443") {
		t.Fatalf("no join token naming %s:7443 in:\n%s", a.ip, out)
	}
	must(t, b.vm.Send(token))
	if _, err := b.vm.Expect(ctx, "names the pair's leader at "+a.ip+":7443"); err != nil {
		t.Fatalf("%v\n%s", err, b.vm.Since())
	}
	b.dialogRest(ctx, t)
	b.waitVault(ctx, t)
	// The boot's verify passes on the member that does not lead.
	if i, err := b.vm.ExpectAny(ctx, "*** service vault-verify done", "*** service vault-verify exited"); err != nil || i != 0 {
		t.Fatalf("b's boot verify did not pass (%v):\n%s", err, b.vm.Console())
	}
	t.Logf("pair formed through the setup dialogs %.0fs after the boots began", time.Since(start).Seconds())

	// The witness: vaultd on this machine, joined with a token made on the
	// leader. A TCG guest on a loaded machine may lose its leadership for
	// a while: a change is asked of each member in turn until the one
	// that leads takes it.
	a.sh, b.sh = shell(ctx, t, a.vm), shell(ctx, t, b.vm)
	onLeader := func(cmd string, ok func(string) bool, members ...*pairGuest) string {
		t.Helper()
		for {
			var outs []string
			for _, g := range members {
				out := g.sh(cmd)
				if ok(out) {
					return out
				}
				outs = append(outs, g.name+": "+out)
			}
			if ctx.Err() != nil {
				t.Fatalf("no member took %q:\n%s", cmd, strings.Join(outs, "\n"))
			}
			time.Sleep(2 * time.Second)
		}
	}
	hasToken := func(out string) bool { return pairTokenRE.MatchString(out) }
	wtok := pairTokenRE.FindString(onLeader("vaultctl -data /data/vault pair create -ttl 1h", hasToken, a, b))
	wdir := t.TempDir()
	wlog, err := os.Create(filepath.Join(wdir, "witness.log"))
	must(t, err)
	witness := lab.command(ctx, vaultd, "witness", "-data", filepath.Join(wdir, "data"), "-pair-id", "w",
		"-pair-listen", pairHostIP+":7444", "-pair-join", wtok, "-pair-heartbeat", heartbeat)
	witness.Stdout, witness.Stderr = wlog, wlog
	must(t, witness.Start())
	t.Cleanup(func() {
		witness.Process.Kill()
		witness.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(wlog.Name())
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("witness log (tail):\n%s", b)
		}
	})

	// Whole: three voters, nobody behind, a leader.
	var st pairStatusJSON
	for {
		var raw string
		st, raw = pairStatusOf(a.sh)
		voters := 0
		for _, m := range st.Members {
			if m.Voter {
				voters++
			}
		}
		if st.Leader != "" && voters == 3 && len(st.Behind) == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the pair never became whole; last status on a:\n%s", raw)
		}
		time.Sleep(2 * time.Second)
	}
	t.Logf("pair whole (a, b, witness voters) %.0fs after the boots began", time.Since(start).Seconds())

	// An agent on this machine enrols through the leader and backs up.
	onLeader("vaultctl -data /data/vault company create acme", func(out string) bool {
		return strings.Contains(out, "acme") && !strings.Contains(out, "vaultctl:")
	}, a, b)
	etok := tokenRE.FindString(onLeader("vaultctl -data /data/vault token create acme", tokenRE.MatchString, a, b))
	state := filepath.Join(t.TempDir(), "agent")
	agent := func(args ...string) error {
		t.Helper()
		out, err := lab.command(ctx, agentBin, append([]string{"-state", state}, args...)...).CombinedOutput()
		t.Logf("vault-agent %s: %s", strings.Join(args, " "), strings.TrimSpace(string(out)))
		return err
	}
	src := filepath.Join(t.TempDir(), "protected")
	writeTree(t, src, 24, 48<<10)
	v1 := filepath.Join(t.TempDir(), "v1")
	if out, err := exec.Command("cp", "-a", src, v1).CombinedOutput(); err != nil {
		t.Fatalf("copy the first version: %v: %s", err, out)
	}
	if err := agent("enroll", "-vault", a.ip+":7443", "-token", etok); err != nil { // a follower sends it to the leader
		t.Fatalf("enroll: %v", err)
	}
	if err := agent("config", "set", "docs", "-path", src); err != nil {
		t.Fatalf("config set: %v", err)
	}
	if err := agent("backup", "docs"); err != nil {
		t.Fatalf("backup on the pair: %v", err)
	}

	// Cut the leader's power, change the tree, back up again: the other
	// appliance (with the witness) leads and acknowledges it.
	var dead, live *pairGuest
	for {
		st, raw := pairStatusOf(a.sh)
		if st.Leader == "a" || st.Leader == "b" {
			dead, live = a, b
			if st.Leader == "b" {
				dead, live = b, a
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no data member leads; last status on a:\n%s", raw)
		}
		time.Sleep(2 * time.Second)
	}
	dead.vm.Kill()
	t.Logf("power of the leader %s cut %.0fs after the boots began", dead.name, time.Since(start).Seconds())
	writeTree(t, filepath.Join(src, "new"), 6, 40<<10)
	must(t, os.WriteFile(filepath.Join(src, "readme.txt"), []byte("changed after the failover\n"), 0o644))
	if err := agent("backup", "docs"); err != nil {
		t.Fatalf("backup after the leader's power cut: %v", err)
	}
	t.Logf("backup acknowledged after the power cut %.0fs after the boots began", time.Since(start).Seconds())
	if st, raw := pairStatusOf(live.sh); st.Leader != live.name {
		t.Fatalf("%s does not lead after %s's power cut:\n%s", live.name, dead.name, raw)
	}
	for _, c := range []struct{ version, want string }{{"docs@1", v1}, {"docs@latest", src}} {
		dst := filepath.Join(t.TempDir(), "restored")
		if err := agent("restore", c.version, "-to", dst); err != nil {
			t.Fatalf("restore %s from %s: %v", c.version, live.name, err)
		}
		compareTrees(t, c.want, filepath.Join(dst, src))
	}
	if out := live.sh("vaultctl -data /data/vault verify"); !strings.Contains(out, " 0 problems") {
		t.Errorf("verify on %s: %s", live.name, out)
	}
	t.Logf("failover checked %.0fs after the boots began", time.Since(start).Seconds())
	if os.Getenv("VAULTNODE_PAIR_REPLACE") == "" {
		t.Log("the replacement of the dead appliance runs with VAULTNODE_PAIR_REPLACE=1 (make soak)")
		return
	}

	// Replace the dead appliance by a new one set up standalone, which
	// joins with `vaultctl pair join`; once it caught up, cut the other's
	// power: the new one (with the witness) serves every version.
	onLeader("vaultctl -data /data/vault pair remove "+dead.name, func(out string) bool { return strings.Contains(out, "removed from the pair") }, live)
	rtok := pairTokenRE.FindString(onLeader("vaultctl -data /data/vault pair create -ttl 1h", hasToken, live))
	c := &pairGuest{name: "c", ip: dead.ip, tap: dead.tap, mac: dead.mac} // the dead one's place on the network
	c.boot(ctx, t, lab, heartbeat)
	c.dialogUpToPair(ctx, t)
	c.answer(ctx, t, [][2]string{{"or join (a pair) [standalone]: ", ""}})
	c.dialogRest(ctx, t)
	c.waitVault(ctx, t)
	c.sh = shell(ctx, t, c.vm)
	if out := c.sh("vaultctl -data /data/vault pair join -id c " + rtok); !strings.Contains(out, "vaultd joins the pair led by "+live.ip+":7443 as member c at "+c.ip) {
		t.Fatalf("vaultctl pair join on c:\n%s", out)
	}
	for {
		var raw string
		st, raw = pairStatusOf(live.sh)
		voters := map[string]bool{}
		for _, m := range st.Members {
			if m.Voter {
				voters[m.ID] = true
			}
		}
		if len(voters) == 3 && voters["c"] && len(st.Behind) == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("c never caught up to a voter with nothing behind; last status on %s:\n%s", live.name, raw)
		}
		time.Sleep(2 * time.Second)
	}
	t.Logf("c joined and caught up %.0fs after the boots began", time.Since(start).Seconds())
	live.vm.Kill()
	must(t, os.WriteFile(filepath.Join(src, "readme.txt"), []byte("changed after the replacement\n"), 0o644))
	if err := agent("backup", "docs"); err != nil {
		t.Fatalf("backup after %s's power cut: %v", live.name, err)
	}
	for _, v := range []struct{ version, want string }{{"docs@1", v1}, {"docs@latest", src}} {
		dst := filepath.Join(t.TempDir(), "restored")
		if err := agent("restore", v.version, "-to", dst); err != nil {
			t.Fatalf("restore %s from c: %v", v.version, err)
		}
		compareTrees(t, v.want, filepath.Join(dst, src))
	}
	if out := c.sh("vaultctl -data /data/vault verify"); !strings.Contains(out, " 0 problems") {
		t.Errorf("verify on c: %s", out)
	}
	t.Logf("done %.0fs after the boots began", time.Since(start).Seconds())
}
