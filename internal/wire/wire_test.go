package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"vaultnode/internal/limit"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

func TestFrameRoundTrip(t *testing.T) {
	frames := []wire.Frame{
		{ID: [32]byte{1}, Kind: wire.FrameData, PlainLen: 5, Payload: []byte("hello")},
		{ID: [32]byte{2}, Kind: wire.FrameListing, Flags: wire.FlagZstd, PlainLen: 1000, Payload: []byte{0x28, 0xb5, 0x2f, 0xfd}},
		{ID: [32]byte{3}, Kind: wire.StatusMissing, Payload: []byte("the vault has no such chunk")},
		{ID: [32]byte{4}, Kind: wire.FrameData, Payload: []byte{}},
		{ID: [32]byte{5}, Kind: wire.FrameData, PlainLen: 4 << 20, Payload: bytes.Repeat([]byte{9}, 4<<20)},
	}
	var b []byte
	for i := range frames {
		b = wire.AppendFrame(b, &frames[i])
	}
	fr := wire.NewFrameReader(bytes.NewReader(b))
	for i := range frames {
		f, err := fr.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		w := frames[i]
		if f.ID != w.ID || f.Kind != w.Kind || f.Flags != w.Flags || f.PlainLen != w.PlainLen || !bytes.Equal(f.Payload, w.Payload) {
			t.Fatalf("frame %d: got id %x kind %d flags %d plain %d payload %d bytes; want %x %d %d %d %d bytes",
				i, f.ID[:2], f.Kind, f.Flags, f.PlainLen, len(f.Payload), w.ID[:2], w.Kind, w.Flags, w.PlainLen, len(w.Payload))
		}
	}
	if _, err := fr.Next(); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
	// Header layout: id | kind | flags | plain len LE | payload len LE.
	h := b[:wire.FrameHeaderSize]
	if h[0] != 1 || h[32] != wire.FrameData || h[33] != 0 || binary.LittleEndian.Uint32(h[34:]) != 5 || binary.LittleEndian.Uint32(h[38:]) != 5 {
		t.Fatalf("frame header layout changed: %x", h)
	}
}

func TestFrameReaderErrors(t *testing.T) {
	good := wire.AppendFrame(nil, &wire.Frame{Kind: wire.FrameData, PlainLen: 3, Payload: []byte("abc")})
	mut := func(f func(b []byte)) []byte {
		b := append([]byte(nil), good...)
		f(b)
		return b
	}
	tests := []struct {
		name string
		b    []byte
	}{
		{"truncated header", good[:20]},
		{"truncated payload", good[:len(good)-1]},
		{"plain over limit", mut(func(b []byte) { binary.LittleEndian.PutUint32(b[34:], wire.MaxPlain+1) })},
		{"payload over limit", mut(func(b []byte) { binary.LittleEndian.PutUint32(b[38:], 0xffffffff) })},
		{"unknown flags", mut(func(b []byte) { b[33] = 0x80 })},
	}
	for _, tt := range tests {
		_, err := wire.NewFrameReader(bytes.NewReader(tt.b)).Next()
		if !errors.Is(err, wire.ErrFrame) {
			t.Errorf("%s: err = %v, want ErrFrame", tt.name, err)
		}
	}
	if _, err := wire.NewFrameReader(bytes.NewReader(nil)).Next(); err != io.EOF {
		t.Errorf("empty stream: %v, want io.EOF", err)
	}
}

