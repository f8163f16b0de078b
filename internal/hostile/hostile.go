// Package hostile is an agent that attacks its vault: slow bodies, stalled
// downloads, floods of sessions, oversized and deeply nested listings, the
// memory-exhaustion commit and slow certificate-less enrolment. It speaks
// the agent protocol (docs/protocol.md) over raw HTTP/2 with its own
// enrolled certificate. The hostile-agent suite (agentkit/e2e) and the
// abuse benchmark (scripts/abuse) use it; production code never imports it.
package hostile

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"vaultnode/internal/clock"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// Agent is an enrolled computer that misbehaves.
type Agent struct {
	Addr     string
	Computer wire.Computer
	Clock    clock.Clock

	tlsConf *tls.Config
	hasher  *keys.Hasher

	mu    sync.Mutex
	conns []*http.Transport // one HTTP/2 connection each
}

// Error is a vault's error answer.
type Error struct {
	Status int
	Code   string
	Msg    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("vault answered %d %s: %s", e.Status, e.Code, e.Msg)
}

// IsCode reports whether err is a vault answer with code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

func transport(conf *tls.Config) *http.Transport {
	return &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true, MaxIdleConns: 1, MaxConnsPerHost: 1,
		TLSHandshakeTimeout: time.Minute}
}

func pinned(token wire.Token) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, ServerName: wire.ServerName,
		NextProtos: []string{"h2"},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := wire.VerifyChainPin(raw, token.CAPin)
			return err
		}}
}

// Enroll enrols a computer named name with a token from `vaultctl token
// create`.
func Enroll(ctx context.Context, addr, token, name string) (*Agent, error) {
	tok, err := wire.ParseToken(token)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, err
	}
	req := wire.EnrollRequest{Token: token, Hostname: name, CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})}
	hc := &http.Client{Transport: transport(pinned(tok))}
	defer hc.CloseIdleConnections()
	var resp wire.EnrollResponse
	if err := doJSON(ctx, hc, "https://"+addr, "POST", wire.PathEnroll, req, &resp); err != nil {
		return nil, fmt.Errorf("enrol %s: %w", name, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(resp.Certificate, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	if err != nil {
		return nil, fmt.Errorf("enrol %s: certificate: %w", name, err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(resp.CA)
	a := &Agent{Addr: addr, Clock: clock.Real{}, tlsConf: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		RootCAs: pool, ServerName: wire.ServerName, NextProtos: []string{"h2"}}}
	if err := a.JSON(ctx, 0, "GET", wire.PathComputer, nil, &a.Computer); err != nil {
		return nil, err
	}
	if len(a.Computer.ChunkKey) != 32 {
		return nil, fmt.Errorf("vault sent a chunk key of %d bytes", len(a.Computer.ChunkKey))
	}
	a.hasher = keys.NewHasher([32]byte(a.Computer.ChunkKey))
	return a, nil
}

// Close drops the agent's connections.
func (a *Agent) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, t := range a.conns {
		t.CloseIdleConnections()
	}
}

// client is the agent's i-th HTTP/2 connection (made on first use).
func (a *Agent) client(i int) *http.Client {
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(a.conns) <= i {
		a.conns = append(a.conns, transport(a.tlsConf))
	}
	return &http.Client{Transport: a.conns[i]}
}

// ID is the chunk id of plain for this agent's company. Attacks run at
// once: the hasher is not safe for concurrent use.
func (a *Agent) ID(plain []byte) [32]byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.hasher.Sum(plain)
}

func answer(resp *http.Response) error {
	if resp.StatusCode < 300 {
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var we wire.Error
	json.Unmarshal(b, &we)
	return &Error{Status: resp.StatusCode, Code: we.Code, Msg: we.Message}
}

func doJSON(ctx context.Context, hc *http.Client, base, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	if err := answer(resp); err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// JSON sends a JSON request on connection conn.
func (a *Agent) JSON(ctx context.Context, conn int, method, path string, in, out any) error {
	return doJSON(ctx, a.client(conn), "https://"+a.Addr, method, path, in, out)
}

// Post sends body on connection conn and returns the answer unread (the
// caller closes it).
func (a *Agent) Post(ctx context.Context, conn int, path, ctype string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", "https://"+a.Addr+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", ctype)
	resp, err := a.client(conn).Do(req)
	if err != nil {
		return nil, err
	}
	if err := answer(resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// PutConfig creates a files configuration.
func (a *Agent) PutConfig(ctx context.Context, name string) error {
	return a.JSON(ctx, 0, "PUT", wire.PathConfigs+url.PathEscape(name), wire.Config{Kind: wire.KindFiles, Paths: []string{"/srv/" + name}}, nil)
}

// Open opens a session for config.
func (a *Agent) Open(ctx context.Context, config string) (string, error) {
	var s wire.Session
	err := a.JSON(ctx, 0, "POST", wire.PathSessions, wire.OpenSession{Config: config}, &s)
	return s.ID, err
}

// Upload sends frames in one request, again while the vault answers busy
// (the attacks' own requests hold their company's slots).
func (a *Agent) Upload(ctx context.Context, session string, frames []byte) error {
	for {
		resp, err := a.Post(ctx, 0, wire.PathSession+session+"/chunks", wire.MediaFrames, bytes.NewReader(frames))
		if IsCode(err, wire.CodeBusy) && ctx.Err() == nil {
			select {
			case <-a.Clock.After(time.Second):
			case <-ctx.Done():
			}
			continue
		}
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	}
}

// Commit commits a listing.
func (a *Agent) Commit(ctx context.Context, session string, listing []tree.ChunkRef) error {
	return a.JSON(ctx, 0, "POST", wire.PathSession+session+"/commit", wire.Commit{Listing: listing}, nil)
}

// Frame is a frame of plain, compressed when that saves.
func Frame(kind uint8, id [32]byte, plain []byte) []byte {
	payload, flags := wire.Compress(nil, plain)
	return wire.AppendFrame(nil, &wire.Frame{ID: id, Kind: kind, Flags: flags, PlainLen: uint32(len(plain)), Payload: payload})
}

// Tally counts how an attack's attempts ended.
type Tally struct {
	mu    sync.Mutex
	Count map[string]int
}

func (t *Tally) add(outcome string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.Count == nil {
		t.Count = map[string]int{}
	}
	t.Count[outcome]++
}

// Get returns the count of outcome.
func (t *Tally) Get(outcome string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.Count[outcome]
}

func (t *Tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var parts []string
	for k, v := range t.Count {
		parts = append(parts, k+"="+strconv.Itoa(v))
	}
	return strings.Join(parts, " ")
}

// outcome names how a request ended.
func outcome(err error) string {
	var e *Error
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &e):
		return e.Code
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "held to the end"
	default:
		return "cut off"
	}
}

// VmHWM is the peak resident set of process pid, in bytes.
func VmHWM(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}
