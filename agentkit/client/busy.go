package client

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"vaultnode/internal/wire"
)

// A vault too busy with a company's or computer's other requests answers
// busy (503, or 429 for enrolment) with a Retry-After; the request changed
// nothing and is sent again after that wait, until ctx ends or
// busyAttempts have failed.

const (
	busyAttempts = 60
	busyMaxWait  = 30 * time.Second
)

// busyWait is how long to wait before sending a request again after err,
// and whether it may be sent again at all.
func (c *Client) busyWait(err error, attempt int) (time.Duration, bool) {
	if d, ok := c.failoverWait(err, attempt); ok { // failover.go
		return d, true
	}
	e, ok := err.(*Error)
	if !ok || e.Code != wire.CodeBusy || attempt >= busyAttempts {
		return 0, false
	}
	d := e.RetryAfter
	if d <= 0 {
		d = time.Second
	}
	return min(d, busyMaxWait), true
}

// sleep waits d on the client's clock, or until ctx ends.
func (c *Client) sleep(ctx context.Context, d time.Duration) error {
	t := c.clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func retryAfter(resp *http.Response) time.Duration {
	s, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || s < 0 {
		return 0
	}
	return time.Duration(s) * time.Second
}

// onceBody hands a streamed body to one request. Once the request has
// ended it reads nothing more, and tells whether the request read any of
// it: only a body never read may be handed to the next attempt.
type onceBody struct {
	mu    sync.Mutex
	r     io.Reader
	size  int64 // -1: unknown
	read  int64
	ended bool
}

func (b *onceBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ended {
		return 0, io.EOF
	}
	n, err := b.r.Read(p)
	b.read += int64(n)
	return n, err
}

// end stops the body and reports whether none of it was read.
func (b *onceBody) end() (untouched bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ended = true
	return b.read == 0
}
