package vault

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"vaultnode/internal/bufconn"
	"vaultnode/internal/clock"
	"vaultnode/internal/wire"
)

// acquireAsync runs acquire in a goroutine; its result comes on the channel.
func acquireAsync(p *slotPool, company, computer string) chan error {
	c := make(chan error, 1)
	go func() { // owner: the test, which reads c
		_, err := p.acquire(context.Background(), company, computer)
		c <- err
	}()
	return c
}

func waitQueued(t *testing.T, p *slotPool, n int) {
	t.Helper()
	for i := 0; i < 30000; i++ { // 30 s: a bound on a hang, not a speed
		p.mu.Lock()
		q := len(p.queue)
		p.mu.Unlock()
		if q == n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("queue never reached %d waiters", n)
}

// TestSlotsFair: a company that holds its share cannot take more, another
// company still gets a slot at once, a computer is held to its own cap,
// and a request that finds no slot within SlotWait is answered busy.
func TestSlotsFair(t *testing.T) {
	clk := clock.NewFake(time.Unix(1e9, 0))
	p := newSlotPool("uploads", SlotLimits{Global: 4, PerCompany: 3, PerComputer: 2}, 30*time.Second, clk)
	ctx := context.Background()
	var releases []func()
	take := func(company, computer string) {
		t.Helper()
		rel, err := p.acquire(ctx, company, computer)
		if err != nil {
			t.Fatalf("%s/%s: %v", company, computer, err)
		}
		releases = append(releases, rel)
	}
	// The attacker alone may take up to PerCompany (its share is all 4).
	take("evil", "e1")
	take("evil", "e1")
	take("evil", "e2")
	// Its fourth waits: PerCompany.
	evil := acquireAsync(p, "evil", "e3")
	waitQueued(t, p, 1)
	// The victim comes: its share is 2, and one slot is free.
	take("good", "g1")
	// A second victim request: the pool is full (4). It waits, and so
	// does a third computer of the attacker.
	good := acquireAsync(p, "good", "g2")
	waitQueued(t, p, 2)
	// One attacker slot ends: the victim, under its share, gets it; the
	// attacker's waiter, over its share (2 of 4 with two companies), does not.
	releases[0]()
	if err := <-good; err != nil {
		t.Fatalf("victim's waiting request: %v", err)
	}
	select {
	case err := <-evil:
		t.Fatalf("attacker over its share got a slot (err %v)", err)
	default:
	}
	// Nothing frees: the attacker's waiter is answered busy after SlotWait.
	clk.Advance(31 * time.Second)
	err := <-evil
	var ae *apiError
	if !errors.As(err, &ae) || ae.code != wire.CodeBusy || ae.status != http.StatusServiceUnavailable || ae.retryAfter <= 0 {
		t.Fatalf("waiter past SlotWait: %v, want a busy answer with a Retry-After", err)
	}
	// Per computer: g1 holds 1 (plus g2's); a second on g1 is fine, a
	// third is not (PerComputer 2) once the pool has room.
	if n := p.held(); n != 4 {
		t.Fatalf("held %d, want 4", n)
	}
}

func TestSlotsPerComputer(t *testing.T) {
	clk := clock.NewFake(time.Unix(1e9, 0))
	p := newSlotPool("downloads", SlotLimits{Global: 8, PerCompany: 8, PerComputer: 2}, time.Second, clk)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if _, err := p.acquire(ctx, "acme", "pc1"); err != nil {
			t.Fatal(err)
		}
	}
	third := acquireAsync(p, "acme", "pc1")
	waitQueued(t, p, 1)
	if _, err := p.acquire(ctx, "acme", "pc2"); err != nil {
		t.Fatalf("another computer of the company: %v", err)
	}
	clk.Advance(2 * time.Second)
	if err := <-third; err == nil {
		t.Fatal("a computer took more than PerComputer slots")
	}
}

