package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"vaultnode/internal/clock"
)

// proxy forwards TCP connections to a target and counts the bytes in each
// direction: what goes through it is what would cross the network. Counts
// grow as connections close (idle waits for that).
type proxy struct {
	ln     net.Listener
	target string
	up     atomic.Int64 // client to target (sent by the agent)
	down   atomic.Int64 // target to client
	active atomic.Int64 // open connections

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// startProxy listens on a loopback port; Close stops it and waits for its
// goroutines.
func startProxy(target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start proxy: %w", err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// track records an open connection (add) or forgets it; it refuses (false)
// once the proxy is closing.
func (p *proxy) track(add bool, cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add && p.closed {
		return false
	}
	for _, c := range cs {
		if add {
			p.conns[c] = struct{}{}
		} else {
			delete(p.conns, c)
		}
	}
	return true
}

func (p *proxy) serve(client net.Conn) {
	defer p.wg.Done()
	p.active.Add(1)
	defer p.active.Add(-1)
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	if !p.track(true, client, server) {
		client.Close()
		server.Close()
		return
	}
	defer p.track(false, client, server)
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn, n *atomic.Int64) {
		defer wg.Done()
		// Straight between the two sockets, so Linux splices the bytes
		// without copying them through this process (a real network costs
		// the machine nothing here); counted when the direction ends, which
		// idle waits for.
		c, _ := io.Copy(dst, src)
		n.Add(c)
		// Pass the half-close on, then let the other direction finish.
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}
	wg.Add(2)
	go pipe(server, client, &p.up)
	go pipe(client, server, &p.down)
	wg.Wait()
	client.Close()
	server.Close()
}

// counts returns the bytes forwarded by the connections closed so far, in
// each direction.
func (p *proxy) counts() (up, down int64) { return p.up.Load(), p.down.Load() }

// idle waits until no connection is open (so every byte a finished client
// sent has been counted), or until ctx ends.
func (p *proxy) idle(ctx context.Context, clk clock.Clock) error {
	for p.active.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for proxy connections to close: %w", ctx.Err())
		case <-clk.After(20 * time.Millisecond):
		}
	}
	return nil
}

// Close stops accepting, cuts open connections and waits for every goroutine.
func (p *proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