// A frame's payload read in pieces (Read), in part, or not at all is the
// same stream as one read whole: the next frame skips what was left, and
// a payload cut short is an ErrFrame, not a short chunk.
func TestFrameReaderPieces(t *testing.T) {
	big := make([]byte, 300<<10)
	for i := range big {
		big[i] = byte(i * 7)
	}
	frames := []wire.Frame{
		{ID: [32]byte{1}, PlainLen: uint32(len(big)), Payload: big},
		{ID: [32]byte{2}, PlainLen: 3, Payload: []byte("abc")},
		{ID: [32]byte{3}, PlainLen: uint32(len(big)), Payload: big},
		{ID: [32]byte{4}, PlainLen: uint32(len(big)), Payload: big},
		{ID: [32]byte{5}, PlainLen: 2, Payload: []byte("de")},
	}
	var b []byte
	for i := range frames {
		b = wire.AppendFrame(b, &frames[i])
	}
	fr := wire.NewFrameReader(bytes.NewReader(b))
	next := func(id byte) *wire.Frame {
		t.Helper()
		f, err := fr.NextHeader()
		if err != nil || f.ID[0] != id || f.Payload != nil {
			t.Fatalf("NextHeader = %v, %v; want frame %d without its payload", f, err, id)
		}
		return f
	}
	// Read in pieces of 64 KiB.
	next(1)
	if fr.PayloadLeft() != len(big) {
		t.Fatalf("PayloadLeft = %d, want %d", fr.PayloadLeft(), len(big))
	}
	var got []byte
	p := make([]byte, 64<<10)
	for {
		n, err := fr.Read(p)
		got = append(got, p[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, big) {
		t.Fatalf("read %d bytes in pieces, not the payload", len(got))
	}
	// Whole.
	f := next(2)
	if err := fr.ReadPayload(f); err != nil || string(f.Payload) != "abc" {
		t.Fatalf("ReadPayload = %q, %v", f.Payload, err)
	}
	// Read in part, then not at all: both skipped.
	next(3)
	if _, err := io.ReadFull(fr, p[:1000]); err != nil || !bytes.Equal(p[:1000], big[:1000]) {
		t.Fatalf("first 1000 bytes: %v", err)
	}
	next(4)
	f, err := fr.Next()
	if err != nil || f.ID[0] != 5 || string(f.Payload) != "de" {
		t.Fatalf("after skipped payloads: %v, %v", f, err)
	}
	if _, err := fr.NextHeader(); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}

	// Cut in the middle of a payload read in pieces, or of one skipped.
	for _, skip := range []bool{false, true} {
		fr = wire.NewFrameReader(bytes.NewReader(b[:wire.FrameHeaderSize+1000]))
		next(1)
		if skip {
			_, err = fr.NextHeader()
		} else {
			_, err = io.ReadAll(fr)
		}
		if !errors.Is(err, wire.ErrFrame) || !errors.Is(err, io.ErrUnexpectedEOF) && !skip {
			t.Errorf("payload cut short (skipped %v): %v, want ErrFrame", skip, err)
		}
	}
}

func TestIDs(t *testing.T) {
	ids := [][32]byte{{1}, {2, 3}, {0xff}}
	b := wire.AppendIDs(nil, ids)
	if len(b) != 96 {
		t.Fatalf("%d bytes", len(b))
	}
	got, err := wire.ParseIDs(b, 3)
	if err != nil || !cmp.Equal(got, ids) {
		t.Fatalf("ParseIDs = %v, %v", got, err)
	}
	if got, err := wire.ParseIDs(nil, 3); err != nil || len(got) != 0 {
		t.Fatalf("ParseIDs(empty) = %v, %v", got, err)
	}
	for _, tt := range []struct {
		b   []byte
		max int
	}{{b[:95], 3}, {b, 2}, {b[:1], 10}} {
		if _, err := wire.ParseIDs(tt.b, tt.max); !errors.Is(err, wire.ErrFrame) {
			t.Errorf("ParseIDs(%d bytes, max %d): %v, want ErrFrame", len(tt.b), tt.max, err)
		}
	}
}

func TestCompress(t *testing.T) {
	rnd := make([]byte, 100000)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range rnd {
		rnd[i] = byte(r.Uint32())
	}
	// Random bytes behind a compressible header, like a JPEG: the samples
	// say incompressible.
	photo := append([]byte(strings.Repeat("Exif header ", 100)), rnd...)
	// Compressible text with one random stretch the samples miss.
	text := []byte(strings.Repeat("all work and no play makes jack a dull boy\n", 2000))
	tests := []struct {
		name  string
		plain []byte
		want  uint8
	}{
		{"empty", nil, 0},
		{"tiny", []byte("a"), 0},
		{"random", rnd, 0},
		{"photo", photo, 0},
		{"small random", rnd[:5000], 0},
		{"small text", text[:5000], wire.FlagS2},
		{"just under 16 KiB", text[:16<<10-1], wire.FlagS2},
		{"16 KiB", text[:16<<10], wire.FlagZstd},
		{"text", text, wire.FlagZstd},
		{"zeros 4M", make([]byte, 4<<20), wire.FlagZstd},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			payload, fl := wire.Compress(nil, tt.plain)
			if fl != tt.want {
				t.Fatalf("flags %d, want %d", fl, tt.want)
			}
			if fl != 0 && len(payload) >= len(tt.plain)-len(tt.plain)/33 {
				t.Fatalf("compressed to %d of %d bytes: must save 3%%", len(payload), len(tt.plain))
			}
			out, err := wire.Decompress([]byte("x"), fl, payload, uint32(len(tt.plain)))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, append([]byte("x"), tt.plain...)) {
				t.Fatal("round trip differs")
			}
			if _, err := wire.Decompress(nil, fl, payload, uint32(len(tt.plain))+1); !errors.Is(err, wire.ErrFrame) {
				t.Fatalf("wrong declared length: %v, want ErrFrame", err)
			}
		})
	}
	// Garbage flagged as zstd or S2, an S2 block declaring another
	// length, codecs this version does not know.
	if _, err := wire.Decompress(nil, wire.FlagZstd, []byte("not zstd at all"), 15); !errors.Is(err, wire.ErrFrame) {
		t.Fatalf("garbage zstd: %v, want ErrFrame", err)
	}
	if _, err := wire.Decompress(nil, wire.FlagS2, []byte("\x0fnot s2 at all!"), 15); !errors.Is(err, wire.ErrFrame) {
		t.Fatalf("garbage s2: %v, want ErrFrame", err)
	}
	s2p, _ := wire.Compress(nil, text[:5000])
	if _, err := wire.Decompress(nil, wire.FlagS2, s2p, 4999); !errors.Is(err, wire.ErrFrame) {
		t.Fatalf("s2 of another length: %v, want ErrFrame", err)
	}
	if _, err := wire.Decompress(nil, wire.FlagS2, s2p[:len(s2p)-3], 5000); !errors.Is(err, wire.ErrFrame) {
		t.Fatalf("truncated s2: %v, want ErrFrame", err)
	}
	for _, fl := range []uint8{wire.FlagZstd | wire.FlagS2, 4, 0x80} {
		if _, err := wire.Decompress(nil, fl, []byte("abc"), 3); !errors.Is(err, wire.ErrFrame) {
			t.Fatalf("flags %#x: %v, want ErrFrame", fl, err)
		}
	}
}

