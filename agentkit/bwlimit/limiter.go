// Package bwlimit limits the bandwidth the agent sends with, per computer,
// following a bandwidth.Profile (internal/bandwidth), shared fairly among
// concurrent streams and adjustable while running.
//
// One Limiter serves the whole computer. Every stream (an HTTP request body,
// a connection) takes bytes from it in small quanta, and waiting streams are
// served in turn, so each active stream gets an equal share and a stream
// that sends less leaves its share to the others. The token bucket is driven
// by a clock.Clock, so tests can check the allowance exactly.
package bwlimit

import (
	"context"
	"io"
	"math"
	"net"
	"net/http"
	"sync"
	"time"

	"vaultnode/internal/bandwidth"
	"vaultnode/internal/clock"
)

// quantum is the most a stream takes at a time at rate r: 20 ms of traffic,
// between 256 bytes and 64 KiB. Small quanta make the sharing fine-grained;
// the bucket holds two (see bucketSize).
func quantum(r bandwidth.Rate) int {
	if r == bandwidth.Unlimited {
		return 64 << 10
	}
	q := int(r / 50)
	return max(256, min(q, 64<<10))
}

// bucketSize is the most tokens the bucket holds while no stream waits:
// 250 ms of traffic (at least two quanta), so a sender descheduled for a
// moment on a loaded machine does not lose its allowance, while an idle
// limiter allows a burst of at most a quarter second of traffic.
func bucketSize(r bandwidth.Rate) int { return max(2*quantum(r), int(r/4)) }

// Limiter is the bandwidth limit of one computer. It is safe for concurrent
// use; create it with New.
type Limiter struct {
	clk clock.Clock

	mu      sync.Mutex
	profile bandwidth.Profile
	rate    bandwidth.Rate // rate at last
	until   time.Time      // when rate may change (zero: never)
	tokens  float64
	last    time.Time
	queue   []*waiter     // every waiting request, the active one included
	active  *waiter       // the request allowed to wait for tokens
	vtime   float64       // start tag of the last request served
	changed chan struct{} // closed and replaced by SetProfile
	sent    int64
	// the head waiter's sleep, for tests
	sleeping bool
	wakeAt   time.Time
}

// stream is one fair-queuing flow of the limiter (a writer, reader or
// connection of its own, or every stream of a Flow).
// Streams are served by start-time fair queuing: a request's tag is where the
// stream's previous request ended in "bytes served" (or the current virtual
// time if the stream was idle), and the smallest tag goes next. Busy streams
// thus get equal bytes whatever their write sizes, and an idle stream banks
// no credit.
type stream struct {
	vfinish float64
}

type waiter struct {
	n       int
	s       *stream
	tag     float64
	turn    chan struct{} // closed when the waiter becomes the active one
	granted chan struct{} // closed when its bytes are granted
}

// New returns a limiter applying p.
func New(p bandwidth.Profile, clk clock.Clock) *Limiter {
	now := clk.Now()
	l := &Limiter{clk: clk, profile: p, last: now, changed: make(chan struct{})}
	l.rate, l.until = p.RateUntil(now)
	return l
}

// SetProfile replaces the profile at once; waiting streams re-evaluate.
func (l *Limiter) SetProfile(p bandwidth.Profile) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refillLocked(l.clk.Now())
	l.profile = p
	l.rate, l.until = p.RateUntil(l.last)
	if l.rate != bandwidth.Unlimited {
		l.tokens = min(l.tokens, float64(bucketSize(l.rate)))
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

// Profile returns the profile in force.
func (l *Limiter) Profile() bandwidth.Profile {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.profile
}

// Stats describes the limiter.
type Stats struct {
	Rate    bandwidth.Rate // the rate in force now
	Sent    int64          // bytes granted so far
	Waiting int            // streams waiting for their turn
}

// Stats returns the current figures.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refillLocked(l.clk.Now())
	return Stats{Rate: l.rate, Sent: l.sent, Waiting: len(l.queue)}
}

// refillLocked adds the tokens earned since last, segment by segment across
// profile changes.
func (l *Limiter) refillLocked(now time.Time) {
	for l.last.Before(now) {
		if !l.until.IsZero() && !l.last.Before(l.until) {
			was := l.rate
			l.rate, l.until = l.profile.RateUntil(l.last)
			if was == bandwidth.Unlimited && l.rate != bandwidth.Unlimited {
				l.tokens = 0
			}
		}
		end := now
		if !l.until.IsZero() && l.until.Before(end) {
			end = l.until
		}
		if l.rate != bandwidth.Unlimited {
			l.tokens += float64(l.rate) * end.Sub(l.last).Seconds()
			c := float64(bucketSize(l.rate))
			if len(l.queue) > 0 {
				// Streams are waiting: what accrued while the active one
				// was woken late is owed to them, up to a second's worth.
				c = max(c, float64(l.rate))
			}
			if l.tokens > c {
				l.tokens = c
			}
		}
		l.last = end
	}
	if !l.until.IsZero() && !l.last.Before(l.until) {
		l.rate, l.until = l.profile.RateUntil(l.last)
	}
}

