package qos

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"
	"vaultnode/internal/fwctl"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"vaultnode/internal/clock"
)

// Netlink is the part of *netlink.Handle the controller uses; a handle made
// with netlink.NewHandleAt works on another network namespace.
type Netlink interface {
	LinkByName(name string) (netlink.Link, error)
	LinkAdd(link netlink.Link) error
	LinkSetUp(link netlink.Link) error
	QdiscList(link netlink.Link) ([]netlink.Qdisc, error)
	QdiscReplace(q netlink.Qdisc) error
	ClassList(link netlink.Link, parent uint32) ([]netlink.Class, error)
	ClassReplace(c netlink.Class) error
	ClassDel(c netlink.Class) error
	FilterList(link netlink.Link, parent uint32) ([]netlink.Filter, error)
	FilterAdd(f netlink.Filter) error
	FilterDel(f netlink.Filter) error
}

// Class handles (major 1 on both devices). Unclassified traffic goes to
// management, which is small and must never starve.
const (
	hRoot     = 0x1
	hMgmt     = 0x10
	hRepl     = 0x20
	hRestores = 0x30
	hUploads  = 0x40
	hOther    = 0x41 // uploads from sources without a cap
	hCap0     = 0x100
	bandSize  = 1000 // filter priorities alternate between two bands on change
)

var rootQdisc = netlink.MakeHandle(1, 0)

// Controller keeps the uplink's shaping equal to the last Config applied.
type Controller struct {
	log   *zap.Logger
	nl    Netlink
	clock clock.Clock

	mu      sync.Mutex
	want    *Config
	applied map[string]string // device -> filter set last installed
	// noFqCodel: the kernel lacks fq_codel; leaves keep the default fifo.
	noFqCodel bool
}

// New returns a controller working through h.
func New(log *zap.Logger, h Netlink, clk clock.Clock) *Controller {
	return &Controller{log: log, nl: h, clock: clk, applied: map[string]string{}}
}

// Apply validates cfg and brings the kernel to it: classes are changed in
// place, filters are swapped without a gap, the root qdiscs stay.
func (c *Controller) Apply(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.reconcile(cfg); err != nil {
		return err
	}
	c.want = &cfg
	return nil
}

// Run re-applies the last Config every interval until ctx ends, so shaping
// comes back after a link reset or a stray tc command.
func (c *Controller) Run(ctx context.Context, every time.Duration) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.clock.After(every):
		}
		c.mu.Lock()
		if c.want != nil {
			if err := c.reconcile(*c.want); err != nil {
				c.log.Warn("reconcile qos", zap.Error(err))
			}
		}
		c.mu.Unlock()
	}
}

// Config returns the Config last applied, false if none.
func (c *Controller) Config() (Config, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.want == nil {
		return Config{}, false
	}
	return *c.want, true
}

type classSpec struct {
	name        string
	handle      uint32 // minor
	parent      uint32 // minor
	rate, ceil  uint64 // bits/s
	prio        uint32
	leaf        bool
	ingressOnly bool
}

func classes(cfg Config) []classSpec {
	other := cfg.Uploads.Rate / 10
	var capped uint64
	for _, p := range cfg.Caps {
		capped += capRate(p)
	}
	if cfg.Uploads.Rate > capped && cfg.Uploads.Rate-capped > other {
		other = cfg.Uploads.Rate - capped
	}
	if other < minRate {
		other = minRate
	}
	s := []classSpec{
		{"link", hRoot, 0, cfg.LinkRate, cfg.LinkRate, 0, false, false},
		{"management", hMgmt, hRoot, cfg.Management.Rate, cfg.Management.Ceil, cfg.Management.Prio, true, false},
		{"replication", hRepl, hRoot, cfg.Replication.Rate, cfg.Replication.Ceil, cfg.Replication.Prio, true, false},
		{"restores", hRestores, hRoot, cfg.Restores.Rate, cfg.Restores.Ceil, cfg.Restores.Prio, true, false},
		{"uploads", hUploads, hRoot, cfg.Uploads.Rate, cfg.Uploads.Ceil, cfg.Uploads.Prio, false, false},
		{"uploads/other", hOther, hUploads, other, cfg.Uploads.Ceil, cfg.Uploads.Prio, true, false},
	}
	for i, p := range cfg.Caps {
		s = append(s, classSpec{"uploads/cap/" + p.Name, uint32(hCap0 + i), hUploads, capRate(p), p.Ceil, cfg.Uploads.Prio, true, true})
	}
	return s
}

func capRate(p Cap) uint64 {
	if p.Rate != 0 {
		return p.Rate
	}
	return max(p.Ceil/10, minRate)
}

