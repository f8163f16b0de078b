package pack_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"strings"
	"testing"

	"vaultnode/internal/pack"
)

func testKey(b byte) [32]byte {
	var k [32]byte
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

func TestFileHeaderRoundTrip(t *testing.T) {
	for _, h := range []pack.FileHeader{
		{Company: "a", Number: 0},
		{Company: "acme", Number: 1},
		{Company: "0123456789abcdef", Number: 0xffffffff},
		{Company: "x.y_z-1", Number: 256},
	} {
		b, err := h.Marshal()
		if err != nil {
			t.Fatalf("Marshal(%+v): %v", h, err)
		}
		if len(b) != pack.FileHeaderSize {
			t.Fatalf("Marshal(%+v) = %d bytes, want %d", h, len(b), pack.FileHeaderSize)
		}
		if !bytes.HasPrefix(b, []byte("VNPACK\x00\x01")) {
			t.Fatalf("Marshal(%+v) magic = %q", h, b[:8])
		}
		if !bytes.Equal(b[28:32], []byte{0, 0, 0, 0}) {
			t.Fatalf("reserved bytes = %x, want zero", b[28:32])
		}
		got, err := pack.ParseFileHeader(b)
		if err != nil {
			t.Fatalf("ParseFileHeader: %v", err)
		}
		if got != h {
			t.Fatalf("round trip: got %+v, want %+v", got, h)
		}
	}
}

func TestFileHeaderErrors(t *testing.T) {
	for _, c := range []string{"", "0123456789abcdefg"} {
		if _, err := (pack.FileHeader{Company: c}).Marshal(); err == nil {
			t.Errorf("Marshal company %q: no error", c)
		}
	}
	good, _ := pack.FileHeader{Company: "acme", Number: 7}.Marshal()
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, pack.ErrCorrupt},
		{"short", good[:31], pack.ErrCorrupt},
		{"bad magic", append([]byte("VNPACK\x00\x02"), good[8:]...), pack.ErrMagic},
		{"not a pack", bytes.Repeat([]byte{0}, 32), pack.ErrMagic},
	}
	for _, tt := range tests {
		if _, err := pack.ParseFileHeader(tt.b); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
}

func sealed(t testing.TB, key [32]byte, h pack.EntryHeader, payload []byte) []byte {
	t.Helper()
	return pack.AppendEntry(nil, pack.NewSealer(key), &h, payload)
}

func TestEntryRoundTrip(t *testing.T) {
	key := testKey(1)
	aead := pack.NewSealer(key)
	tests := []struct {
		name    string
		h       pack.EntryHeader
		payload []byte
	}{
		{"empty data", pack.EntryHeader{Kind: pack.KindData}, nil},
		{"data", pack.EntryHeader{Kind: pack.KindData, ID: [32]byte{1, 2, 3}, PlainLen: 5}, []byte("hello")},
		{"zstd listing", pack.EntryHeader{Kind: pack.KindListing, Flags: pack.FlagZstd, ID: [32]byte{9}, PlainLen: 1000}, bytes.Repeat([]byte{7}, 100)},
		{"manifest", pack.EntryHeader{Kind: pack.KindManifest, ID: [32]byte{0xff}, PlainLen: 3}, []byte("abc")},
		{"big", pack.EntryHeader{Kind: pack.KindData, PlainLen: 1 << 20}, bytes.Repeat([]byte("x"), 1<<20)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.h
			prefix := []byte("prefix")
			b := pack.AppendEntry(append([]byte(nil), prefix...), aead, &h, tt.payload)
			if !bytes.HasPrefix(b, prefix) {
				t.Fatal("AppendEntry clobbered dst")
			}
			b = b[len(prefix):]
			if want := uint32(pack.Overhead + len(tt.payload)); h.BodyLen != want {
				t.Fatalf("BodyLen = %d, want %d", h.BodyLen, want)
			}
			if len(b) != pack.EntryHeaderSize+int(h.BodyLen) {
				t.Fatalf("entry is %d bytes, want %d", len(b), pack.EntryHeaderSize+int(h.BodyLen))
			}
			if string(b[:4]) != "VNE1" {
				t.Fatalf("entry magic %q", b[:4])
			}
			if b[6] != byte(pack.CipherXAES256GCM) || h.Cipher != pack.CipherXAES256GCM {
				t.Fatalf("cipher byte %d, header says %v: new entries are sealed with XAES-256-GCM", b[6], h.Cipher)
			}
			if crc := crc32.Checksum(b[:48], crc32.MakeTable(crc32.Castagnoli)); crc != binary.LittleEndian.Uint32(b[48:52]) {
				t.Fatalf("header crc %08x does not match bytes", crc)
			}
			got, err := pack.ParseEntryHeader(b)
			if err != nil {
				t.Fatalf("ParseEntryHeader: %v", err)
			}
			if got != h {
				t.Fatalf("header round trip: got %+v, want %+v", got, h)
			}
			out, err := pack.OpenBody([]byte("dst"), aead, &got, b[pack.EntryHeaderSize:])
			if err != nil {
				t.Fatalf("OpenBody: %v", err)
			}
			if !bytes.Equal(out, append([]byte("dst"), tt.payload...)) {
				t.Fatalf("OpenBody payload differs")
			}
			// Two seals of the same payload use different nonces.
			h2 := tt.h
			b2 := pack.AppendEntry(nil, aead, &h2, tt.payload)
			if bytes.Equal(b[pack.EntryHeaderSize:pack.EntryHeaderSize+pack.NonceSize], b2[pack.EntryHeaderSize:pack.EntryHeaderSize+pack.NonceSize]) {
				t.Fatal("two entries share a nonce")
			}
		})
	}
}

