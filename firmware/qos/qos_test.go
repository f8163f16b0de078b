package qos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap/zaptest"

	"vaultnode/internal/clock"
)

func TestLinkSpeed(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{"e1": "1000\n", "e2": "-1\n", "e3": "garbage", "e4": "25000"} {
		os.MkdirAll(filepath.Join(dir, "class", "net", name), 0o755)
		os.WriteFile(filepath.Join(dir, "class", "net", name, "speed"), []byte(content), 0o644)
	}
	for iface, want := range map[string]uint64{"e1": 1000 * Mbit, "e2": FallbackSpeed, "e3": FallbackSpeed, "e4": 25000 * Mbit, "missing": FallbackSpeed} {
		if got := LinkSpeed(dir, iface); got != want {
			t.Errorf("LinkSpeed(%s) = %d, want %d", iface, got, want)
		}
	}
	d := Defaults("eth0", 1000*Mbit)
	if err := d.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if d.Uploads.Rate != 400*Mbit || d.Management.Rate != 50*Mbit || d.Restores.Ceil != 1000*Mbit {
		t.Fatalf("defaults for 1 Gbit/s: %+v", d)
	}
}

func TestValidateNamesTheLimit(t *testing.T) {
	base := Defaults("eth0", 100*Mbit)
	for name, mut := range map[string]func(*Config){
		"over-guaranteed": func(c *Config) { c.Uploads.Rate = 90 * Mbit; c.Uploads.Ceil = 90 * Mbit },
		"ceil over link":  func(c *Config) { c.Restores.Ceil = 200 * Mbit },
		"rate over ceil":  func(c *Config) { c.Management.Ceil = 1 * Mbit },
		"no api port":     func(c *Config) { c.Ports.AgentAPI = 0 },
		"v6 peer":         func(c *Config) { c.Peer = netip.MustParseAddr("2001:db8::1") },
		"empty cap":       func(c *Config) { c.Caps = []Cap{{Name: "x", Ceil: Mbit}} },
		"too many caps":   func(c *Config) { c.Caps = make([]Cap, MaxCaps+1) },
		"same device":     func(c *Config) { c.IFB = c.Uplink },
	} {
		c := base
		c.Ports.Management = append([]uint16(nil), base.Ports.Management...)
		mut(&c)
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: Validate = %v, want ErrConfig", name, err)
		}
	}
}

// lab is two network namespaces joined by a veth pair: A is the appliance
// (uplink "up0", 198.18.0.1), B the rest of the world (agents 198.18.0.2 and
// .4, replication peer .3). 198.18.0.0/15 is used only inside them.
type lab struct {
	a, b   netns.NsHandle
	ha, hb *netlink.Handle
}

func newLab(t *testing.T) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	na, nb := fmt.Sprintf("qos-a-%d", os.Getpid()), fmt.Sprintf("qos-b-%d", os.Getpid())
	l := &lab{}
	l.a, err = netns.NewNamed(na)
	if err == nil {
		t.Cleanup(func() { l.a.Close(); netns.DeleteNamed(na) })
		l.b, err = netns.NewNamed(nb)
	}
	if err == nil {
		t.Cleanup(func() { l.b.Close(); netns.DeleteNamed(nb) })
	}
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("back to the test's namespace: %v", serr) // the thread stays locked and dies with the test
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("create namespaces: %v", err)
	}
	if l.ha, err = netlink.NewHandleAt(l.a); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.ha.Close)
	if l.hb, err = netlink.NewHandleAt(l.b); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.hb.Close)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "w0", PeerNamespace: netlink.NsFd(l.b)}
	if err := l.ha.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	setup := func(h *netlink.Handle, dev string, addrs ...string) {
		for _, name := range []string{"lo", dev} {
			ln, err := h.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetUp(ln); err != nil {
				t.Fatal(err)
			}
			if name == dev {
				for _, a := range addrs {
					ad, _ := netlink.ParseAddr(a)
					if err := h.AddrAdd(ln, ad); err != nil {
						t.Fatalf("add %s: %v", a, err)
					}
				}
			}
		}
	}
	setup(l.ha, "up0", "198.18.0.1/24")
	setup(l.hb, "w0", "198.18.0.2/24", "198.18.0.3/24", "198.18.0.4/24")
	return l
}

