package client

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"vaultnode/internal/wire"
)

// electingServer answers not_leader naming no leader (an election runs)
// to its first elections requests, then serves.
type electingServer struct {
	elections int

	mu       sync.Mutex
	attempts int
}

func (s *electingServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.attempts++
	n := s.attempts
	s.mu.Unlock()
	io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	if n <= s.elections {
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(wire.Error{Code: wire.CodeNotLeader, Message: "no leader known now"})
		return
	}
	io.WriteString(w, `{}`)
}

// TestFailoverStaysOnLiveMember: the leader is dead (its address refuses
// connections) and the survivor answers not_leader naming no leader while
// it is elected. The client moves to the survivor at once and keeps
// asking it, not going back to the dead address between answers (each
// round trip there cost a growing wait), and its waits stay short.
func TestFailoverStaysOnLiveMember(t *testing.T) {
	s := &electingServer{elections: 3}
	c, clk, stop := testClient(t, s)
	defer stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	c.pair = newPair(dead + "," + c.addrs[0])
	start := clk.Now()
	resp, err := c.do(context.Background(), "GET", wire.PathComputer, "", nil)
	if err != nil {
		t.Fatalf("after the election: %v", err)
	}
	resp.Body.Close()
	if s.attempts != 4 {
		t.Fatalf("%d requests reached the survivor, want 4", s.attempts)
	}
	if n := c.Failovers(); n != 1 {
		t.Fatalf("%d moves between addresses, want 1 (the dead leader to the survivor)", n)
	}
	// Waits: none after the refused connection, then 0.1 s, 0.2 s, 0.3 s
	// after the three answers (the fake clock runs a second per
	// millisecond, so only a bound is exact).
	if d := clk.Now().Sub(start); d < 600*time.Millisecond {
		t.Fatalf("waited %v in all, want at least the 0.6 s of three steps", d)
	}
}

// dropFirst accepts connections for to and closes the first n at once,
// as a vault restarting or too loaded to finish a TLS handshake does;
// later connections are relayed to to.
func dropFirst(t *testing.T, to string, n int) (addr string, accepted func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	count := 0
	go func() { // owner: the listener, closed at cleanup
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			count++
			drop := count <= n
			mu.Unlock()
			if drop {
				c.Close()
				continue
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", to)
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return count }
}

// TestSingleVaultRetriesUnconnected: with a single vault, a request whose
// connection closed before the TLS handshake ended reached nothing and is
// sent again after a growing wait; one that reached the vault is not.
func TestSingleVaultRetriesUnconnected(t *testing.T) {
	s := &electingServer{}
	c, _, stop := testClient(t, s)
	defer stop()
	addr, accepted := dropFirst(t, c.addrs[0], 2)
	c.pair = newPair(addr)
	resp, err := c.do(context.Background(), "POST", wire.PathComputer, "application/json", []byte(`{}`))
	if err != nil {
		t.Fatalf("after two connections closed in the handshake: %v", err)
	}
	resp.Body.Close()
	if n := accepted(); n != 3 || s.attempts != 1 {
		t.Fatalf("%d connections, %d requests served; want 3 and 1", n, s.attempts)
	}

	// Every connection closed: the client gives up after its attempts.
	addr, accepted = dropFirst(t, c.addrs[0], 1000)
	c.pair = newPair(addr)
	if _, err := c.do(context.Background(), "POST", wire.PathComputer, "application/json", []byte(`{}`)); err == nil {
		t.Fatal("a vault that never completes a handshake: no error")
	}
	if n := accepted(); n != unconnectedAttempts {
		t.Fatalf("%d connections, want %d attempts", n, unconnectedAttempts)
	}
}

// abortServer cuts every request it read, as a vault that dies during one.
type abortServer struct{ attempts atomic.Int32 }

func (s *abortServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.attempts.Add(1)
	io.Copy(io.Discard, r.Body)
	panic(http.ErrAbortHandler)
}

// TestSingleVaultNoRetryAfterConnect: a request the vault may have read is
// not sent again by the client (the caller's own retries decide).
func TestSingleVaultNoRetryAfterConnect(t *testing.T) {
	s := &abortServer{}
	c, _, stop := testClient(t, s)
	defer stop()
	if _, err := c.do(context.Background(), "POST", wire.PathComputer, "application/json", []byte(`{}`)); err == nil {
		t.Fatal("a request cut by the vault: no error")
	}
	if n := s.attempts.Load(); n != 1 {
		t.Fatalf("the vault saw the request %d times, want 1", n)
	}
}