// TestEntryTamper flips every bit of a sealed entry: each flip must be
// caught by the header parser or by authentication, never give data.
func TestEntryTamper(t *testing.T) {
	key := testKey(1)
	aead := pack.NewSealer(key)
	payload := []byte("the quick brown fox jumps over the lazy dog")
	b := sealed(t, key, pack.EntryHeader{Kind: pack.KindData, ID: [32]byte{4, 5}, PlainLen: uint32(len(payload))}, payload)
	for i := range b {
		for bit := 0; bit < 8; bit++ {
			c := append([]byte(nil), b...)
			c[i] ^= 1 << bit
			h, err := pack.ParseEntryHeader(c)
			if err != nil {
				continue
			}
			if int(h.BodyLen) != len(c)-pack.EntryHeaderSize {
				continue // a reader would see a truncated or different body
			}
			if out, err := pack.OpenBody(nil, aead, &h, c[pack.EntryHeaderSize:]); err == nil {
				t.Fatalf("flip of byte %d bit %d not detected: opened %q", i, bit, out)
			}
		}
	}
	// The wrong key never opens.
	h, _ := pack.ParseEntryHeader(b)
	if _, err := pack.OpenBody(nil, pack.NewSealer(testKey(2)), &h, b[pack.EntryHeaderSize:]); !errors.Is(err, pack.ErrAuth) {
		t.Fatalf("wrong key: err = %v, want ErrAuth", err)
	}
}

// TestCiphers opens entries sealed by the versions before XAES-256-GCM
// (XChaCha20-Poly1305, cipher byte 0) next to new ones, and checks the
// cipher byte is bound to the body and bounded.
func TestCiphers(t *testing.T) {
	key := testKey(3)
	s := pack.NewSealer(key)
	payload := []byte("sealed before and after")
	for _, c := range []pack.Cipher{pack.CipherXChaCha20Poly1305, pack.CipherXAES256GCM} {
		h := pack.EntryHeader{Kind: pack.KindData, ID: [32]byte{5}, PlainLen: uint32(len(payload))}
		b := sealEntry(nil, key, c, &h, fixtureNonce(1), payload)
		got, err := pack.ParseEntryHeader(b)
		if err != nil || got.Cipher != c {
			t.Fatalf("%v: parsed cipher %v, %v", c, got.Cipher, err)
		}
		out, err := pack.OpenBody(nil, s, &got, b[pack.EntryHeaderSize:])
		if err != nil || !bytes.Equal(out, payload) {
			t.Fatalf("%v: OpenBody = %q, %v", c, out, err)
		}
		// The cipher byte is in the associated data: naming the other
		// cipher (with a fixed CRC) never opens.
		other := got
		other.Cipher = 1 - c
		if _, err := pack.OpenBody(nil, s, &other, b[pack.EntryHeaderSize:]); !errors.Is(err, pack.ErrAuth) {
			t.Fatalf("%v body under a %v header: err = %v, want ErrAuth", c, other.Cipher, err)
		}
	}
	// An unknown cipher is a clear error naming the byte, never a panic.
	h := pack.EntryHeader{Kind: pack.KindData, Cipher: 9, PlainLen: 1, BodyLen: pack.Overhead + 1}
	_, err := pack.OpenBody(nil, s, &h, make([]byte, pack.Overhead+1))
	if !errors.Is(err, pack.ErrCipher) || !errors.Is(err, pack.ErrCorrupt) || !strings.Contains(err.Error(), "cipher byte 9") {
		t.Fatalf("unknown cipher: err = %v, want ErrCipher naming byte 9", err)
	}
	hb := h.Marshal()
	if _, err := pack.ParseEntryHeader(hb[:]); !errors.Is(err, pack.ErrCipher) || !strings.Contains(err.Error(), "cipher byte 9") {
		t.Fatalf("unknown cipher header: err = %v, want ErrCipher naming byte 9", err)
	}
}

