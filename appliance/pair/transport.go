package pair

import (
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
// handshake the dialer sends one byte: 'R' for raft's stream, 'H' for
// HTTP/2 (replication, join, status).
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

	raft, http chan net.Conn
	done       chan struct{}
	closeOnce  sync.Once
	wg         sync.WaitGroup
}

func newMux(ln net.Listener, conf *tls.Config, log *zap.Logger) *mux {
	m := &mux{ln: ln, conf: conf, log: log, raft: make(chan net.Conn), http: make(chan net.Conn), done: make(chan struct{})}
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
	tc := tls.Server(c, m.conf)
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
	c.SetDeadline(time.Time{})
	var ch chan net.Conn
	switch b[0] {
	case streamRaft:
		ch = m.raft
	case streamHTTP:
		ch = m.http
	default:
		c.Close()
		return
	}
	select {
	case ch <- tc:
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
	// A member that died without closing its connections (power cut)
	// is noticed in seconds: sent data unacknowledged for 5 s, or an idle
	// connection's keepalives unanswered for 2 + 3 x 1 s, ends it.
	d := &tls.Dialer{NetDialer: deadpeer.Dialer(timeout, 5*time.Second, 2*time.Second), Config: conf}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("reach member %s: %w", addr, err)
	}
	tc := c.(*tls.Conn)
	tc.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := tc.Write([]byte{kind}); err != nil {
		tc.Close()
		return nil, fmt.Errorf("reach member %s: %w", addr, err)
	}
	tc.SetWriteDeadline(time.Time{})
	return tc, nil
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
