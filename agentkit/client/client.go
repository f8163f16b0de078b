// Package client speaks the vault's agent API (docs/protocol.md) over
// mutual TLS and HTTP/2.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"vaultnode/internal/bufconn"
	"vaultnode/internal/clock"
	"vaultnode/internal/deadpeer"
	"vaultnode/internal/wire"
)

// Error is an error answer of the vault.
type Error struct {
	Status     int
	Code       string
	Message    string
	RequestID  string        // the vault's id for the request, to find it in the vault's log
	RetryAfter time.Duration // busy answers: when to try again
	Leader     string        // not_leader answers: the pair's leader, when known
}

func (e *Error) Error() string { return fmt.Sprintf("vault: %s (%s)", e.Message, e.Code) }

// IsCode reports whether err is a vault error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Client talks to one vault, or to the leader of a pair among its
// addresses (failover.go).
type Client struct {
	pair
	hc  *http.Client
	clk clock.Clock // waits before retrying a busy answer
	// frames holds up to keep download readers between requests, so
	// their buffers grow to a chunk's size once per restore rather than
	// once per request. (A sync.Pool lost them at each garbage
	// collection: restore's agent CPU profile showed 10 % in growing
	// them again.)
	framesMu sync.Mutex
	frames   []*wire.FrameReader
	keep     int // 0: idleFrameReaders (KeepFrameReaders)
}

// idleFrameReaders bounds the readers kept between downloads, each holding
// a buffer of up to a frame's size, until a caller says it runs more
// downloads at once (KeepFrameReaders). A restore does: with one reader
// fewer than its downloads, one download in five started with a new reader
// whose buffer grew again, and eight workers with five kept readers cost
// 3 % more of the agent's CPU.
const idleFrameReaders = 5

// maxKeptFrameReaders bounds KeepFrameReaders: a restore's most workers
// (vault-agent restore -parallel 64) and its listing.
const maxKeptFrameReaders = 65

// KeepFrameReaders lets the client keep up to n download readers between
// requests, for a caller that runs n downloads at once (a restore: its
// workers and its listing). It never lowers the bound: a daemon's client
// keeps what its largest restore needed.
func (c *Client) KeepFrameReaders(n int) {
	c.framesMu.Lock()
	c.keep = max(c.keep, min(n, maxKeptFrameReaders))
	c.framesMu.Unlock()
}

// takeFrameReader returns a kept download reader, or nil.
func (c *Client) takeFrameReader() *wire.FrameReader {
	c.framesMu.Lock()
	defer c.framesMu.Unlock()
	n := len(c.frames)
	if n == 0 {
		return nil
	}
	fr := c.frames[n-1]
	c.frames[n-1] = nil
	c.frames = c.frames[:n-1]
	return fr
}

// keepFrameReader keeps fr (emptied) for a later download, unless the
// client keeps as many as it may already.
func (c *Client) keepFrameReader(fr *wire.FrameReader) {
	fr.Reset(nil)
	c.framesMu.Lock()
	defer c.framesMu.Unlock()
	limit := c.keep
	if limit == 0 {
		limit = idleFrameReaders
	}
	if len(c.frames) < limit {
		c.frames = append(c.frames, fr)
	}
}

// A vault that died without closing its connections (a power cut, a
// frozen machine) answers nothing: a dial, a handshake or a request to it
// would hang until the kernel gave up, minutes later, and the agent would
// stay on the dead member of a pair meanwhile. So a dial and TLS handshake
// is given up after connectTimeout (connect says how long), a connection
// whose data stays unacknowledged for 15 s or whose keepalives go
// unanswered (5 s idle + 3 x 2.5 s) ends; HTTP/2 pings (30 s + 15 s) catch
// a vault whose machine answers but whose process does not. None of these
// fires on a slow link that moves data.
func newTransport(conf *tls.Config, connect func() time.Duration) *http.Transport {
	d := deadpeer.Dialer(connectTimeout, 15*time.Second, 5*time.Second)
	t := &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true, MaxIdleConns: 4,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, connect())
			defer cancel()
			raw, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			cf := conf
			if cf.ServerName == "" {
				cf = conf.Clone()
				cf.ServerName, _, _ = net.SplitHostPort(addr)
			}
			// Reads buffered under TLS: a download's 16 KiB records
			// cost one system call per buffer, not one each.
			tc := tls.Client(bufconn.New(raw), cf)
			if err := tc.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, err
			}
			return tc, nil
		},
		IdleConnTimeout: time.Minute, ResponseHeaderTimeout: 10 * time.Minute,
		ExpectContinueTimeout: time.Minute} // an upload's body waits for the vault's slot (Upload)
	t.HTTP2 = &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second,
		MaxReceiveBufferPerConnection: 64 << 20, MaxReceiveBufferPerStream: 16 << 20,
		// DATA frames of up to 1 MiB instead of HTTP/2's 16 KiB: a
		// download's chunk goes through both ends' HTTP/2 framing, flow
		// control and write scheduling once, not once per 16 KiB.
		MaxReadFrameSize: 1 << 20}
	return t
}