// TestBodyBoundToHeader moves a body under another (valid) header: the
// seal's associated data must refuse it.
func TestBodyBoundToHeader(t *testing.T) {
	key := testKey(1)
	aead := pack.NewSealer(key)
	b := sealed(t, key, pack.EntryHeader{Kind: pack.KindData, ID: [32]byte{1}, PlainLen: 3}, []byte("abc"))
	h, _ := pack.ParseEntryHeader(b)
	for name, mut := range map[string]func(h *pack.EntryHeader){
		"other id":     func(h *pack.EntryHeader) { h.ID[0] = 2 },
		"other kind":   func(h *pack.EntryHeader) { h.Kind = pack.KindListing },
		"other flags":  func(h *pack.EntryHeader) { h.Flags = pack.FlagZstd },
		"other length": func(h *pack.EntryHeader) { h.PlainLen = 4 },
	} {
		h2 := h
		mut(&h2)
		if _, err := pack.OpenBody(nil, aead, &h2, b[pack.EntryHeaderSize:]); !errors.Is(err, pack.ErrAuth) {
			t.Errorf("%s: err = %v, want ErrAuth", name, err)
		}
	}
	// Body length disagreeing with the header.
	if _, err := pack.OpenBody(nil, aead, &h, b[pack.EntryHeaderSize:len(b)-1]); !errors.Is(err, pack.ErrCorrupt) {
		t.Errorf("short body: err = %v, want ErrCorrupt", err)
	}
	short := h
	short.BodyLen = 10
	if _, err := pack.OpenBody(nil, aead, &short, b[pack.EntryHeaderSize:pack.EntryHeaderSize+10]); !errors.Is(err, pack.ErrCorrupt) {
		t.Errorf("body under overhead: err = %v, want ErrCorrupt", err)
	}
}

func withCRC(b []byte) []byte {
	binary.LittleEndian.PutUint32(b[48:], crc32.Checksum(b[:48], crc32.MakeTable(crc32.Castagnoli)))
	return b
}

