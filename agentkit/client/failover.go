package client

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"vaultnode/internal/wire"
)

// A vault that is a pair has several addresses (the enrolment answer's
// Vaults, kept comma-separated in the agent's identity). Requests go to
// the current one; a member that does not lead answers not_leader naming
// the leader, and the client moves there; a member that cannot be reached
// makes the client try the next address. A request whose body the vault
// has not read is sent again after either (failoverWait), for up to
// failoverAttempts tries, so an election of a few seconds is waited out.

const (
	failoverAttempts = 40
	failoverMaxWait  = 2 * time.Second
)

type pair struct {
	mu        sync.Mutex
	addrs     []string
	cur       int
	failovers atomic.Int64
	onVaults  func(addrs []string) // told when the list changes (SetOnVaults)
}

// SetOnVaults sets fn, told the vault's addresses whenever a pair's leader
// names a different set (a member joined or left): the agent keeps them.
func (p *pair) SetOnVaults(fn func(addrs []string)) {
	p.mu.Lock()
	p.onVaults = fn
	p.mu.Unlock()
}

// learn takes the addresses a leader listed (wire.HeaderVaults), bounded.
func (p *pair) learn(h string) {
	if len(h) > 2048 {
		return
	}
	var next []string
	for _, a := range strings.Split(h, ",") {
		a = strings.TrimSpace(a)
		if a == "" || len(a) > 255 || strings.ContainsAny(a, "/@?# ") {
			return
		}
		next = append(next, a)
	}
	if len(next) == 0 || len(next) > 16 {
		return
	}
	p.mu.Lock()
	cur := p.addrs[p.cur]
	same := len(next) == len(p.addrs)
	for i := 0; same && i < len(next); i++ {
		same = next[i] == p.addrs[i]
	}
	if same {
		p.mu.Unlock()
		return
	}
	p.addrs, p.cur = next, 0
	for i, a := range next {
		if a == cur {
			p.cur = i
		}
	}
	fn := p.onVaults
	p.mu.Unlock()
	if fn != nil {
		fn(append([]string(nil), next...))
	}
}

func newPair(addr string) pair {
	var addrs []string
	for _, a := range strings.Split(addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		addrs = []string{addr}
	}
	return pair{addrs: addrs}
}

func (p *pair) base() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return "https://" + p.addrs[p.cur]
}

// Addrs are the vault's addresses, the current one first.
func (p *pair) Addrs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append(append([]string(nil), p.addrs[p.cur:]...), p.addrs[:p.cur]...)
}

// Failovers counts the moves from one address to another: a caller whose
// work failed after one (a session the old leader held) starts it again.
func (p *pair) Failovers() int64 { return p.failovers.Load() }

// unreachable moves on from base to the next address.
func (p *pair) unreachable(base string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.addrs) > 1 && "https://"+p.addrs[p.cur] == base {
		p.cur = (p.cur + 1) % len(p.addrs)
		p.failovers.Add(1)
	}
}

// notLeader moves to the leader a member named (any address when none).
func (p *pair) notLeader(base, leader string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if "https://"+p.addrs[p.cur] != base {
		return // moved meanwhile
	}
	if leader == "" || strings.ContainsAny(leader, "/@?#") || len(leader) > 255 {
		if len(p.addrs) > 1 {
			p.cur = (p.cur + 1) % len(p.addrs)
			p.failovers.Add(1)
		}
		return
	}
	for i, a := range p.addrs {
		if a == leader {
			p.cur = i
			p.failovers.Add(1)
			return
		}
	}
	p.addrs = append(p.addrs, leader) // a member added since enrolment
	p.cur = len(p.addrs) - 1
	p.failovers.Add(1)
}

// reachError is a request that reached no vault.
type reachError struct {
	err  error
	addr string
}

func (e *reachError) Error() string { return fmt.Sprintf("reach the vault at %s: %v", e.addr, e.err) }
func (e *reachError) Unwrap() error { return e.err }

// failoverWait says whether a request that failed with err may go again
// to the (new) current address, and after how long.
func (c *Client) failoverWait(err error, attempt int) (time.Duration, bool) {
	if attempt >= failoverAttempts {
		return 0, false
	}
	switch e := err.(type) {
	case *Error:
		if e.Code != wire.CodeNotLeader {
			return 0, false
		}
		if e.Leader != "" && attempt == 1 {
			return 0, true
		}
	case *reachError:
		c.mu.Lock()
		n := len(c.addrs)
		c.mu.Unlock()
		if n < 2 {
			return 0, false // a single vault: the caller's own retries decide
		}
	default:
		return 0, false
	}
	return min(time.Duration(attempt)*200*time.Millisecond, failoverMaxWait), true
}
