package pack_test

import (
	"bytes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
	"vaultnode/internal/xaes"
)

// The frozen fixtures of the pack format. Each was written once by
// `go test ./internal/pack -run TestFixtureVN -update-fixture` and must
// never be regenerated: they stand for packs already on disk at customers.
// If the format moves on, add a fixture next to them and keep these
// readable. Version 1 sealed entries with XChaCha20-Poly1305 (cipher byte
// 0, then reserved); version 2 with XAES-256-GCM (cipher byte 1).
const (
	fixtureV1     = "testdata/v1.pack"
	fixtureV1Hash = "73f2bd50a29e6aa8990367af15b25abb54b10d2b0264f82865b0fc2003d357d9"
	fixtureV2     = "testdata/v2.pack"
	fixtureV2Hash = "711cc89c95b909579e733f51fbd26e9c4702a6fec29e0837a9db9cf880b3c8b7"
)

var updateFixture = flag.Bool("update-fixture", false, "rewrite the frozen format fixtures (never for a released format)")

// fixtureSecret is the company secret of the fixture.
func fixtureSecret() [32]byte {
	var s [32]byte
	copy(s[:], "vaultnode fixture secret v1.....")
	return s
}

func fixtureNonce(i int) [pack.NonceSize]byte {
	var n [pack.NonceSize]byte
	for j := range n {
		n[j] = byte(0xA0 + i*pack.NonceSize + j)
	}
	return n
}

type fixtureEntry struct {
	kind  pack.Kind
	plain []byte
	zstd  bool
}

var (
	fixtureText    = []byte("hello vault")
	fixtureLog     = []byte(strings.Repeat("2026-11-24T00:00:00Z backup finished, 0 errors\n", 1400))
	fixtureTimeA   = time.Date(2026, 11, 24, 1, 2, 3, 0, time.UTC)
	fixtureTimeB   = time.Date(2026, 11, 24, 1, 5, 0, 0, time.UTC)
	fixtureNodes   = []tree.Node{{Path: []byte("."), Type: tree.TypeDir, Mode: 0o755}, {Path: []byte("hello.txt"), Type: tree.TypeFile, Mode: 0o644, Size: 11}}
	fixtureCompany = "fixture"
)