// Quantum returns the largest piece a stream should send at once now.
func (l *Limiter) Quantum() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refillLocked(l.clk.Now())
	return quantum(l.rate)
}

// Wait blocks until n bytes may be sent, taking them in quanta and in turn
// with the other streams. It returns ctx's error if ctx ends first.
func (l *Limiter) Wait(ctx context.Context, n int) error {
	return l.wait(ctx, &stream{}, n)
}

func (l *Limiter) wait(ctx context.Context, s *stream, n int) error {
	for n > 0 {
		q := min(n, l.Quantum())
		if err := l.take(ctx, s, q); err != nil {
			return err
		}
		n -= q
	}
	return nil
}

// take waits until n bytes (at most about a quantum) are granted to stream
// s. Requests are granted in order of their tags as tokens allow; one
// waiting goroutine at a time, the active one, keeps time for all of them:
// it sleeps until the next grant is due, grants the request with the
// smallest tag (its own or another's), and hands the role on when its own
// request is granted.
func (l *Limiter) take(ctx context.Context, s *stream, n int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	l.refillLocked(l.clk.Now())
	if l.rate == bandwidth.Unlimited && len(l.queue) == 0 {
		l.sent += int64(n)
		l.mu.Unlock()
		return nil
	}
	// The tag is fixed on arrival and the flow's finish advances at once, so
	// several requests of one flow in the queue follow each other.
	w := &waiter{n: n, s: s, tag: math.Max(s.vfinish, l.vtime), turn: make(chan struct{}), granted: make(chan struct{})}
	s.vfinish = w.tag + float64(n)
	l.queue = append(l.queue, w)
	if l.active == nil {
		l.activateLocked()
	}
	l.mu.Unlock()

	select {
	case <-w.granted:
		return nil
	case <-w.turn:
	case <-ctx.Done():
		return l.leave(w, ctx.Err())
	}
	for {
		l.mu.Lock()
		now := l.clk.Now()
		l.refillLocked(now)
		best := l.bestLocked()
		need := math.Min(float64(best.n), float64(quantum(l.rate)))
		if l.rate == bandwidth.Unlimited || l.tokens >= need-1e-9 {
			l.grantLocked(best)
			if best == w {
				l.sleeping = false
				l.active = nil
				l.activateLocked()
				l.mu.Unlock()
				return nil
			}
			l.mu.Unlock()
			continue
		}
		wait := time.Duration(math.Ceil((need - l.tokens) / float64(l.rate) * float64(time.Second)))
		if wait < time.Nanosecond {
			wait = time.Nanosecond
		}
		if !l.until.IsZero() && l.until.Sub(now) < wait {
			wait = l.until.Sub(now)
		}
		changed := l.changed
		l.sleeping, l.wakeAt = true, now.Add(wait)
		// A timer for the instant itself: a clock moved on meanwhile (a
		// test advancing a fake one) fires it at once rather than late,
		// and a waiter for the limiter to sleep past now is not left
		// waiting for ever.
		t := l.clk.NewTimerAt(l.wakeAt)
		l.mu.Unlock()

		select {
		case <-t.C():
		case <-changed:
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			return l.leave(w, ctx.Err())
		}
	}
}

// bestLocked returns the waiting request with the smallest tag (the
// earliest among equals). The queue is not empty.
func (l *Limiter) bestLocked() *waiter {
	best := l.queue[0]
	for _, w := range l.queue[1:] {
		if w.tag < best.tag {
			best = w
		}
	}
	return best
}

// grantLocked gives w its bytes and takes it out of the queue.
func (l *Limiter) grantLocked(w *waiter) {
	if l.rate != bandwidth.Unlimited {
		l.tokens -= float64(w.n) // may go below zero after a rate cut: repaid before the next grant
	}
	l.sent += int64(w.n)
	l.vtime = w.tag
	l.removeLocked(w)
	close(w.granted)
}

func (l *Limiter) removeLocked(w *waiter) {
	for i, x := range l.queue {
		if x == w {
			l.queue = append(l.queue[:i], l.queue[i+1:]...)
			return
		}
	}
}

// activateLocked makes the first waiting request the active one, if any.
func (l *Limiter) activateLocked() {
	if len(l.queue) == 0 {
		return
	}
	l.active = l.queue[0]
	close(l.active.turn)
}

