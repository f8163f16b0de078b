// Package mail sends the vault's e-mail: a durable outbound queue under
// DATA/mail (docs/format.md, "Outbound mail") and its sender, which speaks
// SMTP with STARTTLS and authentication through github.com/wneessen/go-mail.
// What to send, and to whom, is the vault's (appliance/vault/notify.go).
//
// A message is sent at most once, whatever crashes: it is marked "sending"
// (synced) after its whole body has gone to the server but before the line
// that ends it, and "sent" after the server's 250. A crash between the two
// leaves it "uncertain": never sent again, and listed so an operator sees
// it. DESIGN in docs/format.md.
package mail

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"os"
	"path/filepath"
	"strings"

	"vaultnode/internal/atomicfile"
)

// Errors of the package.
var (
	// ErrNotConfigured: no SMTP server is set (vaultctl mail set).
	ErrNotConfigured = errors.New("no SMTP server is configured: set one with `vaultctl mail set -host HOST -from ADDRESS ...`")
	ErrInvalid       = errors.New("invalid")
	ErrCorrupt       = errors.New("corrupt mail file")
)

// Security is how the connection to the SMTP server is protected.
const (
	SecuritySTARTTLS = "starttls" // default: plain connection, then STARTTLS, which the server must offer
	SecurityTLS      = "tls"      // TLS from the first byte (port 465)
	SecurityNone     = "none"     // no TLS: only for a relay on the appliance itself, and never with a password
)

// Settings are the SMTP server the vault sends through.
type Settings struct {
	Host     string `json:"host"`
	Port     int    `json:"port,omitempty"`     // default 587 (465 with tls)
	Security string `json:"security,omitempty"` // SecuritySTARTTLS (default), SecurityTLS or SecurityNone
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// SealedPassword is the password sealed by the vault (Queue.SetUnseal
	// opens it), as the settings file and a pair's log hold it; Password
	// is then empty.
	SealedPassword []byte `json:"sealed_password,omitempty"`
	// From is the envelope and header sender.
	From string `json:"from"`
	// CA is PEM of the certificates that sign the server's; empty: the
	// system's roots.
	CA string `json:"ca,omitempty"`
}

// settingsFile is the settings' file under the mail directory (mode 0600:
// it holds the SMTP password).
const settingsFile = "smtp.json"

// maxSealed bounds a sealed password.
const maxSealed = 1024

// maxFile bounds every file the package reads.
const maxFile = 1 << 20

// Normalize fills defaults and checks s.
func (s Settings) Normalize() (Settings, error) {
	if s.Security == "" {
		s.Security = SecuritySTARTTLS
	}
	switch s.Security {
	case SecuritySTARTTLS, SecurityNone:
		if s.Port == 0 {
			s.Port = 587
		}
	case SecurityTLS:
		if s.Port == 0 {
			s.Port = 465
		}
	default:
		return s, fmt.Errorf("%w security %q: use starttls, tls or none", ErrInvalid, s.Security)
	}
	if s.Host == "" || strings.ContainsAny(s.Host, " /\r\n") {
		return s, fmt.Errorf("%w SMTP host %q", ErrInvalid, s.Host)
	}
	if s.Port < 1 || s.Port > 65535 {
		return s, fmt.Errorf("%w SMTP port %d", ErrInvalid, s.Port)
	}
	if _, err := ParseAddress(s.From); err != nil {
		return s, fmt.Errorf("sender: %w", err)
	}
	hasPassword := s.Password != "" || len(s.SealedPassword) > 0
	if len(s.SealedPassword) > maxSealed {
		return s, fmt.Errorf("%w: sealed password of %d bytes, at most %d", ErrInvalid, len(s.SealedPassword), maxSealed)
	}
	if s.Security == SecurityNone && hasPassword {
		return s, fmt.Errorf("%w: a password is never sent without TLS: use -security starttls or tls", ErrInvalid)
	}
	if (s.Username == "") != !hasPassword {
		return s, fmt.Errorf("%w: give both a user name and a password, or neither", ErrInvalid)
	}
	if s.CA != "" {
		if !x509.NewCertPool().AppendCertsFromPEM([]byte(s.CA)) {
			return s, fmt.Errorf("%w: the CA holds no PEM certificate", ErrInvalid)
		}
	}
	return s, nil
}

// ParseAddress checks one plain e-mail address (no display name).
func ParseAddress(a string) (string, error) {
	if len(a) > 254 || strings.ContainsAny(a, "\r\n<>") {
		return "", fmt.Errorf("%w e-mail address %q", ErrInvalid, a)
	}
	p, err := mail.ParseAddress(a)
	if err != nil || p.Name != "" || p.Address != a {
		return "", fmt.Errorf("%w e-mail address %q: write it as name@domain", ErrInvalid, a)
	}
	return a, nil
}

// LoadSettings reads the settings of the mail directory dir
// (ErrNotConfigured when none were saved).
func LoadSettings(dir string) (Settings, error) {
	var s Settings
	b, err := readBounded(filepath.Join(dir, settingsFile))
	if errors.Is(err, os.ErrNotExist) {
		return s, ErrNotConfigured
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%w %s: %v", ErrCorrupt, settingsFile, err)
	}
	return s.Normalize()
}

// SaveSettings checks and saves s in the mail directory dir.
func SaveSettings(dir string, s Settings) (Settings, error) {
	s, err := s.Normalize()
	if err != nil {
		return s, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return s, fmt.Errorf("create mail directory: %w", err)
	}
	b, _ := json.MarshalIndent(s, "", "  ")
	if err := atomicfile.WriteFile(filepath.Join(dir, settingsFile), b, 0o600); err != nil {
		return s, fmt.Errorf("save mail settings: %w", err)
	}
	return s, nil
}

// SetUnseal gives the queue what opens a sealed password (the vault's
// master key). Call it before Run.
func (q *Queue) SetUnseal(fn func(sealed []byte) (string, error)) { q.unseal = fn }

// Settings reads the settings with the password opened.
func (q *Queue) Settings() (Settings, error) {
	s, err := LoadSettings(q.dir)
	if err != nil || len(s.SealedPassword) == 0 {
		return s, err
	}
	if q.unseal == nil {
		return s, fmt.Errorf("open the SMTP password: it is sealed and nothing here opens it")
	}
	pw, err := q.unseal(s.SealedPassword)
	if err != nil {
		return s, fmt.Errorf("open the SMTP password: %w (set the mail settings again)", err)
	}
	s.Password, s.SealedPassword = pw, nil
	return s, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxFile {
		return nil, fmt.Errorf("%w %s: over %d bytes", ErrCorrupt, filepath.Base(path), maxFile)
	}
	return b, nil
}
