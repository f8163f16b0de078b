package client

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"vaultnode/internal/clock"
	"vaultnode/internal/wire"
)

// busyServer answers busy to the first busyFirst requests of each path,
// reading readBusy bytes of the body first; then it reads the whole body
// and answers {"stored": 1}.
type busyServer struct {
	busyFirst int
	readBusy  int

	mu       sync.Mutex
	attempts int
	bodies   [][]byte
}

func (s *busyServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.attempts++
	n := s.attempts
	s.mu.Unlock()
	if n <= s.busyFirst {
		if s.readBusy > 0 {
			io.ReadFull(r.Body, make([]byte, s.readBusy))
		}
		w.Header().Set("Retry-After", "1")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(wire.Error{Code: wire.CodeBusy, Message: "busy: retry"})
		return
	}
	b, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.bodies = append(s.bodies, b)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"stored": 1}`)
}

// testClient is a client of srv over HTTP/2 whose waits run on clk.
func testClient(t *testing.T, h http.Handler) (*Client, *clock.Fake, func()) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	conf := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	conf.NextProtos = []string{"h2"}
	clk := clock.NewFake(time.Unix(1e9, 0))
	c := &Client{pair: newPair(strings.TrimPrefix(srv.URL, "https://")), clk: clk}
	c.hc = &http.Client{Transport: newTransport(conf, c.connectTimeout)}
	// Advance the fake clock while the test runs, so that busy waits end.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // owner: the returned stop function
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				clk.Advance(time.Second)
			}
		}
	}()
	return c, clk, func() { close(stop); <-done; srv.Close() }
}

// TestUploadRetriesBusy: an upload answered busy before the vault read
// its body is sent again, whole. Only Expect: 100-continue makes that
// possible over HTTP/2: without it the transport starts sending the
// streamed body at once, and what it took cannot be sent again.
func TestUploadRetriesBusy(t *testing.T) {
	s := &busyServer{busyFirst: 2}
	c, _, stop := testClient(t, s)
	defer stop()
	body := bytes.Repeat([]byte("frames"), 100000) // 600 KB: more than a window
	if err := c.Upload(context.Background(), "s1", io.MultiReader(bytes.NewReader(body))); err != nil {
		t.Fatalf("upload after two busy answers: %v", err)
	}
	if s.attempts != 3 || len(s.bodies) != 1 || !bytes.Equal(s.bodies[0], body) {
		t.Fatalf("%d attempts, %d bodies stored (first %d bytes); want 3 attempts and the whole body once", s.attempts, len(s.bodies), len(s.bodies[0]))
	}
}

// TestUploadBusyAfterReadNotRetried: a busy answer after the vault read
// part of a streamed body cannot be retried with what is left of it.
func TestUploadBusyAfterReadNotRetried(t *testing.T) {
	s := &busyServer{busyFirst: 1, readBusy: 10}
	c, _, stop := testClient(t, s)
	defer stop()
	err := c.Upload(context.Background(), "s1", io.MultiReader(strings.NewReader(strings.Repeat("x", 1000))))
	if !IsCode(err, wire.CodeBusy) {
		t.Fatalf("upload whose body was partly read before a busy answer: %v, want the busy error", err)
	}
	if s.attempts != 1 {
		t.Fatalf("%d attempts, want 1", s.attempts)
	}
}

// TestRequestRetriesBusy: requests with a body in memory (here a chunk
// download) are sent again after busy answers.
func TestRequestRetriesBusy(t *testing.T) {
	s := &busyServer{busyFirst: 3}
	c, _, stop := testClient(t, s)
	defer stop()
	resp, err := c.do(context.Background(), "POST", wire.PathChunks, wire.MediaFrames, make([]byte, 64))
	if err != nil {
		t.Fatalf("after three busy answers: %v", err)
	}
	resp.Body.Close()
	if s.attempts != 4 || len(s.bodies) != 1 || len(s.bodies[0]) != 64 {
		t.Fatalf("%d attempts, bodies %d; want 4 attempts and the body once", s.attempts, len(s.bodies))
	}
}
