package client

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"sync"
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