// TestSlotsTurnByComputer: a freed slot goes to the waiting computer that
// holds the fewest, not to the oldest waiter: one computer's many requests
// do not keep another computer of its company waiting.
func TestSlotsTurnByComputer(t *testing.T) {
	clk := clock.NewFake(time.Unix(1e9, 0))
	p := newSlotPool("uploads", SlotLimits{Global: 4, PerCompany: 2, PerComputer: 2}, time.Minute, clk)
	ctx := context.Background()
	var releases []func()
	for i := 0; i < 2; i++ {
		rel, err := p.acquire(ctx, "acme", "pc1")
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, rel)
	}
	var pc1 []chan error
	for i := 0; i < 3; i++ {
		pc1 = append(pc1, acquireAsync(p, "acme", "pc1"))
		waitQueued(t, p, i+1)
	}
	pc2 := acquireAsync(p, "acme", "pc2") // the newest waiter
	waitQueued(t, p, 4)
	releases[0]()
	waitQueued(t, p, 3) // one waiter granted
	select {
	case err := <-pc2:
		if err != nil {
			t.Fatalf("pc2's request: %v", err)
		}
	case <-time.After(10 * time.Second): // granted already: a bound on a hang
		t.Fatal("the freed slot went to one of pc1's older waiters, not to pc2, which held none")
	}
	for i, c := range pc1 {
		select {
		case err := <-c:
			t.Fatalf("pc1's waiter %d got the slot (err %v) before pc2, which held none", i, err)
		default:
		}
	}
	// pc2 holds one, pc1 one: the next freed slot goes to pc1's oldest.
	releases[1]()
	if err := <-pc1[0]; err != nil {
		t.Fatalf("pc1's oldest waiter: %v", err)
	}
	waitQueued(t, p, 2)
}

// TestEnrollRate: a source address gets a burst of EnrollPerAddr attempts,
// then one every 60/EnrollPerAddr s; another address is not affected.
func TestEnrollRate(t *testing.T) {
	clk := clock.NewFake(time.Unix(1e9, 0))
	lim := Limits{EnrollPerAddr: 3, EnrollTotal: 100}.withDefaults()
	e := newEnrollLimiter(&lim, clk)
	for i := 0; i < 3; i++ {
		if err := e.allow("192.0.2.1:4000"); err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	err := e.allow("192.0.2.1:4001")
	var ae *apiError
	if !errors.As(err, &ae) || ae.status != http.StatusTooManyRequests || ae.code != wire.CodeBusy {
		t.Fatalf("fourth attempt: %v, want 429 busy", err)
	}
	if err := e.allow("192.0.2.2:4000"); err != nil {
		t.Fatalf("another address: %v", err)
	}
	clk.Advance(20 * time.Second)
	if err := e.allow("192.0.2.1:4002"); err != nil {
		t.Fatalf("after 20 s: %v", err)
	}
}

// guardServer serves h through the vault's guard over HTTP/2 and TLS.
func guardServer(t *testing.T, lim Limits, h http.Handler) *httptest.Server {
	t.Helper()
	v := &Vault{log: zap.NewNop(), clk: clock.Real{}}
	v.initLimits(lim)
	srv := httptest.NewUnstartedServer(v.guard(h))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// TestReadDeadlineHTTP2: a body that stops coming is cut off after
// ReadIdle, over HTTP/2, without hurting another request on the same
// connection; a body that keeps bringing ProgressBytes is not.
func TestReadDeadlineHTTP2(t *testing.T) {
	lim := Limits{ReadIdle: time.Second, ProgressBytes: 1024}
	srv := guardServer(t, lim, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			w.WriteHeader(http.StatusRequestTimeout)
			io.WriteString(w, err.Error())
			return
		}
		io.WriteString(w, "read "+strings.Repeat("x", int(n%2))+"all")
	}))
	c := srv.Client()
	if !c.Transport.(*http.Transport).ForceAttemptHTTP2 {
		c.Transport.(*http.Transport).ForceAttemptHTTP2 = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// A stalled body: two bytes, then nothing.
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write([]byte("ab")) // owner: ends when the server reads or the pipe closes
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/x", pr)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("stalled body: %v (want an answer)", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("served over %s, want HTTP/2", resp.Proto)
	}
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(b), "timeout") {
		t.Fatalf("stalled body: %d %q, want it cut off by its read deadline", resp.StatusCode, b)
	}

	// A body that trickles 1 KiB at a time, ten times as often as
	// ReadIdle, for three times ReadIdle in all, is read whole.
	pr2, pw2 := io.Pipe()
	go func() { // owner: ends after its last write
		for i := 0; i < 30; i++ {
			pw2.Write(make([]byte, 1024))
			time.Sleep(100 * time.Millisecond)
		}
		pw2.Close()
	}()
	req, _ = http.NewRequestWithContext(ctx, "POST", srv.URL+"/x", pr2)
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("steady body: %d %q, want it read whole", resp.StatusCode, b)
	}
}

