package pair

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"vaultnode/internal/wire"
)

// Joining: `vaultctl pair create` on the leader makes a one-time token
// (its secret, the CA's pin, the leader's agent address); the new member
// sends the secret and its public key to the leader's agent API (the
// vault's certificate checked against the pin, as an agent's enrolment
// does). The leader answers a member certificate and, for a data member,
// the CA's key and the master key sealed with a key derived from the
// secret: never in the clear, even inside TLS. Company keys are in the
// catalog (sealed with the master key) and come with the log.

// PathJoin is the join route on the leader's agent API.
const PathJoin = "/v1/pair/join"

// Limits of joining.
const (
	MaxTokenLife   = 24 * time.Hour
	MaxJoinTokenLn = 512
	tokenPrefix    = "vnpair1."
)

// Errors of joining.
var (
	ErrJoinToken = errors.New("pair join token is unknown, used or expired: make a new one with `vaultctl pair create` on the leader")
)

var b64 = base64.RawURLEncoding

// JoinToken is what `vaultctl pair create` prints.
type JoinToken struct {
	Secret [32]byte
	CAPin  [32]byte
	Leader string // the leader's agent API address
}

// String encodes the token.
func (t JoinToken) String() string {
	return tokenPrefix + b64.EncodeToString(t.Secret[:]) + "." + b64.EncodeToString(t.CAPin[:]) + "." + t.Leader
}

// ParseJoinToken decodes a token, bounded.
func ParseJoinToken(s string) (JoinToken, error) {
	var t JoinToken
	s = strings.TrimSpace(s)
	if len(s) > MaxJoinTokenLn {
		return t, fmt.Errorf("%w: token of %d bytes is over the %d-byte limit", ErrInvalid, len(s), MaxJoinTokenLn)
	}
	rest, ok := strings.CutPrefix(s, tokenPrefix)
	parts := strings.SplitN(rest, ".", 3) // base64url has no dot; the address may
	if !ok || len(parts) != 3 || parts[2] == "" {
		return t, fmt.Errorf("%w: not a pair join token (vnpair1.SECRET.PIN.ADDRESS)", ErrInvalid)
	}
	a, err1 := b64.DecodeString(parts[0])
	b, err2 := b64.DecodeString(parts[1])
	if err1 != nil || err2 != nil || len(a) != 32 || len(b) != 32 {
		return t, fmt.Errorf("%w: pair join token: bad secret or pin", ErrInvalid)
	}
	copy(t.Secret[:], a)
	copy(t.CAPin[:], b)
	t.Leader = parts[2]
	return t, nil
}

// JoinRequest is what a new member sends.
type JoinRequest struct {
	Secret    []byte `json:"secret"`
	ID        string `json:"id"`
	Raft      string `json:"raft"`  // its pair address
	Agent     string `json:"agent"` // its agent API address (none for a witness)
	Witness   bool   `json:"witness,omitempty"`
	PublicKey []byte `json:"public_key"` // PKIX DER of its member key
}

// JoinResponse is the leader's answer.
type JoinResponse struct {
	Certificate []byte `json:"certificate"` // DER of the member certificate
	CA          []byte `json:"ca"`          // PEM of the vault's CA
	// Sealed holds a data member's Secrets, sealed (nonce first) with
	// SHA-256("vaultnode pair join" || secret).
	Sealed []byte `json:"sealed,omitempty"`
}

// Secrets are what a data member must share with the leader.
type Secrets struct {
	CAKey     []byte `json:"ca_key"` // PEM
	MasterKey []byte `json:"master_key"`
}

func joinAEAD(secret []byte) (aeadSealer, error) {
	k := sha256.Sum256(append([]byte("vaultnode pair join"), secret...))
	return chacha20poly1305.NewX(k[:])
}

type aeadSealer interface {
	NonceSize() int
	Seal(dst, nonce, plaintext, additionalData []byte) []byte
	Open(dst, nonce, ciphertext, additionalData []byte) ([]byte, error)
}

// SealSecrets seals a data member's secrets with the token's secret.
func SealSecrets(secret []byte, s Secrets) ([]byte, error) {
	a, err := joinAEAD(secret)
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(s)
	nonce := make([]byte, a.NonceSize())
	rand.Read(nonce)
	return a.Seal(nonce, nonce, b, []byte("pair secrets")), nil
}

// OpenSecrets opens what SealSecrets sealed.
func OpenSecrets(secret, sealed []byte) (Secrets, error) {
	var s Secrets
	a, err := joinAEAD(secret)
	if err != nil {
		return s, err
	}
	if len(sealed) < a.NonceSize() || len(sealed) > 64<<10 {
		return s, fmt.Errorf("%w: sealed secrets of %d bytes", ErrInvalid, len(sealed))
	}
	b, err := a.Open(nil, sealed[:a.NonceSize()], sealed[a.NonceSize():], []byte("pair secrets"))
	if err != nil {
		return s, fmt.Errorf("open the pair's secrets: %w (a token of another pair?)", err)
	}
	if err := json.Unmarshal(b, &s); err != nil || len(s.MasterKey) != 32 {
		return s, fmt.Errorf("%w: the pair's secrets do not decode", ErrInvalid)
	}
	return s, nil
}

// Tokens are the leader's outstanding join tokens (in memory: a token
// outlives no restart of the leader, and is used once).
type Tokens struct {
	mu sync.Mutex
	m  map[[32]byte]time.Time // SHA-256 of the secret -> expiry
}

// Make records a new token's secret until now+life.
func (ts *Tokens) Make(now time.Time, life time.Duration) ([32]byte, error) {
	if life <= 0 || life > MaxTokenLife {
		return [32]byte{}, fmt.Errorf("%w: token lifetime %s (over 0, at most %s)", ErrInvalid, life, MaxTokenLife)
	}
	var secret [32]byte
	rand.Read(secret[:])
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.m == nil {
		ts.m = map[[32]byte]time.Time{}
	}
	for k, exp := range ts.m {
		if now.After(exp) {
			delete(ts.m, k)
		}
	}
	ts.m[sha256.Sum256(secret[:])] = now.Add(life)
	return secret, nil
}

// Use consumes a token at now.
func (ts *Tokens) Use(secret []byte, now time.Time) error {
	h := sha256.Sum256(secret)
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for k, exp := range ts.m {
		if subtle.ConstantTimeCompare(k[:], h[:]) == 1 {
			delete(ts.m, k)
			if now.After(exp) {
				return ErrJoinToken
			}
			return nil
		}
	}
	return ErrJoinToken
}

// Join asks the leader named in tok to admit this member: it checks the
// leader's certificate against the token's pin.
func Join(ctx context.Context, tok JoinToken, req JoinRequest) (*JoinResponse, error) {
	req.Secret = tok.Secret[:]
	conf := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, ServerName: wire.ServerName,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := wire.VerifyChainPin(raw, tok.CAPin)
			return err
		}}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true}, Timeout: time.Minute}
	b, _ := json.Marshal(req)
	hreq, err := http.NewRequestWithContext(ctx, "POST", "https://"+tok.Leader+PathJoin, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("reach the pair's leader %s: %w", tok.Leader, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read the leader's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var we wire.Error
		json.Unmarshal(body, &we)
		return nil, fmt.Errorf("join the pair: %s: %s", resp.Status, we.Message)
	}
	var out JoinResponse
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("join the pair: the leader's answer: %w", err)
	}
	return &out, nil
}