// TestDecompressBomb: a small frame declaring far more than MaxPlain must be
// refused, not allocated.
func TestDecompressBomb(t *testing.T) {
	big := make([]byte, 64<<20)
	payload, fl := wire.Compress(nil, big)
	if fl != wire.FlagZstd {
		t.Fatal("zeros did not compress")
	}
	if _, err := wire.Decompress(nil, fl, payload, wire.MaxPlain); !errors.Is(err, wire.ErrFrame) {
		t.Fatalf("64 MiB bomb: %v, want ErrFrame", err)
	}
}

func TestToken(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 2000; i++ {
		var tok wire.Token
		for j := range tok.Secret {
			tok.Secret[j] = byte(r.Uint32())
		}
		for j := range tok.CAPin {
			tok.CAPin[j] = byte(r.Uint32())
		}
		s := tok.String()
		got, err := wire.ParseToken("  " + s + "\n")
		if err != nil {
			t.Fatalf("ParseToken(%q) of a token made by Token.String: %v", s, err)
		}
		if got != tok {
			t.Fatalf("round trip of %q differs", s)
		}
	}
}

func TestParseTokenErrors(t *testing.T) {
	var tok wire.Token
	tok.Secret[0] = 1
	good := tok.String()
	for _, s := range []string{
		"",
		"vn1_",
		"vn2_" + good[4:],
		strings.Split(good, "_")[0] + "_" + strings.Split(good, "_")[1],
		good + "AA",
		good[:len(good)-2],
		"vn1_!!!!_" + good[len(good)-43:],
	} {
		if _, err := wire.ParseToken(s); !errors.Is(err, wire.ErrToken) {
			t.Errorf("ParseToken(%q) = %v, want ErrToken", s, err)
		}
	}
}

