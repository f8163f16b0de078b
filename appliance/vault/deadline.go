package vault

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"vaultnode/internal/wire"
)

// Request deadlines. Net deadlines are wall-clock instants, so this file
// reads time.Now: the fake clock cannot move a socket's deadline.
//
// Every request gets a total deadline (Limits.RequestMax, or StreamMax for
// uploads, commits, journal records and downloads), an idle read deadline
// extended each time the body brings Limits.ProgressBytes, and an idle
// write deadline extended before each Limits.AnswerBytes of the answer. A
// client that trickles its body or stops reading its answer is cut off
// and its buffers freed. Over HTTP/2 the deadlines are per stream (the
// stream is reset; the connection's other streams go on).

// isStream reports whether a request moves bulk data or checks a listing
// and so may run up to StreamMax.
func isStream(r *http.Request) bool {
	p := r.URL.Path
	if r.Method != http.MethodPost {
		return false
	}
	if p == wire.PathChunks {
		return true
	}
	if strings.HasPrefix(p, wire.PathSession) {
		return strings.HasSuffix(p, "/chunks") || strings.HasSuffix(p, "/commit") || strings.HasSuffix(p, "/journal")
	}
	return false
}

// guard puts every request of the agent API under its deadlines and
// enrolment attempts under their rate limit.
func (v *Vault) guard(next http.Handler) http.Handler {
	l := v.limits
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == wire.PathEnroll {
			if err := v.enrollRate.allow(r.RemoteAddr); err != nil {
				v.writeErr(w, r, err)
				return
			}
		}
		now := time.Now()
		total := l.RequestMax
		if isStream(r) && r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			total = l.StreamMax
		}
		end := now.Add(total)
		ctx, cancel := context.WithDeadline(r.Context(), end)
		defer cancel()
		rc := http.NewResponseController(w)
		d := &deadlines{rc: rc, start: now, end: end, lim: &l}
		// Not every ResponseWriter has deadlines (httptest's does not):
		// there the context's deadline alone bounds the request.
		if err := rc.SetReadDeadline(d.at(l.ReadIdle)); err == nil {
			d.ok = true
			rc.SetWriteDeadline(end)
		}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &deadlineBody{d: d, rc: r.Body}
		}
		next.ServeHTTP(&deadlineWriter{ResponseWriter: w, d: d}, r.WithContext(ctx))
	})
}

// deadlines moves one request's deadlines forward as it makes progress,
// never past end.
type deadlines struct {
	rc    *http.ResponseController
	start time.Time
	end   time.Time
	lim   *Limits
	ok    bool // the connection supports deadlines

	mu      sync.Mutex
	read    int64 // body bytes since the read deadline was last moved
	written bool
}

// at is now+d, capped by the request's end.
func (d *deadlines) at(idle time.Duration) time.Time {
	t := time.Now().Add(idle)
	if t.After(d.end) {
		return d.end
	}
	return t
}

// readProgress counts n body bytes; every ProgressBytes moves the read
// deadline. At the end of the body the deadline becomes the request's
// end (an HTTP/1 connection's background read must not cancel the
// request while it works).
func (d *deadlines) readProgress(n int, eof bool) {
	if !d.ok {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.read += int64(n)
	switch {
	case eof:
		d.rc.SetReadDeadline(d.end)
	case d.read >= d.lim.ProgressBytes:
		d.read = 0
		d.rc.SetReadDeadline(d.at(d.lim.ReadIdle))
	}
}

// beforeWrite gives the next piece of the answer WriteIdle to leave.
func (d *deadlines) beforeWrite() {
	if !d.ok {
		return
	}
	d.rc.SetWriteDeadline(d.at(d.lim.WriteIdle))
}

type deadlineBody struct {
	d  *deadlines
	rc io.ReadCloser
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.d.readProgress(n, errors.Is(err, io.EOF))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("request body too slow: the vault needs %d KiB every %s, and all of it within %s: %w",
			b.d.lim.ProgressBytes>>10, b.d.lim.ReadIdle, b.d.end.Sub(b.d.start).Round(time.Second), err)
	}
	return n, err
}

func (b *deadlineBody) Close() error { return b.rc.Close() }

// deadlineWriter writes the answer in pieces of AnswerBytes, each with
// WriteIdle to leave: a client must take the answer at that pace at least.
// A piece is one HTTP/2 DATA frame (the agent accepts frames of 1 MiB).
type deadlineWriter struct {
	http.ResponseWriter
	d *deadlines
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		piece := p[done:]
		if int64(len(piece)) > w.d.lim.AnswerBytes {
			piece = piece[:w.d.lim.AnswerBytes]
		}
		w.d.beforeWrite()
		n, err := w.ResponseWriter.Write(piece)
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// Unwrap lets http.ResponseController reach the connection.
func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