// leave withdraws a request whose context ended. If it was granted in the
// meantime it counts as sent and leave returns nil.
func (l *Limiter) leave(w *waiter, err error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-w.granted:
		return nil
	default:
	}
	l.removeLocked(w)
	if l.active == w {
		l.sleeping = false
		l.active = nil
		l.activateLocked()
	}
	return err
}

// Flow groups streams that share one fair share: a configuration with four
// concurrent uploads gets as much as a configuration with one when each
// uses its own Flow. The Limiter's own Writer, Reader, Conn and Wait make a
// new flow for each stream.
type Flow struct {
	l *Limiter
	s *stream
}

// Flow returns a new flow of l.
func (l *Limiter) Flow() *Flow { return &Flow{l: l, s: &stream{}} }

// Wait is Limiter.Wait within the flow.
func (f *Flow) Wait(ctx context.Context, n int) error { return f.l.wait(ctx, f.s, n) }

// Writer is Limiter.Writer within the flow.
func (f *Flow) Writer(ctx context.Context, w io.Writer) io.Writer {
	return &writer{ctx: ctx, l: f.l, w: w, s: f.s}
}

// Reader is Limiter.Reader within the flow.
func (f *Flow) Reader(ctx context.Context, r io.Reader) io.Reader {
	return &reader{ctx: ctx, l: f.l, r: r, s: f.s}
}

// Conn is Limiter.Conn within the flow.
func (f *Flow) Conn(c net.Conn) net.Conn { return f.l.conn(c, f.s) }

// RoundTripper is Limiter.RoundTripper within the flow.
func (f *Flow) RoundTripper(rt http.RoundTripper) http.RoundTripper {
	return roundTripper{l: f.l, s: f.s, rt: rt}
}

// Writer returns w limited by l: each Write is sent in quanta as the limit
// allows. A Write returns ctx's error if ctx ends while waiting.
func (l *Limiter) Writer(ctx context.Context, w io.Writer) io.Writer {
	return &writer{ctx: ctx, l: l, w: w, s: &stream{}}
}

type writer struct {
	ctx context.Context
	l   *Limiter
	w   io.Writer
	s   *stream
}

func (w *writer) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		q := min(len(p)-done, w.l.Quantum())
		if err := w.l.take(w.ctx, w.s, q); err != nil {
			return done, err
		}
		n, err := w.w.Write(p[done : done+q])
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// Reader returns r limited by l: what a caller reads from it (an HTTP
// request body the transport is about to send) is released as the limit
// allows.
func (l *Limiter) Reader(ctx context.Context, r io.Reader) io.Reader {
	return &reader{ctx: ctx, l: l, r: r, s: &stream{}}
}

type reader struct {
	ctx context.Context
	l   *Limiter
	r   io.Reader
	s   *stream
}

func (r *reader) Read(p []byte) (int, error) {
	if q := r.l.Quantum(); len(p) > q {
		p = p[:q]
	}
	n, err := r.r.Read(p)
	if n > 0 {
		if werr := r.l.take(r.ctx, r.s, n); werr != nil {
			return 0, werr
		}
	}
	return n, err
}

// Conn returns c with its writes limited by l (reads are not). Closing it
// ends any wait.
func (l *Limiter) Conn(c net.Conn) net.Conn { return l.conn(c, &stream{}) }

func (l *Limiter) conn(c net.Conn, s *stream) net.Conn {
	ctx, cancel := context.WithCancel(context.Background())
	return &conn{Conn: c, cancel: cancel, w: &writer{ctx: ctx, l: l, w: c, s: s}}
}

type conn struct {
	net.Conn
	cancel context.CancelFunc
	w      *writer
}

func (c *conn) Write(p []byte) (int, error) { return c.w.Write(p) }

func (c *conn) Close() error {
	c.cancel()
	return c.Conn.Close()
}

// RoundTripper returns rt with every request body limited by l, under the
// request's context; each request body is its own stream.
func (l *Limiter) RoundTripper(rt http.RoundTripper) http.RoundTripper {
	return roundTripper{l: l, rt: rt}
}

type roundTripper struct {
	l  *Limiter
	s  *stream // nil: a new stream per request
	rt http.RoundTripper
}

func (t roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return t.rt.RoundTrip(req)
	}
	r := req.Clone(req.Context())
	s := t.s
	if s == nil {
		s = &stream{}
	}
	r.Body = readCloser{Reader: &reader{ctx: req.Context(), l: t.l, r: req.Body, s: s}, c: req.Body}
	return t.rt.RoundTrip(r)
}

type readCloser struct {
	io.Reader
	c io.Closer
}

func (r readCloser) Close() error { return r.c.Close() }
