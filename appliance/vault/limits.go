package vault

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"vaultnode/internal/clock"
	"vaultnode/internal/wire"
)

// Limits keep one tenant from starving the others and bound the vault's
// memory whatever the agents send (docs/protocol.md, "Fairness" and
// "Memory bounds"). The zero value of a field takes its default.
type Limits struct {
	// ReadIdle cuts off a request whose body has not brought
	// ProgressBytes for this long; WriteIdle an answer the client has not
	// taken AnswerBytes of for this long. A body shorter than
	// ProgressBytes must arrive whole within ReadIdle. AnswerBytes is
	// larger: each piece of an answer is one HTTP/2 DATA frame for the
	// vault to write, and a download in 16 KiB frames cost the vault a
	// frame, a deadline and two TLS records (two system calls) every
	// 16 KiB. It is 64 KiB, not the agent's 1 MiB: it is also the least
	// a client must take every WriteIdle (about 17 kbit/s), and a restore
	// shaped into a shared QoS class, or over a thin link, may be slow
	// (256 KiB would cut off anything under about 70 kbit/s).
	ReadIdle      time.Duration // 30s
	WriteIdle     time.Duration // 30s
	ProgressBytes int64         // 16 KiB
	AnswerBytes   int64         // 64 KiB
	// RequestMax caps a whole request, body and answer, whatever its
	// progress; StreamMax does so for uploads and downloads.
	RequestMax time.Duration // 1m
	StreamMax  time.Duration // 15m

	// Upload (and commit) and download slots: at most Global at once,
	// at most PerCompany and PerComputer per tenant, and never more than
	// a company's share of Global (Global divided by the companies
	// holding or waiting for slots). A request waits SlotWait for one,
	// then gets busy (503) with a Retry-After.
	Uploads   SlotLimits // 4 / 2 / 2
	Downloads SlotLimits // 8 / 4 / 4
	SlotWait  time.Duration
	// ReadAheadBytes bounds the chunks downloads hold, read and not yet
	// written, all downloads together (GetChunks).
	ReadAheadBytes int64 // 16 MiB

	// Connections: at most ConnsPerComputer with one computer's
	// certificate; at most UnauthPerAddr from one address (and
	// UnauthTotal in all) that have no certificate, or have not finished
	// their handshake.
	ConnsPerComputer int // 8
	UnauthPerAddr    int // 16
	UnauthTotal      int // 256
	// The portal's listener: at most PortalPerAddr connections from one
	// address and PortalTotal in all (a browser keeps a few; many people
	// behind one company's NAT share an address).
	PortalPerAddr int // 64
	PortalTotal   int // 1024

	// Enrolment attempts: EnrollPerAddr per minute from one address (a
	// burst of as many), EnrollTotal per minute in all.
	EnrollPerAddr int // 10
	EnrollTotal   int // 120
}

// SlotLimits bound one kind of request.
type SlotLimits struct{ Global, PerCompany, PerComputer int }

// DefaultLimits are the limits of a vault whose Options leave them zero.
func DefaultLimits() Limits {
	return Limits{ReadIdle: 30 * time.Second, WriteIdle: 30 * time.Second, ProgressBytes: 16 << 10, AnswerBytes: 64 << 10,
		RequestMax: time.Minute, StreamMax: 15 * time.Minute,
		Uploads: SlotLimits{4, 2, 2}, Downloads: SlotLimits{8, 4, 4}, SlotWait: 30 * time.Second,
		ReadAheadBytes: 16 << 20, ConnsPerComputer: 8, UnauthPerAddr: 16, UnauthTotal: 256, PortalPerAddr: 64, PortalTotal: 1024,
		EnrollPerAddr: 10, EnrollTotal: 120}
}

