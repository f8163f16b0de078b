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
// makes the client try the next address at once (waiting only once every
// address failed in a row). A member that answers not_leader naming no
// leader (an election is running) is alive: the client asks it again
// (it learns the leader, or becomes it) and moves on only after
// staleAnswers such answers in a row, in case it is cut off from the
// others. A request whose body the vault has not read is sent again after
// either (failoverWait), for up to failoverAttempts tries, so an election
// of a few seconds is waited out; the wait grows by failoverStep a try up
// to failoverMaxWait, so that a new leader is found within about a
// failoverStep or two of its election.

const (
	failoverAttempts = 80
	failoverStep     = 100 * time.Millisecond
	failoverMaxWait  = time.Second
	staleAnswers     = 4

	// unconnectedAttempts bounds the tries of a request to a single vault
	// that never got a connection: 1+2+3+4+5 = 15 s of waits.
	unconnectedAttempts = 6
)

type pair struct {
	mu        sync.Mutex
	addrs     []string
	cur       int
	failovers atomic.Int64
	onVaults  func(addrs []string) // told when the list changes (SetOnVaults)
	missed    int                  // addresses unreachable in a row
	stale     int                  // not_leader answers naming no leader in a row
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

// connectTimeout bounds a dial and TLS handshake to a single vault (one
// so loaded that its handshake takes seconds is still waited for);
// pairConnectTimeout to a member of a pair, where a dead member's address
// is given up sooner because another one may serve.
const (
	connectTimeout     = 10 * time.Second
	pairConnectTimeout = 4 * time.Second
)

func (p *pair) connectTimeout() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.addrs) > 1 {
		return pairConnectTimeout
	}
	return connectTimeout
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
	p.missed++
	if len(p.addrs) > 1 && "https://"+p.addrs[p.cur] == base {
		p.cur = (p.cur + 1) % len(p.addrs)
		p.failovers.Add(1)
	}
}

// reached notes that a vault answered, and whether it served.
func (p *pair) reached(served bool) {
	p.mu.Lock()
	p.missed = 0
	if served {
		p.stale = 0
	}
	p.mu.Unlock()
}

// notLeader moves to the leader a member named; a member that names none
// is asked again, up to staleAnswers times in a row, before the next
// address.
func (p *pair) notLeader(base, leader string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if "https://"+p.addrs[p.cur] != base {
		return // moved meanwhile
	}
	if leader == "" || strings.ContainsAny(leader, "/@?#") || len(leader) > 255 {
		p.stale++
		if len(p.addrs) > 1 && p.stale >= staleAnswers {
			p.stale = 0
			p.cur = (p.cur + 1) % len(p.addrs)
			p.failovers.Add(1)
		}
		return
	}
	p.stale = 0
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
	err       error
	addr      string
	connected bool // a connection was made: the vault may have read the request
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
		n, missed := len(c.addrs), c.missed
		c.mu.Unlock()
		if n < 2 {
			// A single vault: a request that never got a connection (a
			// vault restarting, or so loaded that the TLS handshake timed
			// out) is sent again a few times, waiting a second more each
			// time; any other failure is for the caller's own retries.
			if e.connected || attempt >= unconnectedAttempts {
				return 0, false
			}
			return time.Duration(attempt) * time.Second, true
		}
		if missed < n {
			return 0, true // the next address has not failed yet
		}
	default:
		return 0, false
	}
	return min(time.Duration(attempt)*failoverStep, failoverMaxWait), true
}
