// Package state is the agent's state directory: its identity (key,
// certificate, pinned vault CA) and, per configuration, the listing of the
// last committed version, which serves as the cache of unchanged files.
package state

import (
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
	"os"
	"path/filepath"
	"time"

	"vaultnode/internal/atomicfile"
)

// ErrNotEnrolled means the state directory holds no identity.
var ErrNotEnrolled = errors.New("this computer is not enrolled: run `vault-agent enroll -vault HOST:PORT -token TOKEN`")

// Identity is what enrolment gave the agent.
type Identity struct {
	Vault    string `json:"vault"` // HOST:PORT
	Computer string `json:"computer"`
	Company  string `json:"company"`
	Hostname string `json:"hostname"`
}

// Dir is a state directory.
type Dir struct{ Path string }

// Open makes the directory if needed.
func Open(path string) (*Dir, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	return &Dir{Path: abs}, nil
}

func (d *Dir) file(name string) string { return filepath.Join(d.Path, name) }

// NewKey makes the computer's key and returns a PEM certificate request.
// The key stays aside (key.pem.new) until SaveIdentity, so a refused
// enrolment leaves an existing identity working.
func (d *Dir) NewKey(hostname string) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(d.file("key.pem.new"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: hostname}}, key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}), nil
}

// SaveIdentity stores the enrolment result.
func (d *Dir) SaveIdentity(id Identity, certPEM, caPEM []byte) error {
	if err := os.Rename(d.file("key.pem.new"), d.file("key.pem")); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	if err := atomicfile.WriteFile(d.file("cert.pem"), certPEM, 0o600); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(d.file("ca.pem"), caPEM, 0o600); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(id, "", "  ")
	return atomicfile.WriteFile(d.file("identity.json"), b, 0o600)
}

// SetVault replaces the vault's addresses in the identity (a pair's leader
// listed a different set of members).
func (d *Dir) SetVault(addrs string) error {
	var id Identity
	b, err := os.ReadFile(d.file("identity.json"))
	if err != nil {
		return fmt.Errorf("update vault addresses: %w", err)
	}
	if err := json.Unmarshal(b, &id); err != nil {
		return fmt.Errorf("update vault addresses: read %s: %w", d.file("identity.json"), err)
	}
	id.Vault = addrs
	b, _ = json.MarshalIndent(id, "", "  ")
	return atomicfile.WriteFile(d.file("identity.json"), b, 0o600)
}

// Load returns the identity, the client certificate and the pinned CA pool.
func (d *Dir) Load() (Identity, tls.Certificate, *x509.CertPool, error) {
	var id Identity
	b, err := os.ReadFile(d.file("identity.json"))
	if errors.Is(err, os.ErrNotExist) {
		return id, tls.Certificate{}, nil, ErrNotEnrolled
	}
	if err != nil {
		return id, tls.Certificate{}, nil, err
	}
	if err := json.Unmarshal(b, &id); err != nil {
		return id, tls.Certificate{}, nil, fmt.Errorf("read %s: %w", d.file("identity.json"), err)
	}
	cert, err := tls.LoadX509KeyPair(d.file("cert.pem"), d.file("key.pem"))
	if err != nil {
		return id, cert, nil, fmt.Errorf("load identity: %w (enrol again)", err)
	}
	caPEM, err := os.ReadFile(d.file("ca.pem"))
	if err != nil {
		return id, cert, nil, fmt.Errorf("load pinned vault CA: %w (enrol again)", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return id, cert, nil, fmt.Errorf("pinned vault CA %s is not a PEM certificate (enrol again)", d.file("ca.pem"))
	}
	return id, cert, pool, nil
}

// ConfigDir is where a configuration's cache lives.
func (d *Dir) ConfigDir(name string) (string, error) {
	p := filepath.Join(d.Path, "configs", name)
	return p, os.MkdirAll(p, 0o700)
}

// Last is the record of a configuration's last committed version.
type Last struct {
	Seq uint64 `json:"seq"`
	// Started is when the synchronization that made the listing began to
	// read the tree. A change made while it ran can leave an object's
	// ctime as it was read (timestamps are coarse), so objects whose ctime
	// is not clearly before Started are read again next time. Zero in
	// caches written before it was recorded: the listing file's mtime, a
	// later time, is used instead.
	Started time.Time `json:"started,omitzero"`
}

// LastListing returns the path of the cached listing and the record of the
// version it belongs to (Seq 0 when there is none).
func (d *Dir) LastListing(config string) (string, Last) {
	dir := filepath.Join(d.Path, "configs", config)
	b, err := os.ReadFile(filepath.Join(dir, "last.json"))
	if err != nil {
		return "", Last{}
	}
	var l Last
	if json.Unmarshal(b, &l) != nil {
		return "", Last{}
	}
	p := filepath.Join(dir, "last.listing")
	fi, err := os.Stat(p)
	if err != nil {
		return "", Last{}
	}
	if l.Started.IsZero() {
		l.Started = fi.ModTime()
	}
	return p, l
}

// DropListing forgets the cached listing of config: the next
// synchronization has none (and fetches the vault's newest).
func (d *Dir) DropListing(config string) error {
	dir := filepath.Join(d.Path, "configs", config)
	for _, name := range []string{"last.json", "last.listing"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// CommitListing makes a freshly written listing file the cache for last.
func (d *Dir) CommitListing(config, tmp string, last Last) error {
	dir, err := d.ConfigDir(config)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "last.listing")); err != nil {
		return err
	}
	b, _ := json.Marshal(last)
	return atomicfile.WriteFile(filepath.Join(dir, "last.json"), b, 0o600)
}