// withDefaults fills the zero fields of l.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	dur := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	num := func(p *int, v int) {
		if *p <= 0 {
			*p = v
		}
	}
	dur(&l.ReadIdle, d.ReadIdle)
	dur(&l.WriteIdle, d.WriteIdle)
	if l.ProgressBytes <= 0 {
		l.ProgressBytes = d.ProgressBytes
	}
	if l.AnswerBytes <= 0 {
		l.AnswerBytes = d.AnswerBytes
	}
	dur(&l.RequestMax, d.RequestMax)
	dur(&l.StreamMax, d.StreamMax)
	dur(&l.SlotWait, d.SlotWait)
	if l.ReadAheadBytes <= 0 {
		l.ReadAheadBytes = d.ReadAheadBytes
	}
	for _, s := range []struct{ p, d *SlotLimits }{{&l.Uploads, &d.Uploads}, {&l.Downloads, &d.Downloads}} {
		num(&s.p.Global, s.d.Global)
		num(&s.p.PerCompany, min(s.d.PerCompany, s.p.Global))
		num(&s.p.PerComputer, min(s.d.PerComputer, s.p.PerCompany))
	}
	num(&l.ConnsPerComputer, d.ConnsPerComputer)
	num(&l.UnauthPerAddr, d.UnauthPerAddr)
	num(&l.UnauthTotal, d.UnauthTotal)
	num(&l.PortalPerAddr, d.PortalPerAddr)
	num(&l.PortalTotal, d.PortalTotal)
	num(&l.EnrollPerAddr, d.EnrollPerAddr)
	num(&l.EnrollTotal, d.EnrollTotal)
	return l
}

// errBusy answers a request that found no slot in time.
func errBusy(what string, after time.Duration) error {
	return &apiError{status: http.StatusServiceUnavailable, code: wire.CodeBusy, retryAfter: after,
		msg: fmt.Sprintf("the vault is busy with other %s of your company or computer: retry in a moment", what)}
}

// slotPool hands out the slots of one kind of request fairly between
// companies and computers.
type slotPool struct {
	what string
	lim  SlotLimits
	clk  clock.Clock
	wait time.Duration

	mu       sync.Mutex
	used     int
	company  map[string]int // slots held
	computer map[string]int
	waiting  map[string]int // waiters per company
	queue    []*slotWaiter  // FIFO; a waiter that may not take a slot yet does not block the others
}

type slotWaiter struct {
	company, computer string
	ready             chan struct{} // closed when granted
	granted           bool
}

func newSlotPool(what string, lim SlotLimits, wait time.Duration, clk clock.Clock) *slotPool {
	return &slotPool{what: what, lim: lim, clk: clk, wait: wait,
		company: map[string]int{}, computer: map[string]int{}, waiting: map[string]int{}}
}

// share is the most slots company may hold now: Global divided by the
// companies holding or waiting for slots (company included).
func (p *slotPool) share(company string) int {
	n := len(p.company)
	for c := range p.waiting {
		if p.company[c] == 0 {
			n++
		}
	}
	if p.company[company] == 0 && p.waiting[company] == 0 {
		n++
	}
	return max(1, p.lim.Global/max(1, n))
}

func (p *slotPool) canTake(company, computer string) bool {
	held := p.company[company]
	return p.used < p.lim.Global && held < p.lim.PerCompany && p.computer[computer] < p.lim.PerComputer &&
		held < p.share(company)
}

func (p *slotPool) takeLocked(company, computer string) {
	p.used++
	p.company[company]++
	p.computer[computer]++
}

