// Package qos shapes the appliance's uplink: HTB classes for management,
// replication, restores and agent uploads on the uplink's egress, and the same
// classes on an IFB device that the uplink's ingress is redirected to, with
// per-computer or per-company caps on uploads. A Controller reconciles the
// kernel's state to a Config in place (RTM_NEWTCLASS replace), so a change of
// rates never drops a connection. Rates are bits per second throughout this
// package's API; see DESIGN.md for the units the kernel uses.
package qos

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Sentinel errors.
var (
	ErrConfig = errors.New("invalid qos configuration")
	ErrKernel = errors.New("kernel refused qos state")
)

// Mbit is one megabit per second, in bits per second.
const Mbit = 1_000_000

// FallbackSpeed is the link rate assumed when sysfs reports none (virtual
// NICs report -1): 1 Gbit/s.
const FallbackSpeed = 1000 * Mbit

// Class is one traffic class's guaranteed rate and ceiling, in bits/s.
// Prio orders borrowing of spare bandwidth: 0 borrows first (0..7).
type Class struct {
	Rate uint64 `json:"rate_bits"`
	Ceil uint64 `json:"ceil_bits"`
	Prio uint32 `json:"prio"`
}

// Cap limits the agent uploads from a set of source addresses: one computer
// (one address) or a company (its prefixes). Rates in bits/s; Rate 0 means a
// tenth of Ceil.
type Cap struct {
	Name    string         `json:"name"`
	Sources []netip.Prefix `json:"sources"`
	Rate    uint64         `json:"rate_bits"`
	Ceil    uint64         `json:"ceil_bits"`
}

// Ports says which TCP ports carry which traffic on the appliance.
type Ports struct {
	AgentAPI    uint16   `json:"agent_api"`   // the vault's agent listener: uploads in, restores out
	Management  []uint16 `json:"management"`  // console, portal, support
	Replication uint16   `json:"replication"` // the pair's replication listener, 0 if none
}

// Config is the shaping wanted on one uplink.
type Config struct {
	Uplink      string     `json:"uplink"`
	IFB         string     `json:"ifb"`       // the ingress device, e.g. "ifb0"
	LinkRate    uint64     `json:"link_bits"` // the root class, bits/s, both directions
	Management  Class      `json:"management"`
	Replication Class      `json:"replication"`
	Restores    Class      `json:"restores"`
	Uploads     Class      `json:"uploads"`
	Peer        netip.Addr `json:"peer"` // the replication peer, invalid if none
	Ports       Ports      `json:"ports"`
	Caps        []Cap      `json:"caps"`
}

// Limits on what a Config may hold.
const (
	MaxCaps      = 256
	MaxSources   = 64 // per cap
	MaxMgmtPorts = 16
	minRate      = 8_000 // bits/s: below this HTB's arithmetic is meaningless
)

// Defaults derives first-boot classes from the link rate (bits/s): management
// 5 %, replication 20 %, restores 35 %, uploads 40 % guaranteed, every class
// allowed to borrow up to the whole link; management borrows first.
func Defaults(uplink string, linkRate uint64) Config {
	if linkRate < 10*Mbit {
		linkRate = 10 * Mbit
	}
	pct := func(p uint64) uint64 { return linkRate / 100 * p }
	return Config{
		Uplink:      uplink,
		IFB:         "ifb0",
		LinkRate:    linkRate,
		Management:  Class{Rate: pct(5), Ceil: linkRate, Prio: 0},
		Replication: Class{Rate: pct(20), Ceil: linkRate, Prio: 2},
		Restores:    Class{Rate: pct(35), Ceil: linkRate, Prio: 1},
		Uploads:     Class{Rate: pct(40), Ceil: linkRate, Prio: 1},
		Ports:       Ports{AgentAPI: 8443, Management: []uint16{22, 443, 80}},
	}
}

// LinkSpeed reads the link rate of iface in bits/s from sysroot (normally
// "/sys") /class/net/IFACE/speed, which holds Mbit/s. It returns
// FallbackSpeed when the file is missing, unreadable or holds -1/0.
func LinkSpeed(sysroot, iface string) uint64 {
	b, err := os.ReadFile(filepath.Join(sysroot, "class", "net", iface, "speed"))
	if err != nil {
		return FallbackSpeed
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n <= 0 || n > 10_000_000 { // 10 Tbit/s: a garbled file
		return FallbackSpeed
	}
	return uint64(n) * Mbit
}

// Validate checks c against the limits; the error names the broken one.
func (c Config) Validate() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(f, a...)) }
	if c.Uplink == "" || c.IFB == "" || c.Uplink == c.IFB {
		return bad("uplink %q and ifb %q must be two named devices", c.Uplink, c.IFB)
	}
	if c.LinkRate < minRate {
		return bad("link rate %d bits/s is below %d", c.LinkRate, minRate)
	}
	for _, k := range []struct {
		name string
		c    Class
	}{{"management", c.Management}, {"replication", c.Replication}, {"restores", c.Restores}, {"uploads", c.Uploads}} {
		if k.c.Rate < minRate || k.c.Ceil < k.c.Rate || k.c.Ceil > c.LinkRate || k.c.Prio > 7 {
			return bad("class %s: rate %d, ceil %d bits/s, prio %d: need %d <= rate <= ceil <= link %d, prio <= 7",
				k.name, k.c.Rate, k.c.Ceil, k.c.Prio, minRate, c.LinkRate)
		}
	}
	if s := c.Management.Rate + c.Replication.Rate + c.Restores.Rate + c.Uploads.Rate; s > c.LinkRate {
		return bad("guaranteed rates add up to %d bits/s, more than the link's %d", s, c.LinkRate)
	}
	if c.Ports.AgentAPI == 0 {
		return bad("no agent API port")
	}
	if len(c.Ports.Management) > MaxMgmtPorts {
		return bad("%d management ports, at most %d", len(c.Ports.Management), MaxMgmtPorts)
	}
	if c.Peer.IsValid() && !c.Peer.Is4() {
		return bad("replication peer %s: only IPv4 is classified", c.Peer)
	}
	if len(c.Caps) > MaxCaps {
		return bad("%d upload caps, at most %d", len(c.Caps), MaxCaps)
	}
	for _, p := range c.Caps {
		if p.Ceil < minRate || p.Ceil > c.LinkRate || p.Rate > p.Ceil {
			return bad("cap %q: ceil %d, rate %d bits/s: need %d <= ceil <= link, rate <= ceil", p.Name, p.Ceil, p.Rate, minRate)
		}
		if len(p.Sources) == 0 || len(p.Sources) > MaxSources {
			return bad("cap %q: %d sources, need 1 to %d", p.Name, len(p.Sources), MaxSources)
		}
		for _, s := range p.Sources {
			if !s.IsValid() || !s.Addr().Is4() {
				return bad("cap %q: source %s: only IPv4 prefixes are classified", p.Name, s)
			}
		}
	}
	return nil
}