func TestParseEntryHeaderErrors(t *testing.T) {
	good := (&pack.EntryHeader{Kind: pack.KindData, PlainLen: 10, BodyLen: pack.Overhead + 10}).Marshal()
	mut := func(f func(b []byte)) []byte {
		b := append([]byte(nil), good[:]...)
		f(b)
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"short", good[:51], pack.ErrCorrupt},
		{"magic", mut(func(b []byte) { copy(b, "VNE2"); withCRC(b) }), pack.ErrMagic},
		{"crc", mut(func(b []byte) { b[48] ^= 1 }), pack.ErrCorrupt},
		{"id bit without crc fix", mut(func(b []byte) { b[20] ^= 1 }), pack.ErrCorrupt},
		{"kind 0", mut(func(b []byte) { b[4] = 0; withCRC(b) }), pack.ErrCorrupt},
		{"kind 4", mut(func(b []byte) { b[4] = 4; withCRC(b) }), pack.ErrCorrupt},
		{"unknown flag", mut(func(b []byte) { b[5] = 4; withCRC(b) }), pack.ErrCorrupt},
		{"two codecs", mut(func(b []byte) { b[5] = pack.FlagZstd | pack.FlagS2; withCRC(b) }), pack.ErrCorrupt},
		{"reserved", mut(func(b []byte) { b[7] = 1; withCRC(b) }), pack.ErrCorrupt},
		{"unknown cipher", mut(func(b []byte) { b[6] = 2; withCRC(b) }), pack.ErrCipher},
		{"unknown cipher is corrupt", mut(func(b []byte) { b[6] = 0xff; withCRC(b) }), pack.ErrCorrupt},
		{"plain too long", mut(func(b []byte) { binary.LittleEndian.PutUint32(b[40:], pack.MaxPlain+1); withCRC(b) }), pack.ErrCorrupt},
		{"body under overhead", mut(func(b []byte) { binary.LittleEndian.PutUint32(b[44:], pack.Overhead-1); withCRC(b) }), pack.ErrCorrupt},
		{"body huge", mut(func(b []byte) { binary.LittleEndian.PutUint32(b[44:], 0xffffffff); withCRC(b) }), pack.ErrCorrupt},
	}
	for _, tt := range tests {
		if _, err := pack.ParseEntryHeader(tt.b); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
}

func buildPack(t testing.TB, key [32]byte, payloads ...[]byte) ([]byte, []int64) {
	t.Helper()
	b, err := pack.FileHeader{Company: "acme", Number: 3}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var offs []int64
	for i, p := range payloads {
		offs = append(offs, int64(len(b)))
		h := pack.EntryHeader{Kind: pack.KindData, ID: [32]byte{byte(i)}, PlainLen: uint32(len(p))}
		b = pack.AppendEntry(b, pack.NewSealer(key), &h, p)
	}
	return b, offs
}

func TestScanner(t *testing.T) {
	key := testKey(3)
	aead := pack.NewSealer(key)
	payloads := [][]byte{[]byte("one"), nil, bytes.Repeat([]byte("three"), 300000), []byte("four")}
	b, offs := buildPack(t, key, payloads...)

	sc, err := pack.NewScanner(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if sc.Header != (pack.FileHeader{Company: "acme", Number: 3}) {
		t.Fatalf("header = %+v", sc.Header)
	}
	for i := 0; ; i++ {
		e, err := sc.Next()
		if err == io.EOF {
			if i != len(payloads) {
				t.Fatalf("scanned %d entries, want %d", i, len(payloads))
			}
			break
		}
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if e.Offset != offs[i] || e.Header.ID[0] != byte(i) {
			t.Fatalf("entry %d at %d id %x, want offset %d", i, e.Offset, e.Header.ID[:1], offs[i])
		}
		p, err := pack.OpenBody(nil, aead, &e.Header, e.Body)
		if err != nil || !bytes.Equal(p, payloads[i]) {
			t.Fatalf("entry %d: payload mismatch (err %v)", i, err)
		}
	}
	if sc.Offset() != int64(len(b)) {
		t.Fatalf("Offset after EOF = %d, want %d", sc.Offset(), len(b))
	}

	// A torn tail: every truncation point inside the last entry gives an
	// error naming the last entry's offset, after the earlier ones scan.
	last := offs[len(offs)-1]
	for cut := last + 1; cut < int64(len(b)); cut += 7 {
		sc, err := pack.NewScanner(bytes.NewReader(b[:cut]))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			_, err = sc.Next()
			if err != nil {
				break
			}
			n++
		}
		if err == io.EOF || !errors.Is(err, pack.ErrCorrupt) {
			t.Fatalf("cut at %d: err = %v, want ErrCorrupt", cut, err)
		}
		if n != len(payloads)-1 || sc.Offset() != last {
			t.Fatalf("cut at %d: %d entries, offset %d; want %d entries, offset %d", cut, n, sc.Offset(), len(payloads)-1, last)
		}
	}

	// Garbage after the entries stops the scan at its offset.
	g := append(append([]byte(nil), b...), bytes.Repeat([]byte{0xAB}, 100)...)
	sc, _ = pack.NewScanner(bytes.NewReader(g))
	for {
		if _, err = sc.Next(); err != nil {
			break
		}
	}
	if !errors.Is(err, pack.ErrMagic) || sc.Offset() != int64(len(b)) {
		t.Fatalf("garbage tail: err %v at %d, want ErrMagic at %d", err, sc.Offset(), len(b))
	}

	// A header alone is a valid empty pack; less is not.
	sc, err = pack.NewScanner(bytes.NewReader(b[:pack.FileHeaderSize]))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Next(); err != io.EOF {
		t.Fatalf("empty pack: err = %v, want io.EOF", err)
	}
	if _, err := pack.NewScanner(bytes.NewReader(b[:10])); err == nil {
		t.Fatal("10-byte pack: no error")
	}
}

