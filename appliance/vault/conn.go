package vault

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"vaultnode/internal/bufconn"
	"vaultnode/internal/clock"
	"vaultnode/internal/wire"
)

// Connection caps. Every accepted connection counts as unauthenticated
// (per source address and in all) until its TLS handshake shows a client
// certificate; then it counts against that computer instead. A connection
// over its cap is closed at once (unauthenticated) or fails its handshake
// (too many with one certificate); either way it holds nothing.

var errConnCap = errors.New("connection cap reached")

type connCaps struct {
	lim *Limits
	log *zap.Logger

	// Bytes read from and written to the connections, TLS included: what
	// crossed the network (the agent API's /metrics series).
	read, written atomic.Uint64

	mu       sync.Mutex
	unauth   int
	byAddr   map[string]int // unauthenticated connections per source address
	computer map[string]int // connections per certificate (computer id)
	open     int            // connections accepted and not closed
}

func newConnCaps(lim *Limits, log *zap.Logger) *connCaps {
	return &connCaps{lim: lim, log: log, byAddr: map[string]int{}, computer: map[string]int{}}
}

// listener wraps ln: connections over the unauthenticated caps are closed
// as they are accepted.
func (cc *connCaps) listener(ln net.Listener) net.Listener { return &capListener{Listener: ln, cc: cc} }

type capListener struct {
	net.Listener
	cc *connCaps
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := hostOf(c.RemoteAddr())
		if !l.cc.admit(addr) {
			c.Close()
			continue
		}
		return &capConn{Conn: c, cc: l.cc, addr: addr}, nil
	}
}

func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	h, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return h
}

func (cc *connCaps) admit(addr string) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.unauth >= cc.lim.UnauthTotal || cc.byAddr[addr] >= cc.lim.UnauthPerAddr {
		cc.log.Warn("connection refused: too many connections without a certificate",
			zap.String("addr", addr), zap.Int("from_addr", cc.byAddr[addr]), zap.Int("total", cc.unauth))
		return false
	}
	cc.unauth++
	cc.byAddr[addr]++
	cc.open++
	return true
}

// bufListener reads its connections through a buffer (bufconn), under
// the TLS that http.Server runs over them.
// The bytes read from them are added to read (when not nil).
type bufListener struct {
	net.Listener
	read *atomic.Uint64
}

func (l bufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return bufconn.NewCounting(c, l.read), nil
}

// capConn is an accepted connection; it gives its count back once closed.
type capConn struct {
	net.Conn
	cc       *connCaps
	addr     string
	mu       sync.Mutex
	computer string // "" while unauthenticated
	closed   bool
}

// authenticate moves c from the unauthenticated counts to computer's,
// unless computer is at its cap.
func (c *capConn) authenticate(computer string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.computer != "" {
		return nil
	}
	cc := c.cc
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.computer[computer] >= cc.lim.ConnsPerComputer {
		cc.log.Warn("connection refused: too many connections with one certificate",
			zap.String("computer", computer), zap.String("addr", c.addr), zap.Int("open", cc.computer[computer]))
		return fmt.Errorf("%w: computer %s already has %d connections", errConnCap, computer, cc.computer[computer])
	}
	cc.computer[computer]++
	cc.dropUnauthLocked(c.addr)
	c.computer = computer
	return nil
}

func (cc *connCaps) dropUnauthLocked(addr string) {
	cc.unauth--
	if cc.byAddr[addr]--; cc.byAddr[addr] <= 0 {
		delete(cc.byAddr, addr)
	}
}

// SyscallConn is the TCP connection's (capConn reads it as it is): through
// it bufconn waits for an idle connection's next bytes without holding a
// buffer.
func (c *capConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("the connection has no descriptor")
	}
	return sc.SyscallConn()
}

// Write counts what it wrote (reads are counted by bufconn, which reads
// the descriptor itself).
func (c *capConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.cc.written.Add(uint64(n))
	return n, err
}