func (c *Controller) reconcile(cfg Config) error {
	up, err := c.nl.LinkByName(cfg.Uplink)
	if err != nil {
		return fmt.Errorf("find uplink %s: %w", cfg.Uplink, err)
	}
	ifb, err := c.nl.LinkByName(cfg.IFB)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("find %s: %w", cfg.IFB, err)
		}
		if err := c.nl.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: cfg.IFB, TxQLen: 1000}}); err != nil {
			return fmt.Errorf("create %s (is the ifb module loaded?): %w", cfg.IFB, err)
		}
		if ifb, err = c.nl.LinkByName(cfg.IFB); err != nil {
			return fmt.Errorf("find %s: %w", cfg.IFB, err)
		}
	}
	if ifb.Attrs().Flags&unix.IFF_UP == 0 {
		if err := c.nl.LinkSetUp(ifb); err != nil {
			return fmt.Errorf("bring %s up: %w", cfg.IFB, err)
		}
	}
	specs := classes(cfg)
	for _, dev := range []struct {
		link    netlink.Link
		ingress bool
	}{{up, false}, {ifb, true}} {
		if err := c.tree(dev.link, specs, filters(cfg, dev.ingress), dev.ingress); err != nil {
			return err
		}
	}
	return c.redirect(up, ifb)
}

// tree reconciles one device's HTB: root qdisc kept if present, classes
// replaced in place, filters swapped, classes no longer wanted deleted.
func (c *Controller) tree(link netlink.Link, specs []classSpec, fs []filterSpec, ingress bool) error {
	name := link.Attrs().Name
	qs, err := c.nl.QdiscList(link)
	if err != nil {
		return fmt.Errorf("list qdiscs of %s: %w", name, err)
	}
	haveRoot := false
	for _, q := range qs {
		if h, ok := q.(*netlink.Htb); ok && h.Parent == netlink.HANDLE_ROOT && h.Handle == rootQdisc && h.Defcls == hMgmt {
			haveRoot = true
		}
	}
	if !haveRoot {
		q := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_ROOT, Handle: rootQdisc})
		q.Defcls = hMgmt
		if err := c.nl.QdiscReplace(q); err != nil {
			return fmt.Errorf("%w: install htb root on %s: %v", ErrKernel, name, err)
		}
		delete(c.applied, name)
		c.log.Info("qos root installed", zap.String("device", name))
	}
	want := map[uint32]bool{}
	for _, s := range specs {
		if s.ingressOnly && !ingress {
			continue
		}
		want[s.handle] = true
		parent := netlink.MakeHandle(1, uint16(s.parent))
		if s.parent == 0 {
			parent = rootQdisc
		}
		cl := netlink.NewHtbClass(netlink.ClassAttrs{LinkIndex: link.Attrs().Index, Parent: parent, Handle: netlink.MakeHandle(1, uint16(s.handle))},
			netlink.HtbClassAttrs{Rate: s.rate, Ceil: s.ceil, Prio: s.prio, Quantum: quantum(s.rate)}) // bits/s in, bytes/s to the kernel
		if err := c.nl.ClassReplace(cl); err != nil {
			return fmt.Errorf("%w: set class %s on %s: %v", ErrKernel, s.name, name, err)
		}
		if s.leaf && !c.noFqCodel {
			// fq_codel under each leaf: flows within a class share it fairly
			// and its queue stays short; without it a leaf queues txqueuelen
			// packets of up to 64 KiB (GSO), seconds of data in a slow class.
			q := netlink.NewFqCodel(netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: cl.Handle,
				Handle: netlink.MakeHandle(uint16(s.handle), 0)})
			if err := c.nl.QdiscReplace(q); errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
				c.noFqCodel = true
				c.log.Warn("kernel has no fq_codel (sch_fq_codel): htb leaves keep the default fifo", zap.Error(err))
			} else if err != nil {
				return fmt.Errorf("%w: set queue of class %s on %s: %v", ErrKernel, s.name, name, err)
			}
		}
	}
	if err := c.filters(link, fs); err != nil {
		return err
	}
	have, err := c.nl.ClassList(link, 0)
	if err != nil {
		return fmt.Errorf("list classes of %s: %w", name, err)
	}
	for _, cl := range have {
		a := cl.Attrs()
		if a.Handle>>16 == 1 && !want[a.Handle&0xffff] {
			if err := c.nl.ClassDel(cl); err != nil {
				return fmt.Errorf("%w: delete class %x on %s: %v", ErrKernel, a.Handle, name, err)
			}
		}
	}
	return nil
}

// quantum is HTB's share of spare bandwidth per round, bytes: the kernel's
// own rate/10, kept within the bounds it would warn about.
func quantum(rateBits uint64) uint32 {
	return uint32(min(max(rateBits/8/10, 1600), 200_000))
}