// New returns a client authenticated with cert, trusting only ca. wrap,
// when not nil, decorates the transport (a bandwidth limit, metrics).
func New(addr string, cert tls.Certificate, ca *x509.CertPool, wrap func(http.RoundTripper) http.RoundTripper) *Client {
	conf := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, RootCAs: ca,
		ServerName: wire.ServerName, NextProtos: []string{"h2"}}
	c := &Client{pair: newPair(addr), clk: clock.Real{}}
	var rt http.RoundTripper = newTransport(conf, c.connectTimeout)
	if wrap != nil {
		rt = wrap(rt)
	}
	c.hc = &http.Client{Transport: rt}
	return c
}

// Enroll registers a computer. The vault is trusted only if its CA matches
// the pin in the token.
func Enroll(ctx context.Context, addr string, token wire.Token, req wire.EnrollRequest) (*wire.EnrollResponse, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, ServerName: wire.ServerName, NextProtos: []string{"h2"},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := wire.VerifyChainPin(raw, token.CAPin)
			return err
		}}
	c := &Client{pair: newPair(addr), clk: clock.Real{}}
	c.hc = &http.Client{Transport: newTransport(conf, c.connectTimeout), Timeout: time.Minute}
	var resp wire.EnrollResponse
	if err := c.json(ctx, "POST", wire.PathEnroll, req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// do sends a request with a body held in memory, again after each busy
// answer (busy.go).
func (c *Client) do(ctx context.Context, method, path, ctype string, body []byte) (*http.Response, error) {
	for attempt := 1; ; attempt++ {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		resp, err := c.doBody(ctx, method, path, ctype, rd)
		wait, again := c.busyWait(err, attempt)
		if !again {
			return resp, err
		}
		if err := c.sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

// doBody is do with a streamed body (sent as it is read, length unknown).
// header holds extra header names and values, in pairs.
func (c *Client) doBody(ctx context.Context, method, path, ctype string, rd io.Reader, header ...string) (*http.Response, error) {
	base := c.base()
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return nil, err
	}
	if ob, ok := rd.(*onceBody); ok && ob.size >= 0 {
		req.ContentLength = ob.size
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	// A request that never got a connection (dial or TLS handshake failed,
	// or the vault closed it during the handshake) reached nothing and may
	// go again even to a single vault (failoverWait).
	var connected atomic.Bool
	req = req.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { connected.Store(true) },
	}))
	resp, err := c.hc.Do(req)
	if err != nil {
		c.unreachable(base)
		return nil, &reachError{err: err, addr: base, connected: connected.Load()}
	}
	c.reached(resp.StatusCode < 300)
	if h := resp.Header.Get(wire.HeaderVaults); h != "" {
		c.learn(h)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		e := &Error{Status: resp.StatusCode}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var we wire.Error
		if json.Unmarshal(b, &we) != nil || we.Message == "" {
			we.Code, we.Message = "http", fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(b))
		}
		e.Code, e.Message, e.RequestID, e.RetryAfter = we.Code, we.Message, we.RequestID, retryAfter(resp)
		if e.RequestID == "" {
			e.RequestID = resp.Header.Get(wire.HeaderRequestID)
		}
		if e.Code == wire.CodeNotLeader {
			e.Leader = resp.Header.Get(wire.HeaderLeader)
			c.notLeader(base, e.Leader)
		}
		return nil, e
	}
	return resp, nil
}

func (c *Client) json(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	resp, err := c.do(ctx, method, path, "application/json", body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.CopyN(io.Discard, resp.Body, wire.MaxAnswer)
		return nil
	}
	// A vault's answer is bounded like any input (docs/protocol.md, "Limits").
	max, name := int64(wire.MaxAnswer), "wire.MaxAnswer"
	if strings.HasPrefix(path, wire.PathVersions) || strings.HasPrefix(path, wire.PathJournal) {
		max, name = wire.MaxListAnswer, "wire.MaxListAnswer"
	}
	if err := wire.DecodeJSON(resp.Body, max, name, out, false); err != nil {
		return fmt.Errorf("read vault answer to %s: %w", path, err)
	}
	return nil
}

// Computer returns the computer's identity, keys and configurations.
func (c *Client) Computer(ctx context.Context) (*wire.Computer, error) {
	var out wire.Computer
	return &out, c.json(ctx, "GET", wire.PathComputer, nil, &out)
}