func (c *capConn) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		cc := c.cc
		cc.mu.Lock()
		if c.computer == "" {
			cc.dropUnauthLocked(c.addr)
		} else if cc.computer[c.computer]--; cc.computer[c.computer] <= 0 {
			delete(cc.computer, c.computer)
		}
		cc.open--
		cc.mu.Unlock()
	}
	c.mu.Unlock()
	return c.Conn.Close()
}

// register adds the connections' series to reg, named vaultnode_NAME_...:
// bytes received and sent, TLS included, and connections open.
func (cc *connCaps) register(reg prometheus.Registerer, name string) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "vaultnode_" + name + "_received_bytes_total",
			Help: "Bytes read from the connections, TLS included (what crossed the network)."},
			func() float64 { return float64(cc.read.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "vaultnode_" + name + "_sent_bytes_total",
			Help: "Bytes written to the connections, TLS included."},
			func() float64 { return float64(cc.written.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vaultnode_" + name + "_connections",
			Help: "Connections accepted and not yet closed."},
			func() float64 {
				cc.mu.Lock()
				defer cc.mu.Unlock()
				return float64(cc.open)
			}))
}

// counts reports the open connections: unauthenticated, and with
// computer's certificate.
func (cc *connCaps) counts(computer string) (unauth, withCert int) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.unauth, cc.computer[computer]
}

// tlsConfig returns base with a per-connection hook that counts the
// connection against its certificate's computer once the handshake has
// verified it.
func (cc *connCaps) tlsConfig(base *tls.Config) *tls.Config {
	conf := base.Clone()
	conf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		hc := hello.Conn
		if u, ok := hc.(interface{ NetConn() net.Conn }); ok { // bufconn
			hc = u.NetConn()
		}
		c, ok := hc.(*capConn)
		if !ok {
			return nil, nil
		}
		per := base.Clone()
		per.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil
			}
			return c.authenticate(cs.PeerCertificates[0].Subject.CommonName)
		}
		return per, nil
	}
	return conf
}

// enrollLimiter rate-limits enrolment attempts per source address and in
// all. Limiters of addresses that are back to a full bucket are dropped
// when the table is full.
type enrollLimiter struct {
	clk     clock.Clock
	perAddr rate.Limit
	burst   int
	total   *rate.Limiter

	mu    sync.Mutex
	addrs map[string]*rate.Limiter
}

const maxEnrollAddrs = 4096

func newEnrollLimiter(lim *Limits, clk clock.Clock) *enrollLimiter {
	return &enrollLimiter{clk: clk, perAddr: rate.Limit(float64(lim.EnrollPerAddr) / 60), burst: lim.EnrollPerAddr,
		total: rate.NewLimiter(rate.Limit(float64(lim.EnrollTotal)/60), lim.EnrollTotal), addrs: map[string]*rate.Limiter{}}
}

func (e *enrollLimiter) allow(remote string) error {
	addr, _, err := net.SplitHostPort(remote)
	if err != nil {
		addr = remote
	}
	now := e.clk.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.addrs[addr]
	if l == nil {
		if len(e.addrs) >= maxEnrollAddrs {
			for a, al := range e.addrs {
				if al.TokensAt(now) >= float64(e.burst) {
					delete(e.addrs, a)
				}
			}
		}
		l = rate.NewLimiter(e.perAddr, e.burst)
		if len(e.addrs) < maxEnrollAddrs {
			e.addrs[addr] = l
		}
	}
	if !l.AllowN(now, 1) {
		return enrollBusy(l.TokensAt(now), float64(e.perAddr))
	}
	if !e.total.AllowN(now, 1) {
		return enrollBusy(e.total.TokensAt(now), float64(e.total.Limit()))
	}
	return nil
}

func enrollBusy(tokens, perSec float64) error {
	wait := time.Second
	if perSec > 0 && tokens < 1 {
		wait = time.Duration((1 - tokens) / perSec * float64(time.Second))
	}
	return &apiError{status: http.StatusTooManyRequests, code: wire.CodeBusy, retryAfter: wait,
		msg: "too many enrolment attempts: wait a minute and enrol again"}
}
