package wire

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"vaultnode/internal/limit"
)

// A token is "vn1_" + base64url(secret, 18 bytes) + "_" + base64url(SHA-256
// of the vault CA certificate). The second part lets the agent trust the
// vault on first contact without any other channel (like kubeadm's CA pin).
const tokenPrefix = "vn1_"

var b64 = base64.RawURLEncoding

// ErrToken is wrapped by every token parsing error.
var ErrToken = errors.New("malformed enrolment token")

// Token is a parsed enrolment token.
type Token struct {
	Secret [18]byte
	CAPin  [32]byte
}

// String encodes the token.
func (t Token) String() string {
	return tokenPrefix + b64.EncodeToString(t.Secret[:]) + "_" + b64.EncodeToString(t.CAPin[:])
}

// ParseToken decodes a token as printed by `vaultctl token create`.
func ParseToken(s string) (Token, error) {
	var t Token
	if err := limit.Check("wire.MaxTokenLen", "token length", uint64(len(s)), MaxTokenLen); err != nil {
		return t, fmt.Errorf("%w: %w", ErrToken, err)
	}
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, tokenPrefix)
	if !ok {
		return t, fmt.Errorf("%w: it must start with %q (copy it whole from `vaultctl token create`)", ErrToken, tokenPrefix)
	}
	// The secret part has a fixed length: '_' is in the base64url alphabet,
	// so the parts cannot be split at the first '_'.
	n := b64.EncodedLen(len(t.Secret))
	if len(rest) <= n || rest[n] != '_' {
		return t, fmt.Errorf("%w: missing the CA pin part", ErrToken)
	}
	sec, pin := rest[:n], rest[n+1:]
	a, err := b64.DecodeString(sec)
	if err != nil || len(a) != len(t.Secret) {
		return t, fmt.Errorf("%w: bad secret part", ErrToken)
	}
	b, err := b64.DecodeString(pin)
	if err != nil || len(b) != len(t.CAPin) {
		return t, fmt.Errorf("%w: bad CA pin part", ErrToken)
	}
	copy(t.Secret[:], a)
	copy(t.CAPin[:], b)
	return t, nil
}

// Pin is the SHA-256 of a certificate's DER bytes.
func Pin(cert *x509.Certificate) [32]byte { return sha256.Sum256(cert.Raw) }

// ErrPin means the server's CA is not the one the token or state names.
var ErrPin = errors.New("vault CA does not match the pinned fingerprint")

// VerifyChainPin checks that a verified server chain ends in the CA with the
// given pin.
func VerifyChainPin(rawCerts [][]byte, pin [32]byte) (*x509.Certificate, error) {
	if len(rawCerts) < 2 {
		return nil, fmt.Errorf("%w: server sent %d certificates, want leaf and CA", ErrPin, len(rawCerts))
	}
	ca, err := x509.ParseCertificate(rawCerts[len(rawCerts)-1])
	if err != nil {
		return nil, fmt.Errorf("parse vault CA: %w", err)
	}
	got := Pin(ca)
	if subtle.ConstantTimeCompare(got[:], pin[:]) != 1 {
		return nil, fmt.Errorf("%w: got %x, want %x (is this the vault that made the token?)", ErrPin, got[:8], pin[:8])
	}
	leaf, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return nil, fmt.Errorf("parse vault certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: ServerName}); err != nil {
		return nil, fmt.Errorf("verify vault certificate: %w", err)
	}
	return ca, nil
}