// PutConfig creates or replaces a configuration.
func (c *Client) PutConfig(ctx context.Context, cfg wire.Config) (*wire.Config, error) {
	var out wire.Config
	return &out, c.json(ctx, "PUT", wire.PathConfigs+url.PathEscape(cfg.Name), cfg, &out)
}

// DeleteConfig removes a configuration (its versions stay).
func (c *Client) DeleteConfig(ctx context.Context, name string) error {
	return c.json(ctx, "DELETE", wire.PathConfigs+url.PathEscape(name), nil, nil)
}

// Open opens a session for a configuration.
func (c *Client) Open(ctx context.Context, config string) (*wire.Session, error) {
	var out wire.Session
	return &out, c.json(ctx, "POST", wire.PathSessions, wire.OpenSession{Config: config}, &out)
}

// Lack returns, for each id, whether the vault lacks it.
func (c *Client) Lack(ctx context.Context, session string, ids [][32]byte) ([]bool, error) {
	resp, err := c.do(ctx, "POST", wire.PathSession+session+"/lack", wire.MediaFrames, wire.AppendIDs(nil, ids))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	bm, err := io.ReadAll(io.LimitReader(resp.Body, int64(len(ids)/8+2)))
	if err != nil {
		return nil, fmt.Errorf("read lack answer: %w", err)
	}
	if len(bm) != (len(ids)+7)/8 {
		return nil, fmt.Errorf("lack answer of %d bytes for %d ids", len(bm), len(ids))
	}
	out := make([]bool, len(ids))
	for i := range out {
		out[i] = bm[i/8]&(1<<(i%8)) != 0
	}
	return out, nil
}

// Upload streams a body of frames; it returns nil once the vault has
// stored them all.
//
// A busy answer that came before the vault read any of the body is waited
// out and the same body sent again; the request says so with Expect:
// 100-continue, so that the body stays unread until the vault wants it.
func (c *Client) Upload(ctx context.Context, session string, frames io.Reader) error {
	var resp *http.Response
	for attempt := 1; ; attempt++ {
		body := &onceBody{r: frames, size: -1}
		if l, ok := frames.(interface{ Len() int }); ok { // a body in memory: say its length
			body.size = int64(l.Len())
		}
		var err error
		resp, err = c.doBody(ctx, "POST", wire.PathSession+session+"/chunks", wire.MediaFrames, body, "Expect", "100-continue")
		untouched := body.end()
		wait, again := c.busyWait(err, attempt)
		if !again || !untouched {
			if err != nil {
				return err
			}
			break
		}
		if err := c.sleep(ctx, wait); err != nil {
			return err
		}
	}
	io.Copy(io.Discard, resp.Body)
	return resp.Body.Close()
}

// Commit commits the session's version.
func (c *Client) Commit(ctx context.Context, session string, commit wire.Commit) (uint64, error) {
	var out wire.Committed
	err := c.json(ctx, "POST", wire.PathSession+session+"/commit", commit, &out)
	return out.Seq, err
}

// Abort drops a session.
func (c *Client) Abort(ctx context.Context, session string) error {
	return c.json(ctx, "POST", wire.PathSession+session+"/abort", struct{}{}, nil)
}

// Versions lists the versions of a configuration ("" for all).
func (c *Client) Versions(ctx context.Context, config string) ([]wire.Manifest, error) {
	if config == "" {
		config = "*"
	}
	var out wire.Versions
	return out.Versions, c.json(ctx, "GET", wire.PathVersions+url.PathEscape(config), nil, &out)
}

// GetChunks downloads chunks; fn is called for each frame in order (the
// frame is valid only during the call).
func (c *Client) GetChunks(ctx context.Context, ids [][32]byte, fn func(f *wire.Frame) error) error {
	return c.getChunks(ctx, ids, 0, func(f *wire.Frame, _ io.Reader) error { return fn(f) })
}

// GetChunksStream is GetChunks for a caller that writes a large chunk out
// as it arrives instead of holding it whole: a chunk the vault holds and
// sends stored (no codec) of at least stream bytes comes with Payload nil
// and its content to read from body during fn (what fn leaves unread is
// skipped); every other frame comes whole, with body nil. Nothing in such
// a chunk is checked against its id before fn has read it all.
func (c *Client) GetChunksStream(ctx context.Context, ids [][32]byte, stream int, fn func(f *wire.Frame, body io.Reader) error) error {
	return c.getChunks(ctx, ids, max(stream, 1), fn)
}