func FuzzParseFileHeader(f *testing.F) {
	good, _ := pack.FileHeader{Company: "acme", Number: 7}.Marshal()
	f.Add(good)
	f.Add(good[:20])
	f.Add([]byte("VNPACK\x00\x02" + string(good[8:])))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := pack.ParseFileHeader(b)
		if err != nil {
			return
		}
		if len(h.Company) > 16 {
			t.Fatalf("company of %d bytes", len(h.Company))
		}
		if h.Company == "" {
			return // an all-NUL company: Marshal refuses to write it
		}
		m, err := h.Marshal()
		if err != nil {
			t.Fatalf("Marshal of parsed header %+v: %v", h, err)
		}
		h2, err := pack.ParseFileHeader(m)
		if err != nil || h2 != h {
			t.Fatalf("re-parse: %+v %v, want %+v", h2, err, h)
		}
	})
}

func FuzzParseEntryHeader(f *testing.F) {
	for _, h := range []pack.EntryHeader{
		{Kind: pack.KindData, PlainLen: 10, BodyLen: pack.Overhead + 10},
		{Kind: pack.KindListing, Flags: pack.FlagZstd, ID: [32]byte{1}, PlainLen: 4 << 20, BodyLen: 1 << 20},
		{Kind: pack.KindManifest, PlainLen: 0, BodyLen: pack.Overhead},
	} {
		b := h.Marshal()
		f.Add(b[:])
	}
	f.Add([]byte("VNE1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := pack.ParseEntryHeader(b)
		if err != nil {
			return
		}
		if h.Kind < pack.KindData || h.Kind > pack.KindManifest || h.Flags&^pack.FlagZstd != 0 ||
			h.PlainLen > pack.MaxPlain || h.BodyLen < pack.Overhead {
			t.Fatalf("accepted invalid header %+v", h)
		}
		m := h.Marshal()
		if !bytes.Equal(m[:], b[:pack.EntryHeaderSize]) {
			t.Fatalf("accepted header does not re-encode to the same bytes:\n%x\n%x", m, b[:pack.EntryHeaderSize])
		}
	})
}

func FuzzScanner(f *testing.F) {
	key := testKey(5)
	b, _ := buildPack(f, key, []byte("a"), []byte("bb"), bytes.Repeat([]byte("c"), 1000))
	f.Add(b)
	f.Add(b[:len(b)-3])
	f.Add(b[:pack.FileHeaderSize])
	f.Add(b[:pack.FileHeaderSize+60])
	f.Fuzz(func(t *testing.T, b []byte) {
		sc, err := pack.NewScanner(bytes.NewReader(b))
		if err != nil {
			return
		}
		aead := pack.NewSealer(key)
		prev := int64(pack.FileHeaderSize)
		for {
			off := sc.Offset()
			e, err := sc.Next()
			if err == io.EOF {
				if sc.Offset() != int64(len(b)) {
					t.Fatalf("clean EOF at %d of %d bytes", sc.Offset(), len(b))
				}
				return
			}
			if err != nil {
				if sc.Offset() != off {
					t.Fatalf("offset moved on error")
				}
				return
			}
			if e.Offset != prev || int64(len(e.Body)) != int64(e.Header.BodyLen) {
				t.Fatalf("entry at %d (want %d), body %d bytes, header says %d", e.Offset, prev, len(e.Body), e.Header.BodyLen)
			}
			prev = e.Offset + pack.EntryHeaderSize + int64(len(e.Body))
			if sc.Offset() != prev || prev > int64(len(b)) {
				t.Fatalf("offset %d after entry ending at %d (pack %d bytes)", sc.Offset(), prev, len(b))
			}
			_, _ = pack.OpenBody(nil, aead, &e.Header, e.Body) // must not panic
		}
	})
}