// acquire waits up to the pool's wait for a slot. The caller must call
// the returned release exactly once.
func (p *slotPool) acquire(ctx context.Context, company, computer string) (release func(), err error) {
	p.mu.Lock()
	if len(p.queue) == 0 && p.canTake(company, computer) {
		p.takeLocked(company, computer)
		p.mu.Unlock()
		return func() { p.release(company, computer) }, nil
	}
	w := &slotWaiter{company: company, computer: computer, ready: make(chan struct{})}
	p.queue = append(p.queue, w)
	p.waiting[company]++
	p.grantLocked() // the queue may hold only waiters that cannot take a slot
	p.mu.Unlock()

	t := p.clk.NewTimer(p.wait)
	defer t.Stop()
	select {
	case <-w.ready:
		return func() { p.release(company, computer) }, nil
	case <-ctx.Done(): // the client left, or the request's deadline passed: not the vault's fault
		err = &apiError{status: http.StatusServiceUnavailable, code: wire.CodeBusy, retryAfter: p.retryAfter(),
			msg: fmt.Sprintf("the request ended while waiting for one of the vault's %s slots (%v): retry", p.what, ctx.Err())}
	case <-t.C():
		err = errBusy(p.what, p.retryAfter())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if w.granted { // granted while giving up: keep it
		return func() { p.release(company, computer) }, nil
	}
	p.dropLocked(w)
	p.grantLocked() // one company fewer may raise the others' share
	return nil, err
}

func (p *slotPool) retryAfter() time.Duration { return 2 * time.Second }

func (p *slotPool) dropLocked(w *slotWaiter) {
	for i, q := range p.queue {
		if q == w {
			p.queue = append(p.queue[:i], p.queue[i+1:]...)
			break
		}
	}
	if p.waiting[w.company]--; p.waiting[w.company] <= 0 {
		delete(p.waiting, w.company)
	}
}

// grantLocked hands free slots to the waiters that may take them: to the
// computer that holds the fewest, the oldest waiter first among equals.
// Oldest first alone let one computer's many requests keep another
// computer of its company waiting: its own requests queue again as soon
// as they end, and a waiter that gives up after SlotWait goes to the end.
func (p *slotPool) grantLocked() {
	for p.used < p.lim.Global {
		best := -1
		for i, w := range p.queue {
			if p.canTake(w.company, w.computer) && (best < 0 || p.computer[w.computer] < p.computer[p.queue[best].computer]) {
				best = i
			}
		}
		if best < 0 {
			return
		}
		w := p.queue[best]
		p.dropLocked(w)
		p.takeLocked(w.company, w.computer)
		w.granted = true
		close(w.ready)
	}
}

func (p *slotPool) release(company, computer string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.used--
	if p.company[company]--; p.company[company] <= 0 {
		delete(p.company, company)
	}
	if p.computer[computer]--; p.computer[computer] <= 0 {
		delete(p.computer, computer)
	}
	p.grantLocked()
}

// held reports the slots in use (for tests and status).
func (p *slotPool) held() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.used
}

// setRetryAfter adds the Retry-After header of a busy answer.
func setRetryAfter(w http.ResponseWriter, d time.Duration) {
	if d > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((d+time.Second-1)/time.Second)))
	}
}

// maxStreams bounds the concurrent requests of one HTTP/2 connection.
const maxStreams = 32

// connRecvWindow and streamRecvWindow are the HTTP/2 receive windows of an
// agent connection: how much request body it may send ahead of the
// handlers' reads, buffered by vaultd. At Go's default of 1 MiB a
// connection, an agent's two uploads and its lack queries waited for
// window updates most of an initial backup (docs/performance.md, "Lack
// queries in flight"). Bounded per connection, so per computer by
// Limits.ConnsPerComputer (docs/protocol.md, Memory bounds).
const (
	connRecvWindow   = 4 << 20
	streamRecvWindow = 2 << 20
	// readFrameSize is the largest HTTP/2 frame an agent may send: the
	// protocol's 16 KiB default made an upload about 14,000 frames of
	// 230 MB, each read, checked and handed to the handler's pipe in
	// turn; with 256 KiB frames the vault's CPU for an initial backup
	// fell about 6 % (docs/performance.md, "Chunker, frames, readers' buffers"). Each
	// connection's frame reader holds one frame.
	readFrameSize = 256 << 10
)

// maxSessionsPerComputer bounds the open sessions of one computer: opening
// one more forgets its least recently used.
const maxSessionsPerComputer = 64

// capSessionsLocked makes room for one more session of computer. v.smu is
// held.
func (v *Vault) capSessionsLocked(computer string) {
	n := 0
	var oldest *session
	var oldestUsed time.Time
	for _, s := range v.sessions {
		if s.computer != computer {
			continue
		}
		n++
		s.mu.Lock()
		used := s.lastUsed
		s.mu.Unlock()
		if oldest == nil || used.Before(oldestUsed) {
			oldest, oldestUsed = s, used
		}
	}
	if n >= maxSessionsPerComputer && oldest != nil {
		delete(v.sessions, oldest.id)
		v.retireLocked(oldest) // a running collection keeps sparing what it protects
	}
}

// initLimits sets up the vault's slots, connection caps and enrolment
// rate from lim (zero fields take their defaults).
func (v *Vault) initLimits(lim Limits) {
	v.limits = lim.withDefaults()
	v.uploads = newSlotPool("uploads", v.limits.Uploads, v.limits.SlotWait, v.clk)
	v.downloads = newSlotPool("downloads", v.limits.Downloads, v.limits.SlotWait, v.clk)
	v.readAhead = semaphore.NewWeighted(v.limits.ReadAheadBytes)
	v.conns = newConnCaps(&v.limits, v.log.Named("limits"))
	v.enrollRate = newEnrollLimiter(&v.limits, v.clk)
}
