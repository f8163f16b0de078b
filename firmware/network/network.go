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

// Configure brings up the first ethernet interface as n says. It returns
// the interface name.
func Configure(ctx context.Context, log *zap.Logger, n config.Network) (string, error) {
	link, err := FirstEthernet()
	if err != nil {
		return "", err
	}
	name := link.Attrs().Name
	if err := netlink.LinkSetUp(link); err != nil {
		return name, fmt.Errorf("bring %s up: %w", name, err)
	}
	if n.DHCP {
		return name, dhcp(ctx, log, link)
	}
	return name, static(link, n)
}

func dhcp(ctx context.Context, log *zap.Logger, link netlink.Link) error {
	name := link.Attrs().Name
	var lastErr error
	for attempt := 1; attempt <= 5; attempt++ {
		c, err := nclient4.New(name, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(2))
		if err != nil {
			return fmt.Errorf("start dhcp on %s: %w", name, err)
		}
		lease, err := c.Request(ctx)
		c.Close()
		if err == nil {
			if err := dhclient.Configure4(link, lease.ACK); err != nil {
				return fmt.Errorf("apply dhcp lease on %s: %w", name, err)
			}
			log.Info("dhcp lease", zap.String("interface", name), zap.Stringer("address", lease.ACK.YourIPAddr),
				zap.Stringer("router", ipList(lease.ACK.Router())), zap.Duration("lease", lease.ACK.IPAddressLeaseTime(0)))
			return nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
		log.Warn("dhcp failed, retrying", zap.String("interface", name), zap.Int("attempt", attempt), zap.Error(err))
	}
	return fmt.Errorf("get dhcp lease on %s: %w (check the cable and the DHCP server, or set a static address)", name, lastErr)
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