func FuzzFrameReader(f *testing.F) {
	var b []byte
	b = wire.AppendFrame(b, &wire.Frame{ID: [32]byte{1}, Kind: wire.FrameData, PlainLen: 5, Payload: []byte("hello")})
	b = wire.AppendFrame(b, &wire.Frame{ID: [32]byte{2}, Kind: wire.FrameListing, Flags: wire.FlagZstd, PlainLen: 9, Payload: []byte("zz")})
	f.Add(b)
	f.Add(b[:50])
	f.Add([]byte{})
	f.Add(header(wire.MaxPlain, wire.MaxFramePayload)) // the largest frame, and nothing of it
	f.Add(header(1<<32-1, 1<<32-1))
	f.Fuzz(func(t *testing.T, b []byte) {
		// The payload buffer grows with the bytes that arrive: what a
		// stream declares does not count.
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		fr := wire.NewFrameReader(bytes.NewReader(b))
		for {
			if _, err := fr.Next(); err != nil {
				break
			}
		}
		runtime.ReadMemStats(&after)
		if got, bound := after.TotalAlloc-before.TotalAlloc, 128<<10+3*uint64(len(b)); got > bound {
			t.Fatalf("reading %d bytes of frames allocated %d, over %d", len(b), got, bound)
		}
		fr = wire.NewFrameReader(bytes.NewReader(b))
		var re []byte
		for {
			fm, err := fr.Next()
			if err == io.EOF {
				// Everything read re-encodes to exactly the input.
				if !bytes.Equal(re, b) {
					t.Fatalf("frames re-encode to %d bytes of %d", len(re), len(b))
				}
				return
			}
			if err != nil {
				if !errors.Is(err, wire.ErrFrame) {
					t.Fatalf("error %v does not wrap ErrFrame", err)
				}
				return
			}
			if fm.PlainLen > wire.MaxPlain || !wire.KnownFlags(fm.Flags) {
				t.Fatalf("accepted frame %+v", fm)
			}
			re = wire.AppendFrame(re, fm)
		}
	})
}

func FuzzParseIDs(f *testing.F) {
	f.Add(make([]byte, 64), 2)
	f.Add(make([]byte, 33), 5)
	f.Add([]byte{}, 0)
	f.Fuzz(func(t *testing.T, b []byte, max int) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		ids, err := wire.ParseIDs(b, max)
		runtime.ReadMemStats(&after)
		if got := after.TotalAlloc - before.TotalAlloc; got > 64<<10+uint64(len(b)) { // the ids; slack for the fuzzing engine's own goroutine
			t.Fatalf("parsing %d bytes allocated %d", len(b), got)
		}
		if err != nil {
			return
		}
		if len(ids) > max || len(ids)*32 != len(b) || !bytes.Equal(wire.AppendIDs(nil, ids), b) {
			t.Fatalf("ParseIDs(%d bytes, %d) = %d ids", len(b), max, len(ids))
		}
	})
}

func FuzzParseToken(f *testing.F) {
	var tok wire.Token
	tok.Secret[3] = 0xfc // '_' in the base64url of the secret
	f.Add(tok.String())
	f.Add(wire.Token{}.String())
	f.Add("vn1_abc_def")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := wire.ParseToken(s)
		if err != nil {
			if !errors.Is(err, wire.ErrToken) {
				t.Fatalf("error %v does not wrap ErrToken", err)
			}
			return
		}
		again, err := wire.ParseToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("re-parse of %q: %v", tok.String(), err)
		}
	})
}

