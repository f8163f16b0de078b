package xaes

import (
	"bytes"
	"crypto/cipher"
	"crypto/sha3"
	"encoding/hex"
	"errors"
	"flag"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVectors checks the two vectors of the spec, including its
// intermediate values (one with MSB_1(L) = 0, one with 1).
func TestVectors(t *testing.T) {
	for _, v := range []struct {
		key, k1, kx, ad, ciphertext string
	}{
		{
			key:        "0101010101010101010101010101010101010101010101010101010101010101",
			k1:         "e531954aca063d5b8d9c47a47d4cc6f0",
			kx:         "c8612c9ed53fe43e8e005b828a1631a0bbcb6ab2f46514ec4f439fcfd0fa969b",
			ciphertext: "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271",
		},
		{
			key:        "0303030303030303030303030303030303030303030303030303030303030303",
			k1:         "23810ec50edb99f374409466ed1f4b7b",
			kx:         "e9c621d4cdd9b11b00a6427ad7e559aeedd66b3857646677748f8ca796cb3fd8",
			ad:         "c2sp.org/XAES-256-GCM",
			ciphertext: "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d",
		},
	} {
		nonce := []byte("ABCDEFGHIJKLMNOPQRSTUVWX")
		plain := []byte("XAES-256-GCM")
		a, err := New(unhex(t, v.key))
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(a.k1[:]); got != v.k1 {
			t.Errorf("K1 = %s, want %s", got, v.k1)
		}
		var kx [KeySize]byte
		a.deriveKey(&kx, nonce)
		if got := hex.EncodeToString(kx[:]); got != v.kx {
			t.Errorf("Kx = %s, want %s", got, v.kx)
		}
		c := a.Seal([]byte("dst"), nonce, plain, []byte(v.ad))
		if got := hex.EncodeToString(c[3:]); string(c[:3]) != "dst" || got != v.ciphertext {
			t.Errorf("ciphertext = %q %s, want dst %s", c[:3], got, v.ciphertext)
		}
		p, err := a.Open(nil, nonce, c[3:], []byte(v.ad))
		if err != nil || !bytes.Equal(p, plain) {
			t.Errorf("Open = %q, %v", p, err)
		}
		c[len(c)-1] ^= 1
		if _, err := a.Open(nil, nonce, c[3:], []byte(v.ad)); !errors.Is(err, ErrOpen) {
			t.Errorf("tampered tag: err = %v, want ErrOpen", err)
		}
	}
}

var million = flag.Bool("xaes.million", false, "run the spec's accumulated vector for 1,000,000 iterations instead of 10,000 (about a minute)")

// TestAccumulated runs the spec's accumulated randomized test: keys,
// nonces, plaintexts and additional data read from one SHAKE-128 stream,
// every ciphertext hashed into another.
func TestAccumulated(t *testing.T) {
	n, want := 10_000, "e6b9edf2df6cec60c8cbd864e2211b597fb69a529160cd040d56c0c210081939"
	if *million {
		n, want = 1_000_000, "2163ae1445985a30b60585ee67daa55674df06901b890593e824b8a7c885ab15"
	}
	s, d := sha3.NewSHAKE128(), sha3.NewSHAKE128()
	var start [16]byte
	sc := *s
	_, _ = sc.Read(start[:])
	if got := hex.EncodeToString(start[:]); got != "7f9c2ba4e88f827d616045507605853e" {
		t.Fatalf("the SHAKE-128 stream starts %s", got)
	}
	key, nonce, l := make([]byte, KeySize), make([]byte, NonceSize), make([]byte, 1)
	for range n {
		_, _ = s.Read(key)
		_, _ = s.Read(nonce)
		_, _ = s.Read(l)
		plain := make([]byte, l[0])
		_, _ = s.Read(plain)
		_, _ = s.Read(l)
		ad := make([]byte, l[0])
		_, _ = s.Read(ad)
		a, err := New(key)
		if err != nil {
			t.Fatal(err)
		}
		c := a.Seal(nil, nonce, plain, ad)
		_, _ = d.Write(c)
		p, err := a.Open(nil, nonce, c, ad)
		if err != nil || !bytes.Equal(p, plain) {
			t.Fatalf("round trip failed: %v", err)
		}
	}
	var sum [32]byte
	_, _ = d.Read(sum[:])
	if got := hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("accumulated hash of %d iterations = %s, want %s", n, got, want)
	}
}

func TestErrors(t *testing.T) {
	if _, err := New(make([]byte, 16)); err == nil {
		t.Fatal("a 16-byte key was accepted")
	}
	a, err := New(make([]byte, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("a 12-byte nonce did not panic")
		}
	}()
	a.Seal(nil, make([]byte, 12), nil, nil)
}

func benchAEAD(b *testing.B, a cipher.AEAD, n int, open bool) {
	nonce := make([]byte, a.NonceSize())
	buf := make([]byte, n)
	ad := make([]byte, 48)
	sealed := a.Seal(nil, nonce, buf, ad)
	out := make([]byte, 0, n+a.Overhead())
	b.SetBytes(int64(n))
	b.ReportAllocs()
	for b.Loop() {
		if open {
			if _, err := a.Open(out[:0], nonce, sealed, ad); err != nil {
				b.Fatal(err)
			}
		} else {
			out = a.Seal(out[:0], nonce, buf, ad)
		}
	}
}

// BenchmarkAEAD compares XAES-256-GCM with XChaCha20-Poly1305 at the
// sizes of pack entries.
func BenchmarkAEAD(b *testing.B) {
	key := make([]byte, KeySize)
	x, _ := New(key)
	c, _ := chacha20poly1305.NewX(key)
	for _, n := range []struct {
		name string
		n    int
	}{{"4KiB", 4 << 10}, {"64KiB", 64 << 10}, {"1MiB", 1 << 20}} {
		for _, op := range []string{"seal", "open"} {
			b.Run("xaes/"+op+"/"+n.name, func(b *testing.B) { benchAEAD(b, x, n.n, op == "open") })
			b.Run("xchacha/"+op+"/"+n.name, func(b *testing.B) { benchAEAD(b, c, n.n, op == "open") })
		}
	}
}
