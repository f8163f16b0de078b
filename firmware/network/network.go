// Package network brings the appliance's network up through netlink:
// loopback, then the first ethernet interface by DHCP or with the static
// address from the saved configuration.
package network

import (
	"context"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"

	"vaultnode/firmware/config"
	"vaultnode/internal/clock"
)

// Loopback brings lo up.
func Loopback() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	return nil
}

// FirstEthernet returns the first ethernet interface by name.
func FirstEthernet() (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	sort.Slice(links, func(i, j int) bool { return links[i].Attrs().Name < links[j].Attrs().Name })
	for _, l := range links {
		a := l.Attrs()
		if l.Type() == "device" && a.Name != "lo" && len(a.HardwareAddr) == 6 {
			return l, nil
		}
	}
	return nil, fmt.Errorf("find ethernet: no network interface (is the NIC driver loaded?)")
}

// Link is a configured interface.
type Link struct {
	Name  string
	link  netlink.Link
	lease *nclient4.Lease // nil for a static address
}

// Configure brings up the first ethernet interface as n says.
func Configure(ctx context.Context, log *zap.Logger, n config.Network) (*Link, error) {
	link, err := FirstEthernet()
	if err != nil {
		return nil, err
	}
	l := &Link{Name: link.Attrs().Name, link: link}
	if err := netlink.LinkSetUp(link); err != nil {
		return l, fmt.Errorf("bring %s up: %w", l.Name, err)
	}
	if n.DHCP {
		l.lease, err = dhcp(ctx, log, link, nil)
		return l, err
	}
	return l, static(link, n)
}

// dhcp gets a lease (renewing old if given) and applies it.
func dhcp(ctx context.Context, log *zap.Logger, link netlink.Link, old *nclient4.Lease) (*nclient4.Lease, error) {
	name := link.Attrs().Name
	var lastErr error
	for attempt := 1; attempt <= 5; attempt++ {
		c, err := nclient4.New(name, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(2))
		if err != nil {
			return nil, fmt.Errorf("start dhcp on %s: %w", name, err)
		}
		var lease *nclient4.Lease
		if old != nil {
			lease, err = c.Renew(ctx, old)
		} else {
			lease, err = c.Request(ctx)
		}
		c.Close()
		if err == nil {
			if err := dhclient.Configure4(link, lease.ACK); err != nil {
				return nil, fmt.Errorf("apply dhcp lease on %s: %w", name, err)
			}
			log.Info("dhcp lease", zap.String("interface", name), zap.Stringer("address", lease.ACK.YourIPAddr),
				zap.Stringer("router", ipList(lease.ACK.Router())), zap.Duration("lease", leaseTime(lease)), zap.Bool("renewal", old != nil))
			return lease, nil
		}
		lastErr = err
		if ctx.Err() != nil || old != nil {
			break
		}
		log.Warn("dhcp failed, retrying", zap.String("interface", name), zap.Int("attempt", attempt), zap.Error(err))
	}
	return nil, fmt.Errorf("get dhcp lease on %s: %w (check the cable and the DHCP server, or set a static address)", name, lastErr)
}

func leaseTime(l *nclient4.Lease) time.Duration { return l.ACK.IPAddressLeaseTime(time.Hour) }

// KeepLease renews a DHCP lease at half its time until ctx ends; when
// renewal fails it retries every minute and, once the lease has expired,
// asks for a new one. It returns at once for a static address.
func (l *Link) KeepLease(ctx context.Context, log *zap.Logger, clk clock.Clock) {
	if l == nil || l.lease == nil {
		return
	}
	lease := l.lease
	obtained := clk.Now()
	wait := max(leaseTime(lease)/2, 30*time.Second)
	for {
		t := clk.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		old := lease
		if clk.Now().Sub(obtained) >= leaseTime(lease) {
			old = nil // expired: start over
		}
		next, err := dhcp(ctx, log, l.link, old)
		if err != nil {
			log.Warn("dhcp renewal failed; retrying in a minute", zap.String("interface", l.Name), zap.Error(err))
			wait = time.Minute
			continue
		}
		lease, obtained = next, clk.Now()
		wait = max(leaseTime(lease)/2, 30*time.Second)
	}
}

type ipList []net.IP

func (l ipList) String() string {
	s := make([]string, len(l))
	for i, ip := range l {
		s[i] = ip.String()
	}
	return strings.Join(s, ",")
}

func static(link netlink.Link, n config.Network) error {
	name := link.Attrs().Name
	addr, err := netlink.ParseAddr(n.Address)
	if err != nil {
		return fmt.Errorf("parse address %q: %w", n.Address, err)
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("set address %s on %s: %w", n.Address, name, err)
	}
	if n.Gateway != "" {
		gw := net.ParseIP(n.Gateway)
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}); err != nil {
			return fmt.Errorf("set default route via %s: %w", n.Gateway, err)
		}
	}
	var b strings.Builder
	for _, d := range n.DNS {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	if err := os.WriteFile("/etc/resolv.conf", []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write resolv.conf: %w", err)
	}
	return nil
}

// Addresses lists "iface addr/prefix" for every global address.
func Addresses() []string {
	links, err := netlink.LinkList()
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range links {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if a.IP.IsGlobalUnicast() {
				out = append(out, l.Attrs().Name+" "+a.IPNet.String())
			}
		}
	}
	return out
}
