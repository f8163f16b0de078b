package client

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"vaultnode/internal/clock"
	"vaultnode/internal/wire"
)

// chunkServer answers a download with one frame per id asked (the
// payload is the id's first byte repeated 256 KiB), noting the HTTP
// version of each request. With refuseHTTP1 it closes every HTTP/1.1
// connection as its first request arrives, unanswered, as a vault at its cap of
// connections per computer or behind a proxy that speaks only HTTP/2
// would leave the agent.
type chunkServer struct {
	refuseHTTP1 atomic.Bool

	mu     sync.Mutex
	protos []int // ProtoMajor of each download answered
}

func (s *chunkServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 && s.refuseHTTP1.Load() {
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			c.Close()
		}
		return
	}
	b, _ := io.ReadAll(r.Body)
	ids, err := wire.ParseIDs(b, wire.MaxGetIDs)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.protos = append(s.protos, r.ProtoMajor)
	s.mu.Unlock()
	w.Header().Set("Content-Type", wire.MediaFrames)
	for _, id := range ids {
		p := bytes.Repeat(id[:1], 256<<10)
		w.Write(wire.AppendFrame(nil, &wire.Frame{ID: id, Kind: wire.StatusOK, PlainLen: uint32(len(p)), Payload: p}))
	}
}

func (s *chunkServer) seen() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.protos...)
}

// downloadClient is a client of s with both transports New gives it,
// its waits on a fake clock.
func downloadClient(t *testing.T, s *chunkServer) (*Client, *clock.Fake) {
	t.Helper()
	srv := httptest.NewUnstartedServer(s)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	conf := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	conf.NextProtos = []string{"h2"}
	clk := clock.NewFake(time.Unix(1e9, 0))
	c := &Client{pair: newPair(strings.TrimPrefix(srv.URL, "https://")), clk: clk}
	c.hc = &http.Client{Transport: newTransport(conf, c.connectTimeout)}
	c.dl = &http.Client{Transport: newDownloadTransport(conf, c.connectTimeout)}
	return c, clk
}

// get downloads ids and checks every frame's content.
func get(t *testing.T, c *Client, ids [][32]byte) {
	t.Helper()
	n := 0
	err := c.GetChunks(context.Background(), ids, func(f *wire.Frame) error {
		if f.Kind != wire.StatusOK || len(f.Payload) != 256<<10 || f.Payload[0] != f.ID[0] || f.Payload[len(f.Payload)-1] != f.ID[0] {
			t.Fatalf("frame %d of chunk %x: kind %d, %d bytes", n, f.ID[:1], f.Kind, len(f.Payload))
		}
		n++
		return nil
	})
	if err != nil || n != len(ids) {
		t.Fatalf("download of %d chunks: %d frames, %v", len(ids), n, err)
	}
}

func testIDs(n int) [][32]byte {
	ids := make([][32]byte, n)
	for i := range ids {
		ids[i] = [32]byte{byte(i + 1), 9}
	}
	return ids
}

// TestDownloadsOverHTTP1: downloads go over HTTP/1.1 connections of their
// own, at most maxDownloadConns at once; the ones beyond go over HTTP/2.
func TestDownloadsOverHTTP1(t *testing.T) {
	s := &chunkServer{}
	c, _ := downloadClient(t, s)
	get(t, c, testIDs(8))
	get(t, c, testIDs(3))
	if got := s.seen(); len(got) != 2 || got[0] != 1 || got[1] != 1 {
		t.Fatalf("downloads answered over HTTP/%v, want HTTP/1 for both", got)
	}
	// More at once than there are download connections: each waits in
	// its callback until all have started.
	const n = maxDownloadConns + 3
	var started, wg sync.WaitGroup
	started.Add(n)
	wg.Add(n)
	for range n {
		go func() { // owner: this test, which waits for wg
			defer wg.Done()
			first := true
			err := c.GetChunks(context.Background(), testIDs(2), func(*wire.Frame) error {
				if first {
					started.Done()
					started.Wait()
					first = false
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	var h1, h2 int
	for _, p := range s.seen()[2:] {
		if p == 1 {
			h1++
		} else {
			h2++
		}
	}
	if h1 != maxDownloadConns || h2 != n-maxDownloadConns {
		t.Fatalf("%d downloads at once: %d over HTTP/1.1, %d over HTTP/2; want %d and %d", n, h1, h2, maxDownloadConns, n-maxDownloadConns)
	}
	if c.dlBusy != 0 {
		t.Fatalf("%d download connections still taken after the downloads", c.dlBusy)
	}
}

// TestDownloadFallsBackToHTTP2: a download whose HTTP/1.1 connection
// fails is made over HTTP/2 instead, and so are the next ones for a
// minute; the vault is not taken for unreachable.
func TestDownloadFallsBackToHTTP2(t *testing.T) {
	s := &chunkServer{}
	s.refuseHTTP1.Store(true)
	c, clk := downloadClient(t, s)
	get(t, c, testIDs(4))
	get(t, c, testIDs(2))
	if got := s.seen(); len(got) != 2 || got[0] != 2 || got[1] != 2 {
		t.Fatalf("downloads answered over HTTP/%v, want HTTP/2 for both", got)
	}
	if c.missed != 0 || c.dlBusy != 0 {
		t.Fatalf("after the fallback: %d misses noted, %d download connections taken; want none", c.missed, c.dlBusy)
	}
	s.refuseHTTP1.Store(false)
	clk.Advance(time.Minute)
	get(t, c, testIDs(2))
	if got := s.seen(); len(got) != 3 || got[2] != 1 {
		t.Fatalf("a minute after the fallback, downloads answered over HTTP/%v, want HTTP/1 again", got)
	}
}
