package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"vaultnode/internal/limit"
	"vaultnode/internal/wire"
)

// hostileVault answers every request with the body its function makes.
type hostileVault func(r *http.Request) io.Reader

func (h hostileVault) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Body: io.NopCloser(h(r)), Header: http.Header{}, Request: r}, nil
}

func hostileClient(h hostileVault) *Client {
	return New("vault.invalid:1", tls.Certificate{}, nil, func(http.RoundTripper) http.RoundTripper { return h })
}

// endless is `{"id":"xxxx...` without end.
type endless struct{ started bool }

func (e *endless) Read(p []byte) (int, error) {
	n := 0
	if !e.started {
		n = copy(p, `{"id":"`)
		e.started = true
	}
	for i := n; i < len(p); i++ {
		p[i] = 'x'
	}
	return len(p), nil
}

func allocated(fn func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// A hostile vault's endless answer is refused at the documented bound.
func TestAnswerLimits(t *testing.T) {
	c := hostileClient(func(*http.Request) io.Reader { return &endless{} })
	var err error
	got := allocated(func() { _, err = c.Open(context.Background(), "home") })
	if le, ok := limit.As(err); !ok || le.Limit != "wire.MaxAnswer" {
		t.Fatalf("endless session answer: %v", err)
	}
	// io.ReadAll's growing buffer and the transport's (more under -race):
	// a few times MaxAnswer, never the endless stream.
	if got > 8*wire.MaxAnswer {
		t.Fatalf("an endless answer allocated %d bytes, bound %d", got, wire.MaxAnswer)
	}
	_, err = c.Versions(context.Background(), "home")
	if le, ok := limit.As(err); !ok || le.Limit != "wire.MaxListAnswer" {
		t.Fatalf("endless versions answer: %v", err)
	}
	// Deep nesting.
	c = hostileClient(func(*http.Request) io.Reader { return strings.NewReader(strings.Repeat("[", 100000)) })
	_, err = c.Computer(context.Background())
	if le, ok := limit.As(err); !ok || le.Limit != "wire.MaxJSONDepth" {
		t.Fatalf("deep answer: %v", err)
	}
}

// A damaged frame's reason is cut to MaxReason; a frame over the limits is
// refused from its header.
func TestDownloadLimits(t *testing.T) {
	id := [32]byte{7}
	frame := wire.AppendFrame(nil, &wire.Frame{ID: id, Kind: wire.StatusDamaged, PlainLen: 0, Payload: bytes.Repeat([]byte("r"), 1<<20)})
	c := hostileClient(func(*http.Request) io.Reader { return bytes.NewReader(frame) })
	err := c.GetChunks(context.Background(), [][32]byte{id}, func(f *wire.Frame) error {
		if len(f.Payload) > wire.MaxReason {
			t.Fatalf("reason of %d bytes passed on", len(f.Payload))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	h := wire.FrameHeader(&wire.Frame{ID: id, PlainLen: wire.MaxPlain + 1})
	c = hostileClient(func(*http.Request) io.Reader { return bytes.NewReader(h[:]) })
	err = c.GetChunks(context.Background(), [][32]byte{id}, func(*wire.Frame) error { return nil })
	if le, ok := limit.As(err); !ok || le.Limit != "wire.MaxPlain" || !errors.Is(err, wire.ErrFrame) {
		t.Fatalf("oversized frame: %v", err)
	}
}