type filterSpec struct {
	prio  uint16
	class uint32 // minor
	keys  []nl.TcU32Key
}

// u32 keys on the IPv4 header. Offsets assume no IP options (IHL 5), which
// every key set checks; fragments and IPv6 fall to the default class.
func kIHL5() nl.TcU32Key  { return nl.TcU32Key{Off: 0, Mask: 0x0f000000, Val: 0x05000000} }
func kTCP() nl.TcU32Key   { return nl.TcU32Key{Off: 8, Mask: 0x00ff0000, Val: 6 << 16} }
func kSmall() nl.TcU32Key { return nl.TcU32Key{Off: 0, Mask: 0x0000ff00, Val: 0} } // total length < 256: ACKs
func kSport(p uint16) nl.TcU32Key {
	return nl.TcU32Key{Off: 20, Mask: 0xffff0000, Val: uint32(p) << 16}
}
func kDport(p uint16) nl.TcU32Key { return nl.TcU32Key{Off: 20, Mask: 0x0000ffff, Val: uint32(p)} }
func kAddr(off int32, p netip.Prefix) nl.TcU32Key {
	a := p.Masked().Addr().As4()
	mask := uint32(0)
	if p.Bits() > 0 {
		mask = ^uint32(0) << (32 - p.Bits())
	}
	return nl.TcU32Key{Off: off, Mask: mask, Val: uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])}
}

func tcpPort(port func(uint16) nl.TcU32Key, p uint16, extra ...nl.TcU32Key) []nl.TcU32Key {
	return append([]nl.TcU32Key{kIHL5(), kTCP(), port(p)}, extra...)
}

// filters lists the classification for one direction. Egress (the uplink)
// sees the appliance's source ports; ingress (the IFB) its destination ports.
func filters(cfg Config, ingress bool) []filterSpec {
	port, peerOff := kSport, int32(16) // egress: source port, destination address
	if ingress {
		port, peerOff = kDport, 12
	}
	var fs []filterSpec
	if cfg.Peer.IsValid() {
		fs = append(fs, filterSpec{1, hRepl, []nl.TcU32Key{kAddr(peerOff, netip.PrefixFrom(cfg.Peer, 32))}})
	}
	for i, p := range cfg.Ports.Management {
		fs = append(fs, filterSpec{uint16(2 + i), hMgmt, tcpPort(port, p)})
	}
	if cfg.Ports.Replication != 0 {
		fs = append(fs, filterSpec{20, hRepl, tcpPort(port, cfg.Ports.Replication)})
	}
	api := cfg.Ports.AgentAPI
	if ingress {
		fs = append(fs, filterSpec{30, hRestores, tcpPort(port, api, kSmall())}) // restores' ACKs
		for i, p := range cfg.Caps {
			for _, s := range p.Sources {
				fs = append(fs, filterSpec{40, uint32(hCap0 + i), tcpPort(port, api, kAddr(12, s))})
			}
		}
		fs = append(fs, filterSpec{50, hOther, tcpPort(port, api)})
	} else {
		fs = append(fs, filterSpec{30, hOther, tcpPort(port, api, kSmall())}) // uploads' ACKs
		fs = append(fs, filterSpec{50, hRestores, tcpPort(port, api)})
	}
	return fs
}

// filters installs fs on link's root qdisc if they differ from what this
// controller installed last: the new set goes in the other priority band,
// then the old band is deleted, so no packet is ever unclassified.
func (c *Controller) filters(link netlink.Link, fs []filterSpec) error {
	name := link.Attrs().Name
	key := fmt.Sprint(link.Attrs().Index, fs)
	if c.applied[name] == key {
		return nil
	}
	have, err := c.nl.FilterList(link, rootQdisc)
	if err != nil {
		return fmt.Errorf("list filters of %s: %w", name, err)
	}
	old := map[uint16]bool{}
	band := uint16(0)
	for _, f := range have {
		p := f.Attrs().Priority
		old[p] = true
		if p < bandSize {
			band = bandSize
		}
	}
	for _, f := range fs {
		u := &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: link.Attrs().Index, Parent: rootQdisc, Priority: band + f.prio, Protocol: unix.ETH_P_IP},
			ClassId:     netlink.MakeHandle(1, uint16(f.class)),
			Sel:         &nl.TcU32Sel{Flags: nl.TC_U32_TERMINAL, Keys: f.keys},
		}
		if err := c.nl.FilterAdd(u); err != nil {
			return fmt.Errorf("%w: add filter prio %d on %s: %v", ErrKernel, band+f.prio, name, err)
		}
	}
	prios := make([]int, 0, len(old))
	for p := range old {
		prios = append(prios, int(p))
	}
	sort.Ints(prios)
	for _, p := range prios {
		del := &netlink.U32{FilterAttrs: netlink.FilterAttrs{LinkIndex: link.Attrs().Index, Parent: rootQdisc, Priority: uint16(p), Protocol: unix.ETH_P_IP}}
		if err := c.nl.FilterDel(del); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("%w: delete filter prio %d on %s: %v", ErrKernel, p, name, err)
		}
	}
	c.applied[name] = key
	return nil
}

