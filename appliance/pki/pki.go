// Package pki is the vault's own certificate authority: it makes the CA and
// the server certificate on first start and signs the certificates of
// enrolled computers.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"vaultnode/internal/atomicfile"
	"vaultnode/internal/wire"
)

// Authority is a loaded CA with the server's certificate.
type Authority struct {
	CA     *x509.Certificate
	CAPEM  []byte
	key    crypto.Signer
	Server tls.Certificate
}

// LoadOrCreate loads DIR/ca.pem, ca.key, server.pem, server.key, making
// any that are missing.
func LoadOrCreate(dir string, now time.Time) (*Authority, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create tls dir: %w", err)
	}
	caCert, caKey := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key")
	if _, err := os.Stat(caCert); errors.Is(err, os.ErrNotExist) {
		if err := makeCA(caCert, caKey, now); err != nil {
			return nil, err
		}
	}
	a := &Authority{}
	var err error
	a.CAPEM, err = os.ReadFile(caCert)
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	pair, err := tls.LoadX509KeyPair(caCert, caKey)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	a.CA, err = x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse CA: %w", err)
	}
	a.key = pair.PrivateKey.(crypto.Signer)
	srvCert, srvKey := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	if _, err := os.Stat(srvCert); errors.Is(err, os.ErrNotExist) {
		if err := a.makeServer(srvCert, srvKey, now); err != nil {
			return nil, err
		}
	}
	a.Server, err = tls.LoadX509KeyPair(srvCert, srvKey)
	if err != nil {
		return nil, fmt.Errorf("load server certificate: %w", err)
	}
	a.Server.Certificate = append(a.Server.Certificate, a.CA.Raw) // send the chain for pinning
	return a, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	// Durable: a key lost to a power cut makes the vault refuse to start
	// ("failed to find any PEM data") while every enrolled agent pins the lost CA.
	return atomicfile.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func makeCA(certPath, keyPath string, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate CA key: %w", err)
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "vaultnode CA " + host, Organization: []string{"vaultnode"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(30, 0, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("create CA: %w", err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return fmt.Errorf("write CA key: %w", err)
	}
	return atomicfile.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func (a *Authority) makeServer(certPath, keyPath string, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate server key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: wire.ServerName},
		DNSNames: []string{wire.ServerName, "localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.CA, &key.PublicKey, a.key)
	if err != nil {
		return fmt.Errorf("create server certificate: %w", err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return fmt.Errorf("write server key: %w", err)
	}
	return atomicfile.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// SignComputer signs a computer's certificate request. The certificate's
// common name is the computer id and its organization the company.
func (a *Authority) SignComputer(csrPEM []byte, id, company string, now time.Time) ([]byte, string, error) {
	blk, _ := pem.Decode(csrPEM)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, "", errors.New("certificate request is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, "", fmt.Errorf("parse certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, "", fmt.Errorf("certificate request signature: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: id, Organization: []string{company}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.CA, csr.PublicKey, a.key)
	if err != nil {
		return nil, "", fmt.Errorf("sign computer certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), Fingerprint(der), nil
}

// Fingerprint is the hex SHA-256 of a certificate's DER.
func Fingerprint(der []byte) string { h := sha256.Sum256(der); return hex.EncodeToString(h[:]) }

// Pool returns a pool holding the CA.
func (a *Authority) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(a.CA)
	return p
}

// MemberOrg is the organization of a pair member's certificate (an agent's
// names its company, which never holds a space).
const MemberOrg = "vaultnode pair"

// MemberName is the DNS name in every member certificate.
const MemberName = "member.vaultnode"

// SignMember signs the certificate of pair member id for pub: both server
// and client of the pair's mutual TLS.
func (a *Authority) SignMember(pub crypto.PublicKey, id string, now time.Time) ([]byte, error) {
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "member " + id, Organization: []string{MemberOrg}},
		DNSNames: []string{MemberName}, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.CA, pub, a.key)
	if err != nil {
		return nil, fmt.Errorf("sign member certificate: %w", err)
	}
	return der, nil
}

// NewMemberKey makes a member's private key and its PEM encoding.
func NewMemberKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate member key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MemberFiles are where a member keeps its certificate and key.
func MemberFiles(dir string) (cert, key string) {
	return filepath.Join(dir, "member.pem"), filepath.Join(dir, "member.key")
}

// LoadOrCreateMember loads DIR/member.pem and member.key, signing a new
// certificate for member id when there is none (a member holding the CA).
func (a *Authority) LoadOrCreateMember(dir, id string, now time.Time) (tls.Certificate, error) {
	certPath, keyPath := MemberFiles(dir)
	if _, err := os.Stat(certPath); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return tls.Certificate{}, fmt.Errorf("write member key: %w", err)
		}
		key, keyPEM, err := NewMemberKey()
		if err != nil {
			return tls.Certificate{}, err
		}
		der, err := a.SignMember(&key.PublicKey, id, now)
		if err != nil {
			return tls.Certificate{}, err
		}
		if err := atomicfile.WriteFile(keyPath, keyPEM, 0o600); err != nil {
			return tls.Certificate{}, fmt.Errorf("write member key: %w", err)
		}
		if err := atomicfile.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
			return tls.Certificate{}, fmt.Errorf("write member certificate: %w", err)
		}
	}
	return LoadMember(dir)
}

// LoadMember loads DIR/member.pem and member.key.
func LoadMember(dir string) (tls.Certificate, error) {
	certPath, keyPath := MemberFiles(dir)
	c, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return c, fmt.Errorf("load member certificate: %w", err)
	}
	return c, nil
}

// PoolFromPEM is a pool of the CA certificates in pemCerts.
func PoolFromPEM(pemCerts []byte) (*x509.CertPool, error) {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pemCerts) {
		return nil, errors.New("no CA certificate in the PEM")
	}
	return p, nil
}