// in runs f on a thread locked into ns; the thread is never unlocked, so it
// dies with the goroutine instead of going back to the pool in ns.
func in(ns netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

func TestRatesReadBackInKernelUnits(t *testing.T) {
	l := newLab(t)
	cfg := Defaults("up0", 1000*Mbit)
	cfg.IFB = "ifbq0"
	cfg.Caps = []Cap{{Name: "acme", Sources: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/30")}, Ceil: 30 * Mbit}}
	c := New(zaptest.NewLogger(t), l.ha, clock.Real{})
	if err := c.Apply(cfg); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if err := c.Apply(cfg); err != nil { // idempotent
		t.Fatalf("apply again: %v", err)
	}
	want := map[string][2]uint64{ // handle -> rate, ceil in bits/s
		"1:1": {cfg.LinkRate, cfg.LinkRate}, "1:10": {cfg.Management.Rate, cfg.Management.Ceil},
		"1:20": {cfg.Replication.Rate, cfg.Replication.Ceil}, "1:30": {cfg.Restores.Rate, cfg.Restores.Ceil},
		"1:40": {cfg.Uploads.Rate, cfg.Uploads.Ceil}, "1:100": {3 * Mbit, 30 * Mbit},
	}
	for _, dev := range []string{"up0", "ifbq0"} {
		ln, err := l.ha.LinkByName(dev)
		if err != nil {
			t.Fatal(err)
		}
		cls, err := l.ha.ClassList(ln, 0)
		if err != nil {
			t.Fatal(err)
		}
		seen := 0
		for _, cl := range cls {
			h := cl.(*netlink.HtbClass)
			w, ok := want[fmt.Sprintf("1:%x", h.Handle&0xffff)]
			if !ok {
				continue
			}
			seen++
			// The kernel reports HTB rates in bytes per second.
			if h.Rate != w[0]/8 || h.Ceil != w[1]/8 {
				t.Errorf("%s class %x: kernel has rate %d ceil %d bytes/s, want %d %d", dev, h.Handle, h.Rate, h.Ceil, w[0]/8, w[1]/8)
			}
		}
		if wantN := len(want) - map[bool]int{true: 0, false: 1}[dev == "ifbq0"]; seen != wantN {
			t.Errorf("%s: %d of the classes found, want %d", dev, seen, wantN)
		}
	}
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if w, ok := want[s.Handle]; ok && (s.Rate != w[0] || s.Ceil != w[1]) {
			t.Errorf("status %s %s: rate %d ceil %d bits/s, want %d %d", s.Direction, s.Name, s.Rate, s.Ceil, w[0], w[1])
		}
	}
	// Removing the cap deletes its class and nothing else.
	cfg.Caps = nil
	if err := c.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	st, _ = c.Status()
	for _, s := range st {
		if s.Handle == "1:100" {
			t.Errorf("cap class still there after the cap was removed: %+v", s)
		}
	}
	if len(st) != 2*6 {
		t.Errorf("%d classes after removing the cap, want 12: %+v", len(st), st)
	}
	// Above 34 Gbit/s the bytes/s no longer fit 32 bits: TCA_HTB_RATE64.
	big := Defaults("up0", 40_000*Mbit)
	big.IFB = "ifbq0"
	if err := c.Apply(big); err != nil {
		t.Fatal(err)
	}
	st, _ = c.Status()
	for _, s := range st {
		if s.Handle == "1:1" && (s.Rate != 40_000*Mbit || s.Ceil != 40_000*Mbit) {
			t.Errorf("40 Gbit/s link read back as rate %d ceil %d bits/s", s.Rate, s.Ceil)
		}
		if s.Handle == "1:40" && s.Rate != big.Uploads.Rate {
			t.Errorf("uploads on a 40 Gbit/s link read back as %d bits/s, want %d", s.Rate, big.Uploads.Rate)
		}
	}
}

// flow is one TCP stream; rx counts the bytes its receiver read.
type flow struct {
	name string
	rx   atomic.Int64
	err  atomic.Pointer[error]
}

func (f *flow) fail(err error) { f.err.CompareAndSwap(nil, &err) }

func TestShapingUnderSaturation(t *testing.T) {
	l := newLab(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var conns []net.Conn
	var mu sync.Mutex
	keep := func(c net.Conn) { mu.Lock(); conns = append(conns, c); mu.Unlock() }
	t.Cleanup(func() {
		cancel()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	stopped := func() bool { return ctx.Err() != nil }
	buf := make([]byte, 64<<10)
	send := func(f *flow, c net.Conn) {
		defer wg.Done()
		for !stopped() {
			if _, err := c.Write(buf); err != nil {
				if !stopped() {
					f.fail(fmt.Errorf("%s: write: %w", f.name, err))
				}
				return
			}
		}
	}
	recv := func(f *flow, c net.Conn) {
		defer wg.Done()
		b := make([]byte, 64<<10)
		for {
			n, err := c.Read(b)
			f.rx.Add(int64(n))
			if err != nil {
				if !stopped() {
					f.fail(fmt.Errorf("%s: read: %w", f.name, err))
				}
				return
			}
		}
	}
	var lnAPI, lnMgmt, lnPeer net.Listener
	if err := in(l.a, func() (err error) {
		if lnAPI, err = net.Listen("tcp4", "198.18.0.1:8443"); err != nil {
			return err
		}
		lnMgmt, err = net.Listen("tcp4", "198.18.0.1:443")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := in(l.b, func() (err error) { lnPeer, err = net.Listen("tcp4", "198.18.0.3:7000"); return err }); err != nil {
		t.Fatal(err)
	}
	for _, ln := range []net.Listener{lnAPI, lnMgmt, lnPeer} {
		t.Cleanup(func() { ln.Close() })
	}
	mgmt, repl, restore := &flow{name: "management"}, &flow{name: "replication"}, &flow{name: "restore"}
	upX, upY := &flow{name: "upload from capped .2"}, &flow{name: "upload from .4"}
	flows := []*flow{mgmt, repl, restore, upX, upY}
	dial := func(ns netns.NsHandle, from, to string) net.Conn {
		var c net.Conn
		if err := in(ns, func() (err error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
			c, err = d.Dial("tcp4", to)
			return err
		}); err != nil {
			t.Fatalf("dial %s from %s: %v", to, from, err)
		}
		keep(c)
		return c
	}
	accept := func(ln net.Listener) net.Conn {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		keep(c)
		return c
	}
	// The appliance (A) sends management and restore data and replicates to
	// the peer; agents in B upload to A.
	wg.Add(10)
	c := dial(l.b, "198.18.0.2", "198.18.0.1:443")
	go recv(mgmt, c)
	go send(mgmt, accept(lnMgmt))
	c = dial(l.b, "198.18.0.2", "198.18.0.1:8443")
	go recv(restore, c)
	go send(restore, accept(lnAPI))
	c = dial(l.a, "198.18.0.1", "198.18.0.3:7000")
	go send(repl, c)
	go recv(repl, accept(lnPeer))
	c = dial(l.b, "198.18.0.2", "198.18.0.1:8443")
	go send(upX, c)
	go recv(upX, accept(lnAPI))
	c = dial(l.b, "198.18.0.4", "198.18.0.1:8443")
	go send(upY, c)
	go recv(upY, accept(lnAPI))

	capX := func(ceil uint64) []Cap {
		return []Cap{{Name: "computer-x", Sources: []netip.Prefix{netip.MustParsePrefix("198.18.0.2/32")}, Rate: ceil, Ceil: ceil}}
	}
	cfg := Config{Uplink: "up0", IFB: "ifbq0", LinkRate: 48 * Mbit,
		Management:  Class{Rate: 4 * Mbit, Ceil: 4 * Mbit},
		Replication: Class{Rate: 8 * Mbit, Ceil: 8 * Mbit},
		Restores:    Class{Rate: 12 * Mbit, Ceil: 12 * Mbit},
		Uploads:     Class{Rate: 20 * Mbit, Ceil: 20 * Mbit},
		Peer:        netip.MustParseAddr("198.18.0.3"),
		Ports:       Ports{AgentAPI: 8443, Management: []uint16{443}, Replication: 7000},
		Caps:        capX(5 * Mbit),
	}
	ctl := New(zaptest.NewLogger(t), l.ha, clock.Real{})
	if err := ctl.Apply(cfg); err != nil {
		t.Fatalf("apply: %v", err)
	}
	up0, _ := l.ha.LinkByName("up0")
	rootBytes := func() uint64 {
		qs, err := l.ha.QdiscList(up0)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			if h, ok := q.(*netlink.Htb); ok && h.Parent == netlink.HANDLE_ROOT && h.Statistics != nil && h.Statistics.Basic != nil {
				return h.Statistics.Basic.Bytes
			}
		}
		t.Fatal("no htb root on up0")
		return 0
	}

	// measure returns each class's rate from the kernel's byte counters and
	// each flow's goodput, bits/s, over a window after the queues settle.
	measure := func() (map[string]float64, map[*flow]float64) {
		time.Sleep(time.Second)
		s0, err := ctl.Status()
		if err != nil {
			t.Fatal(err)
		}
		rx0 := map[*flow]int64{}
		for _, f := range flows {
			rx0[f] = f.rx.Load()
		}
		t0 := time.Now()
		time.Sleep(2500 * time.Millisecond)
		s1, err := ctl.Status()
		if err != nil {
			t.Fatal(err)
		}
		dt := time.Since(t0).Seconds()
		rates, good := map[string]float64{}, map[*flow]float64{}
		for i := range s1 {
			rates[s1[i].Direction+" "+s1[i].Name] = float64(s1[i].Bytes-s0[i].Bytes) * 8 / dt
		}
		for _, f := range flows {
			good[f] = float64(f.rx.Load()-rx0[f]) * 8 / dt
			if e := f.err.Load(); e != nil {
				t.Fatalf("stream broke: %v", *e)
			}
		}
		gm := map[string]float64{}
		for f, g := range good {
			gm[f.name] = g
		}
		t.Logf("classes (Mbit/s): %v; goodput: %v", mbit(rates), mbit(gm))
		return rates, good
	}
	within := func(what string, got float64, want uint64) {
		t.Helper()
		// make bench prints these lines: configured against measured.
		t.Logf("qos: %-42s configured %7.2f  measured %7.2f Mbit/s  %+5.1f %%", what, float64(want)/Mbit, got/Mbit, (got/float64(want)-1)*100)
		if d := got/float64(want) - 1; d < -0.05 || d > 0.05 {
			t.Errorf("%s: %.2f Mbit/s, configured %.2f (%+.1f %%, limit 5 %%)", what, got/Mbit, float64(want)/Mbit, d*100)
		}
	}
	// Phase 1: every class saturated and held at its ceiling.
	rates, good := measure()
	within("egress management", rates["egress management"], cfg.Management.Rate)
	within("egress replication", rates["egress replication"], cfg.Replication.Rate)
	within("egress restores", rates["egress restores"], cfg.Restores.Rate)
	within("ingress capped computer", rates["ingress uploads/cap/computer-x"], 5*Mbit)
	within("ingress other uploads", rates["ingress uploads/other"], 15*Mbit)
	// Goodput is only checked for progress: the receivers are goroutines on
	// a shared machine, so their reads lag and bunch; the kernel's class
	// counters are what holds the rate.
	for _, f := range flows {
		if good[f] == 0 {
			t.Errorf("%s carried nothing", f.name)
		}
	}
	before := rootBytes()

	// Phase 2, changed at run time under the same connections: classes may
	// borrow the whole link; management keeps its guarantee while bulk
	// traffic saturates the link, and the cap is raised.
	cfg.Management = Class{Rate: 6 * Mbit, Ceil: 48 * Mbit, Prio: 1}
	cfg.Replication = Class{Rate: 10 * Mbit, Ceil: 48 * Mbit, Prio: 1}
	cfg.Restores = Class{Rate: 12 * Mbit, Ceil: 48 * Mbit, Prio: 1}
	cfg.Uploads = Class{Rate: 20 * Mbit, Ceil: 48 * Mbit, Prio: 1}
	cfg.Caps = capX(10 * Mbit)
	if err := ctl.Apply(cfg); err != nil {
		t.Fatalf("apply the change: %v", err)
	}
	rates, good = measure()
	t.Logf("qos: %-42s guaranteed %7.2f  measured %7.2f Mbit/s (may borrow more)", "egress management, bulk saturating the link", float64(cfg.Management.Rate)/Mbit, rates["egress management"]/Mbit)
	if m := rates["egress management"]; m < 0.95*float64(cfg.Management.Rate) {
		t.Errorf("management %.2f Mbit/s under saturation, guaranteed %d", m/Mbit, cfg.Management.Rate/Mbit)
	}
	if m := rates["egress management"]; m < 1.05*4*Mbit {
		t.Errorf("management %.2f Mbit/s: the change did not lift its old 4 Mbit/s ceiling", m/Mbit)
	}
	within("egress link (all classes)", rates["egress link"], cfg.LinkRate)
	within("ingress capped computer after the change", rates["ingress uploads/cap/computer-x"], 10*Mbit)
	for _, f := range flows {
		if good[f] == 0 {
			t.Errorf("%s carried nothing after the change", f.name)
		}
	}
	if after := rootBytes(); after < before {
		t.Errorf("root qdisc counters went from %d to %d bytes: the root was recreated", before, after)
	}
}

func mbit(m map[string]float64) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = fmt.Sprintf("%.2f", v/Mbit)
	}
	return out
}

// TestRunRestoresShaping removes the root and ingress qdiscs behind the
// controller's back (a link reset does the same); Run's next pass puts the
// classes, the filters and the redirect back.
func TestRunRestoresShaping(t *testing.T) {
	l := newLab(t)
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	c := New(zaptest.NewLogger(t), l.ha, clk)
	cfg := Defaults("up0", 100*Mbit)
	cfg.IFB = "ifbq0"
	if err := c.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, time.Minute) }()
	t.Cleanup(func() { cancel(); <-done })

	up0, err := l.ha.LinkByName("up0")
	if err != nil {
		t.Fatal(err)
	}
	qs, err := l.ha.QdiscList(up0)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT || q.Attrs().Parent == netlink.HANDLE_INGRESS {
			if err := l.ha.QdiscDel(q); err != nil {
				t.Fatalf("delete %s: %v", q.Type(), err)
			}
		}
	}
	shaped := func() bool {
		cls, _ := l.ha.ClassList(up0, 0)
		fs, _ := l.ha.FilterList(up0, netlink.MakeHandle(1, 0))
		in, _ := l.ha.FilterList(up0, netlink.MakeHandle(0xffff, 0))
		return len(cls) == 6 && len(fs) > 0 && len(in) > 0
	}
	if shaped() {
		t.Fatal("the qdiscs were not deleted")
	}
	// Each pass of this loop is one tick of Run's clock; the bound is only
	// against a hang.
	for i := 0; !shaped(); i++ {
		if i == 1000 {
			t.Fatal("Run did not restore the shaping after 1000 ticks")
		}
		clk.Advance(time.Minute)
		time.Sleep(10 * time.Millisecond)
	}
}
