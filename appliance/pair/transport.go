package pair

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"

	"vaultnode/appliance/pki"
	"vaultnode/internal/deadpeer"
)

// One pair address carries raft and replication, over mutual TLS with
// certificates of the vault's CA that name a member (MemberOrg). After the
// handshake the dialer sends one byte: 'R' for raft's stream, 'C' for a
// copy stream (copyconn.go: chunk copies, lack), 'D' for a raw copy
// stream (rawcopy.go: the same beneath TLS), 'H' for HTTP/2 (join,
// status).
const (
	streamRaft = 'R'
	streamHTTP = 'H'
)

// MemberOrg is the organization of every member certificate. An agent's
// certificate names its company, which can never hold a space, so no
// agent passes for a member.
const MemberOrg = pki.MemberOrg

// ErrNotMember is a TLS peer whose certificate is not a member's.
var ErrNotMember = errors.New("peer is not a member of this pair")

// checkMember accepts a verified chain whose leaf names MemberOrg.
func checkMember(cs tls.ConnectionState) error {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return fmt.Errorf("%w: no verified certificate", ErrNotMember)
	}
	leaf := cs.VerifiedChains[0][0]
	for _, o := range leaf.Subject.Organization {
		if o == MemberOrg {
			return nil
		}
	}
	return fmt.Errorf("%w: certificate of %q", ErrNotMember, leaf.Subject.CommonName)
}

// MemberTLS is the TLS configuration of a member: its certificate, the
// vault's CA, and both sides checked to be members.
func MemberTLS(cert tls.Certificate, ca *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      ca,
		ClientCAs:    ca,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ServerName:   MemberServerName,
		NextProtos:   []string{"h2"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return checkMember(cs)
		},
	}
}

// MemberServerName is the DNS name in every member certificate.
const MemberServerName = pki.MemberName

// mux accepts TLS connections on the pair address and hands each to raft
// or to the HTTP server by its first byte.
type mux struct {
	ln   net.Listener
	conf *tls.Config
	log  *zap.Logger

	raft, http, copy chan net.Conn
	done             chan struct{}
	closeOnce        sync.Once
	wg               sync.WaitGroup
}

func newMux(ln net.Listener, conf *tls.Config, log *zap.Logger) *mux {
	m := &mux{ln: ln, conf: conf, log: log, raft: make(chan net.Conn), http: make(chan net.Conn), copy: make(chan net.Conn), done: make(chan struct{})}
	m.wg.Add(1)
	go m.serve()
	return m
}

func (m *mux) serve() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			m.log.Warn("pair listener stopped", zap.Error(err))
			return
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.route(c)
		}()
	}
}

func (m *mux) route(c net.Conn) {
	// Reads are buffered under TLS: a copy arrives as 16 KiB records, and
	// one read of many records costs one system call instead of one each.
	// TLS reads whole records only (recordReader): after a raw copy
	// stream's switch, what follows is still in the buffer.
	rr := &recordReader{r: bufio.NewReaderSize(c, 256<<10)}
	tc := tls.Server(&bufConn{Conn: c, r: rr}, m.conf)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if err := tc.Handshake(); err != nil {
		m.log.Debug("pair connection refused", zap.String("from", c.RemoteAddr().String()), zap.Error(err))
		c.Close()
		return
	}
	if _, err := io.ReadFull(tc, b[:]); err != nil {
		c.Close()
		return
	}
	var (
		ch   chan net.Conn
		conn net.Conn = tc
	)
	if b[0] == streamRawCopy {
		rc, err := acceptRaw(tc, c, rr)
		if err != nil {
			m.log.Debug("raw copy stream refused", zap.String("from", c.RemoteAddr().String()), zap.Error(err))
			c.Close()
			return
		}
		conn = rc
	}
	c.SetDeadline(time.Time{})
	switch b[0] {
	case streamRaft:
		ch = m.raft
	case streamHTTP:
		ch = m.http
	case streamCopy, streamRawCopy:
		ch = m.copy
	default:
		c.Close()
		return
	}
	select {
	case ch <- conn:
	case <-m.done:
		c.Close()
	}
}