func fixtureListing(t testing.TB, hs *keys.Hasher) []byte {
	var buf bytes.Buffer
	w, err := tree.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range fixtureNodes {
		n := n
		if n.Type == tree.TypeFile {
			n.Chunks = []tree.ChunkRef{{ID: hs.Sum(fixtureText), Len: uint32(len(fixtureText))}}
		}
		if err := w.Write(&n); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func fixtureManifest(hs *keys.Hasher, listing []byte) wire.Manifest {
	return wire.Manifest{Magic: wire.ManifestMagic, Company: fixtureCompany, Computer: "c0ffee", Config: "home", Seq: 1,
		Started: fixtureTimeA, Finished: fixtureTimeB,
		Listing: []tree.ChunkRef{{ID: hs.Sum(listing), Len: uint32(len(listing))}},
		Totals:  wire.Totals{Files: 1, Dirs: 1, Bytes: 11, ChunksSent: 2, BytesSent: 11 + int64(len(listing))}}
}

// sealEntry builds an entry like pack.AppendEntry but with a given cipher
// and nonce: with pack.CipherXChaCha20Poly1305 it is the sealing path of
// the versions before XAES-256-GCM.
func sealEntry(dst []byte, key [32]byte, c pack.Cipher, h *pack.EntryHeader, nonce [pack.NonceSize]byte, payload []byte) []byte {
	h.Cipher = c
	h.BodyLen = uint32(pack.Overhead + len(payload))
	hb := h.Marshal()
	dst = append(dst, hb[:]...)
	dst = append(dst, nonce[:]...)
	var a cipher.AEAD = pack.NewAEAD(key)
	if c == pack.CipherXAES256GCM {
		x, err := xaes.New(key[:])
		if err != nil {
			panic(err)
		}
		a = x
	}
	return a.Seal(dst, nonce[:], payload, hb[:48])
}

func writeFixture(t *testing.T, path string, c pack.Cipher) {
	ks := keys.Derive(fixtureSecret())
	hs := keys.NewHasher(ks.ChunkID)
	listing := fixtureListing(t, hs)
	mb, err := tree.Marshal(fixtureManifest(hs, listing))
	if err != nil {
		t.Fatal(err)
	}
	entries := []fixtureEntry{
		{pack.KindData, fixtureText, false},
		{pack.KindData, fixtureLog, true},
		{pack.KindListing, listing, false},
		{pack.KindManifest, mb, false},
	}
	b, err := pack.FileHeader{Company: fixtureCompany, Number: 0x102}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range entries {
		h := pack.EntryHeader{Kind: e.kind, ID: hs.Sum(e.plain), PlainLen: uint32(len(e.plain))}
		payload := e.plain
		if e.zstd {
			var fl uint8
			payload, fl = wire.Compress(nil, e.plain)
			if fl != wire.FlagZstd {
				t.Fatal("fixture log did not compress")
			}
			h.Flags = pack.FlagZstd
		}
		b = sealEntry(b, ks.Pack, c, &h, fixtureNonce(i), payload)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	t.Logf("wrote %s (%d bytes), sha256 %x: put it in its hash constant", path, len(b), sum)
}

// TestFixtureV1 reads the frozen version 1 pack (XChaCha20-Poly1305) with
// the current code.
func TestFixtureV1(t *testing.T) {
	testFixture(t, fixtureV1, fixtureV1Hash, pack.CipherXChaCha20Poly1305)
}

// TestFixtureV2 reads the frozen version 2 pack (XAES-256-GCM) with the
// current code.
func TestFixtureV2(t *testing.T) {
	testFixture(t, fixtureV2, fixtureV2Hash, pack.CipherXAES256GCM)
}

func testFixture(t *testing.T, path, hash string, c pack.Cipher) {
	if *updateFixture && hash == "" {
		writeFixture(t, path, c)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != hash {
		t.Fatalf("%s was changed (sha256 %x): frozen fixtures are never rewritten; restore it with git", path, sum)
	}
	ks := keys.Derive(fixtureSecret())
	hs := keys.NewHasher(ks.ChunkID)
	aead := pack.NewSealer(ks.Pack)

	sc, err := pack.NewScanner(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("current code cannot read the pack header of %s: %v", path, err)
	}
	if want := (pack.FileHeader{Company: fixtureCompany, Number: 0x102}); sc.Header != want {
		t.Fatalf("header = %+v, want %+v", sc.Header, want)
	}
	wantListing := fixtureListing(t, hs)
	want := []struct {
		kind  pack.Kind
		flags uint8
		plain []byte
	}{
		{pack.KindData, 0, fixtureText},
		{pack.KindData, pack.FlagZstd, fixtureLog},
		{pack.KindListing, 0, wantListing},
		{pack.KindManifest, 0, nil}, // checked below
	}
	var rebuilt []byte
	rebuilt, _ = pack.FileHeader{Company: fixtureCompany, Number: 0x102}.Marshal()
	var manifest []byte
	for i := 0; ; i++ {
		off := sc.Offset()
		e, err := sc.Next()
		if err == io.EOF {
			if i != len(want) {
				t.Fatalf("%d entries, want %d", i, len(want))
			}
			break
		}
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if i >= len(want) {
			t.Fatalf("more than %d entries", len(want))
		}
		if e.Offset != off || e.Header.Kind != want[i].kind || e.Header.Flags != want[i].flags || e.Header.Cipher != c {
			t.Fatalf("entry %d: offset %d kind %d flags %d cipher %v, want %d %d %d %v", i, e.Offset, e.Header.Kind, e.Header.Flags, e.Header.Cipher,
				off, want[i].kind, want[i].flags, c)
		}
		if got := [pack.NonceSize]byte(e.Body[:pack.NonceSize]); got != fixtureNonce(i) {
			t.Fatalf("entry %d: nonce is not at the start of the body", i)
		}
		payload, err := pack.OpenBody(nil, aead, &e.Header, e.Body)
		if err != nil {
			t.Fatalf("entry %d: current code cannot open a %s entry: %v", i, path, err)
		}
		plain, err := wire.Decompress(nil, e.Header.Flags, payload, e.Header.PlainLen)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if hs.Sum(plain) != keys.ID(e.Header.ID) {
			t.Fatalf("entry %d: chunk id %x is not the keyed BLAKE3 of its content: key derivation or hashing changed", i, e.Header.ID[:8])
		}
		if want[i].plain != nil && !bytes.Equal(plain, want[i].plain) {
			t.Fatalf("entry %d: content differs", i)
		}
		if e.Header.Kind == pack.KindManifest {
			manifest = plain
		}
		// The current writer, given the same nonce, writes the same bytes.
		h := pack.EntryHeader{Kind: e.Header.Kind, Flags: e.Header.Flags, ID: e.Header.ID, PlainLen: e.Header.PlainLen}
		rebuilt = sealEntry(rebuilt, ks.Pack, c, &h, fixtureNonce(i), payload)
	}
	if !bytes.Equal(rebuilt, b) {
		t.Fatalf("the current encoder writes different bytes for the %s entries", path)
	}

	// The listing chunk reads with the current listing reader.
	rd, err := tree.NewReader(bytes.NewReader(wantListing))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		n, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if string(n.Path) != string(fixtureNodes[i].Path) {
			t.Fatalf("listing node %d is %q", i, n.Path)
		}
	}
	// The manifest decodes strictly into the current Manifest.
	var m wire.Manifest
	if err := tree.Unmarshal(manifest, &m); err != nil {
		t.Fatalf("current code cannot decode the manifest of %s: %v", path, err)
	}
	if diff := cmp.Diff(fixtureManifest(hs, wantListing), m); diff != "" {
		t.Fatalf("%s manifest decodes differently (-want +got):\n%s", path, diff)
	}
}