func FuzzDecompress(f *testing.F) {
	z, _ := wire.Compress(nil, bytes.Repeat([]byte("abcdef"), 1000))
	f.Add(z, uint8(wire.FlagZstd), uint32(6000))
	f.Add([]byte("raw"), uint8(0), uint32(3))
	f.Add(z[:10], uint8(wire.FlagZstd), uint32(6000))
	s, _ := wire.Compress(nil, bytes.Repeat([]byte("abcdef"), 100))
	f.Add(s, uint8(wire.FlagS2), uint32(600))
	f.Add(s[:10], uint8(wire.FlagS2), uint32(600))
	f.Fuzz(func(t *testing.T, payload []byte, flags uint8, plainLen uint32) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		out, err := wire.Decompress(nil, flags, payload, plainLen)
		runtime.ReadMemStats(&after)
		// The zstd decoder's memory limit (2 x MaxPlain), whatever the
		// payload declares, plus the decoder's own state.
		if got, bound := after.TotalAlloc-before.TotalAlloc, uint64(2*wire.MaxPlain+4<<20)+2*uint64(len(payload)); got > bound {
			t.Fatalf("decompressing %d bytes allocated %d, over %d", len(payload), got, bound)
		}
		if err != nil {
			if !errors.Is(err, wire.ErrFrame) {
				t.Fatalf("error %v does not wrap ErrFrame", err)
			}
			return
		}
		if uint32(len(out)) != plainLen {
			t.Fatalf("%d bytes out, declared %d", len(out), plainLen)
		}
	})
}

func FuzzDecodeJSON(f *testing.F) {
	f.Add([]byte(`{"versions":[{"company":"acme","seq":1,"listing":[{"ID":[1,2,3],"Len":5}]}]}`))
	f.Add([]byte(`[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]`))
	f.Add([]byte(`{"versions":"[[[["}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var v wire.Versions
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		err := wire.DecodeJSON(bytes.NewReader(b), 1<<16, "wire.MaxAnswer", &v, false)
		runtime.ReadMemStats(&after)
		// encoding/json holds the input and the values it makes: a
		// one-byte number in a listing makes a 36-byte reference.
		if got, bound := after.TotalAlloc-before.TotalAlloc, 64<<10+64*uint64(len(b)); got > bound {
			t.Fatalf("decoding %d bytes allocated %d, over %d", len(b), got, bound)
		}
		if err != nil && !errors.Is(err, wire.ErrJSON) && !errors.Is(err, limit.ErrExceeded) {
			t.Fatalf("error %v is neither ErrJSON nor a limit", err)
		}
	})
}

func FuzzDecodeManifest(f *testing.F) {
	m := wire.Manifest{Magic: wire.ManifestMagic, Company: "acme", Computer: "pc-1", Config: "home", Seq: 1,
		Listing: []tree.ChunkRef{{ID: [32]byte{1}, Len: 100}}}
	b, _ := tree.Marshal(&m)
	f.Add(b)
	f.Add(b[:20])
	f.Fuzz(func(t *testing.T, b []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		m, err := wire.DecodeManifest(b)
		runtime.ReadMemStats(&after)
		if got, bound := after.TotalAlloc-before.TotalAlloc, 16<<10+64*uint64(len(b)); got > bound {
			t.Fatalf("decoding %d bytes allocated %d, over %d", len(b), got, bound)
		}
		if err != nil {
			if !errors.Is(err, wire.ErrManifest) {
				t.Fatalf("error %v does not wrap ErrManifest", err)
			}
			return
		}
		if m.Magic != wire.ManifestMagic || len(m.Listing) > tree.MaxListingRefs || len(m.Config) > wire.MaxManifestName {
			t.Fatalf("accepted %+v", m)
		}
	})
}
