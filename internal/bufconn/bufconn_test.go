package bufconn

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countConn counts the reads of the connection it wraps.
type countConn struct {
	net.Conn
	reads atomic.Int64
}

func (c *countConn) Read(p []byte) (int, error) {
	c.reads.Add(1)
	return c.Conn.Read(p)
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Unix(0, 0), NotAfter: time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC), DNSNames: []string{"t"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestRecordsInOneRead: TLS records that have all arrived are read from
// the connection in one system call, not one each, and arrive intact.
func TestRecordsInOneRead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const records = 6
	want := make([]byte, records*16<<10) // 96 KiB: within loopback's socket buffers
	rand.Read(want)
	cert := selfSigned(t)
	sent := make(chan error, 1)
	go func() { // owner: the test; ends when the write does
		c, err := ln.Accept()
		if err != nil {
			sent <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
		_, err = tc.Write(want)
		sent <- err
		io.Copy(io.Discard, tc) // until the client closes
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	cc := &countConn{Conn: raw}
	tc := tls.Client(New(cc), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil { // everything is in the socket before the first read
		t.Fatal(err)
	}
	before := cc.reads.Load()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(tc, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the records arrived changed")
	}
	if n := cc.reads.Load() - before; n >= records {
		t.Fatalf("%d reads of the connection for %d records that had all arrived, want fewer", n, records)
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T, ln net.Listener) (client, server net.Conn) {
	t.Helper()
	acc := make(chan net.Conn, 1)
	go func() { // owner: the test; ends with the accept
		c, _ := ln.Accept()
		acc <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-acc
	if server == nil {
		t.Fatal("accept failed")
	}
	return client, server
}

// TestDescriptorReads: through a TCP connection's descriptor (the path a
// vault's connections take) TLS gets every byte intact, a deadline is
// reported as one, and the end of the connection as io.EOF.
func TestDescriptorReads(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, server := tcpPair(t, ln)
	defer client.Close()
	bc := New(server)
	defer bc.Close()
	if bc.rc == nil {
		t.Fatal("a TCP connection's descriptor was not used")
	}
	bc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := bc.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want os.ErrDeadlineExceeded", err)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v is no timeout", err)
	}
	bc.SetReadDeadline(time.Time{})
	cert := selfSigned(t)
	want := make([]byte, 4<<20+123)
	rand.Read(want)
	sent := make(chan error, 1)
	go func() { // owner: the test; ends when the write does
		tc := tls.Client(client, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		_, err := tc.Write(want)
		if err == nil {
			err = tc.Close()
		}
		sent <- err
	}()
	ts := tls.Server(bc, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	got, err := io.ReadAll(ts)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, not the %d sent", len(got), len(want))
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if bc.Buffered() {
		t.Fatal("a buffer held after every byte was taken")
	}
	if _, err := bc.Read(make([]byte, 10)); err != io.EOF {
		t.Fatalf("read at the end: %v, want io.EOF", err)
	}
}

// TestIdleHoldsNoBuffer: connections waiting for their next bytes (a
// vault's idle agent connections) hold no buffer: 256 of them blocked in
// a read take far less than their 64 MiB of buffers.
func TestIdleHoldsNoBuffer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const conns = 256
	var clients []net.Conn
	var wg sync.WaitGroup
	runtime.GC()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	read := make(chan struct{}, conns)
	var servers []*Conn
	for range conns {
		c, s := tcpPair(t, ln)
		clients = append(clients, c)
		bc := New(s)
		servers = append(servers, bc)
		wg.Add(1)
		go func() { // owner: the test; ends when its client closes
			defer wg.Done()
			b := make([]byte, 1)
			for {
				if _, err := bc.Read(b); err != nil {
					return
				}
				read <- struct{}{}
			}
		}()
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
		wg.Wait()
		for _, s := range servers {
			s.Close()
		}
	}()
	for _, c := range clients { // one byte each, read whole: then idle again
		if _, err := c.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	for range conns {
		<-read
	}
	runtime.GC()
	runtime.GC() // empties the pool
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > conns*ReadSize/8 {
		t.Fatalf("%d idle connections hold %d MiB, want well under their %d MiB of buffers", conns, grew>>20, conns*ReadSize>>20)
	}
}

// TestCounting: NewCounting counts every byte read from the connection,
// through the descriptor, through a connection without one (a pipe) and
// in reads larger than the buffer, whatever is still buffered.
func TestCounting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, server := tcpPair(t, ln)
	pc, ps := net.Pipe()
	for _, tc := range []struct {
		name     string
		w, r     net.Conn
		viaDescr bool
	}{{"descriptor", client, server, true}, {"pipe", pc, ps, false}} {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.w.Close()
			var n atomic.Uint64
			bc := NewCounting(tc.r, &n)
			defer bc.Close()
			if (bc.rc != nil) != tc.viaDescr {
				t.Fatalf("descriptor used: %v", bc.rc != nil)
			}
			want := make([]byte, 3*ReadSize+77)
			rand.Read(want)
			go func() { // owner: the test; ends when the write does
				tc.w.Write(want)
				tc.w.Close()
			}()
			got := make([]byte, 0, len(want))
			small := make([]byte, 1000)
			large := make([]byte, ReadSize)
			for i := 0; ; i++ {
				p := small
				if i%2 == 1 && !bc.Buffered() {
					p = large
				}
				k, err := bc.Read(p)
				got = append(got, p[:k]...)
				if err == io.EOF {
					break
				} else if err != nil {
					t.Fatal(err)
				}
				if c := n.Load(); c < uint64(len(got)) || c > uint64(len(want)) {
					t.Fatalf("counted %d bytes with %d taken of %d", c, len(got), len(want))
				}
			}
			if !bytes.Equal(got, want) || n.Load() != uint64(len(want)) {
				t.Fatalf("read %d bytes, counted %d, of %d", len(got), n.Load(), len(want))
			}
		})
	}
}