func FuzzOpenBody(f *testing.F) {
	key := testKey(6)
	aead := pack.NewSealer(key)
	payload := []byte("sealed payload")
	h := pack.EntryHeader{Kind: pack.KindData, ID: [32]byte{7}, PlainLen: uint32(len(payload))}
	// A fixed nonce: the fuzzing workers must compute the same entry.
	hOld := h
	e := sealEntry(nil, key, pack.CipherXAES256GCM, &h, fixtureNonce(0), payload)
	old := sealEntry(nil, key, pack.CipherXChaCha20Poly1305, &hOld, fixtureNonce(0), payload)
	f.Add(e[pack.EntryHeaderSize:], uint32(0), uint8(pack.CipherXAES256GCM))
	f.Add(old[pack.EntryHeaderSize:], uint32(0), uint8(pack.CipherXChaCha20Poly1305))
	f.Add(e[pack.EntryHeaderSize:], uint32(0), uint8(2))
	f.Add(e[pack.EntryHeaderSize:pack.EntryHeaderSize+20], uint32(0), uint8(1))
	f.Add([]byte{}, uint32(1), uint8(0))
	f.Fuzz(func(t *testing.T, body []byte, delta uint32, c uint8) {
		hh := h
		hh.Cipher = pack.Cipher(c)
		hh.BodyLen = uint32(len(body)) + delta%2
		out, err := pack.OpenBody(nil, aead, &hh, body)
		if err != nil {
			if !errors.Is(err, pack.ErrAuth) && !errors.Is(err, pack.ErrCorrupt) {
				t.Fatalf("error %v is neither ErrAuth nor ErrCorrupt", err)
			}
			return
		}
		// Only a genuine body may open, under its own cipher, and only to
		// its payload.
		genuine := (hh.Cipher == pack.CipherXAES256GCM && bytes.Equal(body, e[pack.EntryHeaderSize:])) ||
			(hh.Cipher == pack.CipherXChaCha20Poly1305 && bytes.Equal(body, old[pack.EntryHeaderSize:]))
		if !genuine || !bytes.Equal(out, payload) {
			t.Fatalf("forged body opened to %q", out)
		}
	})
}

// BenchmarkEntry seals and opens entries of 4 KiB, 64 KiB and 1 MiB with
// each cipher: xchacha is the sealing of the versions before XAES-256-GCM.
func BenchmarkEntry(b *testing.B) {
	key := testKey(8)
	s := pack.NewSealer(key)
	for _, size := range []struct {
		name string
		n    int
	}{{"4KiB", 4 << 10}, {"64KiB", 64 << 10}, {"1MiB", 1 << 20}} {
		payload := bytes.Repeat([]byte{0x5a}, size.n)
		for _, c := range []struct {
			name string
			c    pack.Cipher
		}{{"xchacha", pack.CipherXChaCha20Poly1305}, {"xaes", pack.CipherXAES256GCM}} {
			b.Run("seal/"+c.name+"/"+size.name, func(b *testing.B) {
				b.SetBytes(int64(size.n))
				var dst []byte
				cpuPerOp(b, func() {
					h := pack.EntryHeader{Kind: pack.KindData, PlainLen: uint32(size.n)}
					if c.c == pack.CipherXAES256GCM {
						dst = pack.AppendEntry(dst[:0], s, &h, payload)
					} else {
						dst = sealEntry(dst[:0], key, c.c, &h, fixtureNonce(0), payload)
					}
				})
			})
			b.Run("open/"+c.name+"/"+size.name, func(b *testing.B) {
				h := pack.EntryHeader{Kind: pack.KindData, PlainLen: uint32(size.n)}
				e := sealEntry(nil, key, c.c, &h, fixtureNonce(0), payload)
				out := make([]byte, 0, size.n)
				b.SetBytes(int64(size.n))
				cpuPerOp(b, func() {
					if _, err := pack.OpenBody(out[:0], s, &h, e[pack.EntryHeaderSize:]); err != nil {
						b.Fatal(err)
					}
				})
			})
		}
	}
}