func (c *Client) getChunks(ctx context.Context, ids [][32]byte, stream int, fn func(f *wire.Frame, body io.Reader) error) error {
	resp, err := c.do(ctx, "POST", wire.PathChunks, wire.MediaFrames, wire.AppendIDs(nil, ids))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	fr := c.takeFrameReader()
	if fr == nil {
		fr = wire.NewFrameReader(resp.Body)
	} else {
		fr.Reset(resp.Body)
	}
	defer c.keepFrameReader(fr)
	for i := range ids {
		f, err := fr.NextHeader()
		if err == nil && f.ID != ids[i] {
			return fmt.Errorf("download: vault answered chunk %x for %x", f.ID[:8], ids[i][:8])
		}
		var body io.Reader
		if err == nil {
			if stream > 0 && f.Kind == wire.StatusOK && f.Flags == 0 && fr.PayloadLeft() >= stream && fr.PayloadLeft() == int(f.PlainLen) {
				body = fr
			} else {
				err = fr.ReadPayload(f)
			}
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("download chunk %d of %d: %w", i+1, len(ids), err)
		}
		if f.Kind != wire.StatusOK && len(f.Payload) > wire.MaxReason {
			f.Payload = f.Payload[:wire.MaxReason] // a reason, shown to the user
		}
		if err := fn(f, body); err != nil {
			return err
		}
	}
	return nil
}

// Journal records changed nodes on top of the configuration's last version.
func (c *Client) Journal(ctx context.Context, session string, j wire.JournalCommit) (*wire.Journal, error) {
	var out wire.Journal
	return &out, c.json(ctx, "POST", wire.PathSession+session+"/journal", j, &out)
}

// JournalOf lists the journal records on top of version base (0: the last).
func (c *Client) JournalOf(ctx context.Context, config string, base uint64) ([]wire.Journal, error) {
	var out []wire.Journal
	q := ""
	if base > 0 {
		q = "?base=" + strconv.FormatUint(base, 10)
	}
	return out, c.json(ctx, "GET", wire.PathJournal+url.PathEscape(config)+q, nil, &out)
}

// Report tells the vault the state of a configuration.
func (c *Client) Report(ctx context.Context, r wire.Report) error {
	return c.json(ctx, "POST", wire.PathStatus, r, nil)
}

// ReportRestore tells the vault of a restore the agent runs on its own, as
// it starts and as it ends (its audit log shows every restore).
func (c *Client) ReportRestore(ctx context.Context, r wire.RestoreReport) error {
	return c.postCounted(ctx, wire.PathRestoreReport, r, r.Kept != 0 || r.Reused != 0, func() any {
		r.Kept, r.Reused = 0, 0
		return r
	})
}

// postCounted posts body to path. A vault older than the kept and reused
// counts of a restore refuses fields it does not know (strict decoding:
// bad_request): when body has them (counted), plain's body without them is
// posted then.
func (c *Client) postCounted(ctx context.Context, path string, body any, counted bool, plain func() any) error {
	err := c.json(ctx, "POST", path, body, nil)
	if counted && IsCode(err, wire.CodeBadRequest) {
		err = c.json(ctx, "POST", path, plain(), nil)
	}
	return err
}

// PutSettings sets the computer's settings (its bandwidth profile).
func (c *Client) PutSettings(ctx context.Context, s wire.Settings) (*wire.Settings, error) {
	var out wire.Settings
	return &out, c.json(ctx, "PUT", wire.PathSettings, s, &out)
}

// PollCommands waits (up to poll.WaitMS) for commands from the vault
// (docs/protocol.md, "Commands").
func (c *Client) PollCommands(ctx context.Context, poll wire.CommandPoll) (*wire.CommandBatch, error) {
	var out wire.CommandBatch
	return &out, c.json(ctx, "POST", wire.PathCommandPoll, poll, &out)
}

// CommandProgress reports a running command's progress.
func (c *Client) CommandProgress(ctx context.Context, id string, p wire.CommandProgress) error {
	return c.json(ctx, "POST", wire.PathCommand+url.PathEscape(id)+"/progress", p, nil)
}

// RestorePoint reads the version and journal records of restore command
// id (one naming another computer of the company, or a moment).
func (c *Client) RestorePoint(ctx context.Context, id string) (*wire.RestorePoint, error) {
	var out wire.RestorePoint
	return &out, c.json(ctx, "GET", wire.PathRestorePoint(url.PathEscape(id)), nil, &out)
}

// CommandResult reports how a command ended.
func (c *Client) CommandResult(ctx context.Context, id string, r wire.CommandResult) error {
	return c.postCounted(ctx, wire.PathCommand+url.PathEscape(id)+"/result", r, r.Kept != 0 || r.Reused != 0, func() any {
		r.Kept, r.Reused = 0, 0
		return r
	})
}