func (m *mux) close() {
	m.closeOnce.Do(func() {
		close(m.done)
		m.ln.Close()
	})
	m.wg.Wait()
}

// chanListener is a net.Listener fed by the mux.
type chanListener struct {
	m  *mux
	ch chan net.Conn
}

func (l chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.m.done:
		return nil, net.ErrClosed
	}
}
func (l chanListener) Close() error   { return nil }
func (l chanListener) Addr() net.Addr { return l.m.ln.Addr() }

// streamLayer is raft's StreamLayer over the mux.
type streamLayer struct {
	chanListener
	conf      *tls.Config
	advertise net.Addr
}

func (s *streamLayer) Addr() net.Addr { return s.advertise }

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return dialMember(context.Background(), string(addr), timeout, s.conf, streamRaft)
}

func dialMember(ctx context.Context, addr string, timeout time.Duration, conf *tls.Config, kind byte) (*tls.Conn, error) {
	tc, _, err := dialBuffered(ctx, addr, timeout, conf, kind, false)
	return tc, err
}

// dialBuffered is dialMember; with bufWrites, the TLS records are
// gathered under the TLS connection and sent when 256 KiB are there or
// at Flush of the returned bufConn (a copy stream flushes at each commit):
// a large write costs one system call per 256 KiB, not one per 16 KiB
// record.
func dialBuffered(ctx context.Context, addr string, timeout time.Duration, conf *tls.Config, kind byte, bufWrites bool) (*tls.Conn, *bufConn, error) {
	// A member that died without closing its connections (power cut)
	// is noticed in seconds: sent data unacknowledged for 5 s, or an idle
	// connection's keepalives unanswered for 2 + 3 x 1 s, ends it.
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	raw, err := deadpeer.Dialer(timeout, 5*time.Second, 2*time.Second).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("reach member %s: %w", addr, err)
	}
	bc := &bufConn{Conn: raw, r: bufio.NewReaderSize(raw, 64<<10)}
	if kind == streamRawCopy {
		// TLS reads whole records only: what follows the member's
		// answer is the raw stream's.
		bc.r = &recordReader{r: bufio.NewReaderSize(raw, 64<<10)}
	}
	tc := tls.Client(bc, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, nil, fmt.Errorf("reach member %s: %w", addr, err)
	}
	if bufWrites {
		// Only now: the handshake's writes must go out as they are made.
		bc.w = bufio.NewWriterSize(raw, 256<<10)
	}
	tc.SetWriteDeadline(time.Now().Add(timeout))
	_, err = tc.Write([]byte{kind})
	if err == nil {
		err = bc.Flush()
	}
	if err != nil {
		tc.Close()
		return nil, nil, fmt.Errorf("reach member %s: %w", addr, err)
	}
	tc.SetWriteDeadline(time.Time{})
	return tc, bc, nil
}

// bufConn buffers reads, and writes when w is set (Flush sends them),
// under a TLS connection.
type bufConn struct {
	net.Conn
	r io.Reader
	w *bufio.Writer
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *bufConn) Write(p []byte) (int, error) {
	if c.w == nil {
		return c.Conn.Write(p)
	}
	return c.w.Write(p)
}

// Flush sends the writes gathered so far.
func (c *bufConn) Flush() error {
	if c.w == nil {
		return nil
	}
	return c.w.Flush()
}

// memberClient is an HTTP/2 client to other members' pair addresses.
func memberClient(conf *tls.Config) *http.Client {
	t := &http.Transport{
		ForceAttemptHTTP2: true,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialMember(ctx, addr, 5*time.Second, conf, streamHTTP)
		},
		IdleConnTimeout:       time.Minute,
		ResponseHeaderTimeout: 2 * time.Minute,
	}
	t.HTTP2 = &http.HTTP2Config{SendPingTimeout: 5 * time.Second, PingTimeout: 5 * time.Second}
	return &http.Client{Transport: t}
}