// TestWriteDeadlineHTTP2: a client that stops reading a large answer is
// cut off after WriteIdle: the handler's write fails and it returns.
func TestWriteDeadlineHTTP2(t *testing.T) {
	lim := Limits{WriteIdle: 300 * time.Millisecond, ProgressBytes: 16 << 10}
	done := make(chan error, 1)
	srv := guardServer(t, lim, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 1<<20)
		for i := 0; i < 256; i++ { // 256 MiB: far over any window
			if _, err := w.Write(buf); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}))
	c := srv.Client()
	c.Transport.(*http.Transport).ForceAttemptHTTP2 = true
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/big", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("served over %s, want HTTP/2", resp.Proto)
	}
	// Read nothing.
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the handler wrote 256 MiB to a client that read nothing")
		}
	case <-ctx.Done():
		t.Fatal("the handler is still blocked writing to a client that stopped reading")
	}
}

// TestUnauthConnCap: connections without a certificate from one address
// beyond UnauthPerAddr are closed as they are accepted; closing one makes
// room again.
func TestUnauthConnCap(t *testing.T) {
	lim := Limits{UnauthPerAddr: 3, ConnsPerComputer: 2}.withDefaults()
	cc := newConnCaps(&lim, zap.NewNop())
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := cc.listener(raw)
	defer ln.Close()
	accepted := make(chan net.Conn, 10)
	go func() { // owner: ends when ln closes
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var clients []net.Conn
	for i := 0; i < 5; i++ {
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	var conns []*capConn
	for i := 0; i < 3; i++ {
		conns = append(conns, (<-accepted).(*capConn))
	}
	// The fourth and fifth were closed by the listener: reading them ends.
	for _, c := range clients[3:] {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
			t.Fatalf("connection over the cap: read %v, want it closed", err)
		}
	}
	if u, _ := cc.counts(""); u != 3 {
		t.Fatalf("%d unauthenticated connections counted, want 3", u)
	}
	// A certificate moves a connection to its computer's count, up to
	// ConnsPerComputer (2 here).
	for i, c := range conns {
		err := c.authenticate("pc1")
		if (i < 2) != (err == nil) {
			t.Fatalf("connection %d with pc1's certificate: %v", i, err)
		}
	}
	if u, n := cc.counts("pc1"); u != 1 || n != 2 {
		t.Fatalf("counts: %d unauthenticated, %d of pc1; want 1 and 2", u, n)
	}
	conns[0].Close()
	conns[2].Close()
	if u, n := cc.counts("pc1"); u != 0 || n != 1 {
		t.Fatalf("after closing: %d unauthenticated, %d of pc1; want 0 and 1", u, n)
	}
	// Room again: a new connection is accepted.
	c, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	(<-accepted).Close()
}

// TestConnsPerCertificate: through the real listener and TLS setup of
// Serve, a computer's connections beyond ConnsPerComputer fail their
// handshake, while another computer still connects.
func TestConnsPerCertificate(t *testing.T) {
	v, err := Open(Options{Dir: t.TempDir(), Listen: "127.0.0.1:0", Limits: Limits{ConnsPerComputer: 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- v.Serve(ctx, func(a string) { addrc <- a }) }() // owner: this test (cancel, then <-done)
	defer func() { cancel(); <-done }()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatal(err)
	}
	certFor := func(id string) tls.Certificate {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, key)
		certPEM, _, err := v.CA.SignComputer(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), id, "acme", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalPKCS8PrivateKey(key)
		c, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// dial connects with cert and reports whether the vault kept the
	// connection: over HTTP/2 it sends its SETTINGS at once; a refused
	// certificate gets an alert instead.
	dial := func(cert tls.Certificate) (*tls.Conn, error) {
		c, err := tls.Dial("tcp", addr, &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: v.CA.Pool(),
			ServerName: wire.ServerName, NextProtos: []string{"h2"}})
		if err != nil {
			return nil, err
		}
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	pc1, pc2 := certFor("pc-1"), certFor("pc-2")
	for i := 0; i < 2; i++ {
		c, err := dial(pc1)
		if err != nil {
			t.Fatalf("connection %d of pc-1: %v", i+1, err)
		}
		defer c.Close()
	}
	if c, err := dial(pc1); err == nil {
		c.Close()
		t.Fatal("a third connection with pc-1's certificate was accepted (cap 2)")
	} else if os.IsTimeout(err) {
		t.Fatalf("third connection: %v, want refused", err)
	}
	c, err := dial(pc2)
	if err != nil {
		t.Fatalf("another computer: %v", err)
	}
	c.Close()
}

// recordWriter records the size of each write it is given.
type recordWriter struct {
	http.ResponseWriter
	writes []int
}

func (r *recordWriter) Write(p []byte) (int, error) {
	r.writes = append(r.writes, len(p))
	return len(p), nil
}

// TestAnswerPieces: an answer leaves in pieces of AnswerBytes (each one
// HTTP/2 DATA frame with its own write deadline), not of the body's
// ProgressBytes: a 1 MiB chunk once went out as 64 frames of 16 KiB.
func TestAnswerPieces(t *testing.T) {
	lim := DefaultLimits()
	rec := &recordWriter{}
	w := &deadlineWriter{ResponseWriter: rec, d: &deadlines{lim: &lim}}
	n, err := w.Write(make([]byte, 4*lim.AnswerBytes+5))
	if err != nil || n != int(4*lim.AnswerBytes+5) {
		t.Fatalf("write: %d, %v", n, err)
	}
	want := []int{int(lim.AnswerBytes), int(lim.AnswerBytes), int(lim.AnswerBytes), int(lim.AnswerBytes), 5}
	if len(rec.writes) != len(want) {
		t.Fatalf("pieces %v, want %v", rec.writes, want)
	}
	for i := range want {
		if rec.writes[i] != want[i] {
			t.Fatalf("pieces %v, want %v", rec.writes, want)
		}
	}
	if lim.AnswerBytes <= lim.ProgressBytes || lim.AnswerBytes > 1<<20 {
		t.Fatalf("AnswerBytes %d: want more than ProgressBytes (%d) and at most the agent's 1 MiB frames", lim.AnswerBytes, lim.ProgressBytes)
	}
}

// TestListenerConnsLazy: the agent API's connections, as Serve stacks its
// listeners (caps, then the read buffer under TLS), wait for their bytes
// without a buffer: a vault's idle long polls hold none (bufconn). The
// caps' wrapper once hid the descriptor, and every idle connection held
// 256 KiB.
func TestListenerConnsLazy(t *testing.T) {
	lim := DefaultLimits()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := bufListener{Listener: newConnCaps(&lim, zap.NewNop()).listener(raw)}
	defer ln.Close()
	c, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if !sc.(*bufconn.Conn).Lazy() {
		t.Fatal("an accepted connection holds a read buffer while it waits: its descriptor is hidden")
	}
}