// redirect sends everything arriving on up through ifb: an ingress qdisc
// with one match-all u32 filter whose action is a mirred egress redirect.
func (c *Controller) redirect(up, ifb netlink.Link) error {
	name := up.Attrs().Name
	qs, err := c.nl.QdiscList(up)
	if err != nil {
		return fmt.Errorf("list qdiscs of %s: %w", name, err)
	}
	haveIngress := false
	for _, q := range qs {
		if _, ok := q.(*netlink.Ingress); ok {
			haveIngress = true
		}
	}
	ingress := netlink.MakeHandle(0xffff, 0)
	if !haveIngress {
		q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: up.Attrs().Index, Parent: netlink.HANDLE_INGRESS, Handle: ingress}}
		if err := c.nl.QdiscReplace(q); err != nil {
			return fmt.Errorf("%w: install ingress qdisc on %s: %v", ErrKernel, name, err)
		}
	}
	fs, err := c.nl.FilterList(up, ingress)
	if err != nil {
		return fmt.Errorf("list ingress filters of %s: %w", name, err)
	}
	for _, f := range fs {
		if u, ok := f.(*netlink.U32); ok && u.Priority == 1 {
			for _, a := range u.Actions {
				if m, ok := a.(*netlink.MirredAction); ok && m.Ifindex == ifb.Attrs().Index {
					return nil
				}
			}
		}
	}
	if len(fs) > 0 { // a redirect to an older ifb: replace it
		del := &netlink.U32{FilterAttrs: netlink.FilterAttrs{LinkIndex: up.Attrs().Index, Parent: ingress, Priority: 1, Protocol: unix.ETH_P_ALL}}
		if err := c.nl.FilterDel(del); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("%w: delete ingress redirect on %s: %v", ErrKernel, name, err)
		}
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: up.Attrs().Index, Parent: ingress, Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions:     []netlink.Action{netlink.NewMirredAction(ifb.Attrs().Index)},
	}
	if err := c.nl.FilterAdd(f); err != nil {
		return fmt.Errorf("%w: redirect %s ingress to %s: %v", ErrKernel, name, ifb.Attrs().Name, err)
	}
	return nil
}

// ClassStatus is one class as the kernel reports it, rates in bits/s: the
// control socket's wire form, which vaultctl qos decodes (internal/fwctl).
type ClassStatus = fwctl.QoSClass

// Status reads the classes back from the kernel.
func (c *Controller) Status() ([]ClassStatus, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.want == nil {
		return nil, nil
	}
	names := map[uint32]string{}
	for _, s := range classes(*c.want) {
		names[s.handle] = s.name
	}
	var out []ClassStatus
	for _, dev := range []struct{ name, dir string }{{c.want.Uplink, "egress"}, {c.want.IFB, "ingress"}} {
		link, err := c.nl.LinkByName(dev.name)
		if err != nil {
			return nil, fmt.Errorf("find %s: %w", dev.name, err)
		}
		cls, err := c.nl.ClassList(link, 0)
		if err != nil {
			return nil, fmt.Errorf("list classes of %s: %w", dev.name, err)
		}
		for _, cl := range cls {
			h, ok := cl.(*netlink.HtbClass)
			if !ok || h.Handle>>16 != 1 {
				continue
			}
			st := ClassStatus{Device: dev.name, Direction: dev.dir, Handle: fmt.Sprintf("1:%x", h.Handle&0xffff),
				Name: names[h.Handle&0xffff], Rate: h.Rate * 8, Ceil: h.Ceil * 8} // the kernel reports bytes/s
			if s := h.Statistics; s != nil {
				if s.Basic != nil {
					st.Bytes, st.Packets = s.Basic.Bytes, uint64(s.Basic.Packets)
				}
				if s.Queue != nil {
					st.Drops, st.Overlimits = uint64(s.Queue.Drops), uint64(s.Queue.Overlimits)
				}
			}
			out = append(out, st)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Direction != out[j].Direction {
			return out[i].Direction == "egress"
		}
		return out[i].Handle < out[j].Handle
	})
	return out, nil
}
