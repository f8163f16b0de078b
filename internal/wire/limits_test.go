package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"vaultnode/internal/limit"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

func wantLimit(t *testing.T, err error, name string) {
	t.Helper()
	le, ok := limit.As(err)
	if !ok || le.Limit != name || !strings.Contains(err.Error(), name) {
		t.Fatalf("err = %v, want the %s limit", err, name)
	}
}

func allocated(fn func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

func header(plain, size uint32) []byte {
	h := make([]byte, wire.FrameHeaderSize)
	binary.LittleEndian.PutUint32(h[34:], plain)
	binary.LittleEndian.PutUint32(h[38:], size)
	return h
}

func TestFrameLimits(t *testing.T) {
	// At the limits: a frame of MaxPlain and one of MaxFramePayload.
	var b []byte
	b = wire.AppendFrame(b, &wire.Frame{PlainLen: wire.MaxPlain, Payload: make([]byte, wire.MaxPlain)})
	b = wire.AppendFrame(b, &wire.Frame{Flags: wire.FlagZstd, PlainLen: wire.MaxPlain, Payload: make([]byte, wire.MaxFramePayload)})
	fr := wire.NewFrameReader(bytes.NewReader(b))
	for i := 0; i < 2; i++ {
		if _, err := fr.Next(); err != nil {
			t.Fatalf("frame %d at the limit: %v", i, err)
		}
	}
	for _, tt := range []struct {
		limit       string
		plain, size uint32
	}{
		{"wire.MaxPlain", wire.MaxPlain + 1, 10},
		{"wire.MaxFramePayload", 10, wire.MaxFramePayload + 1},
		{"wire.MaxPlain", 1<<32 - 1, 1<<32 - 1},
	} {
		var err error
		got := allocated(func() {
			_, err = wire.NewFrameReader(io.MultiReader(bytes.NewReader(header(tt.plain, tt.size)), io.LimitReader(zeros{}, 64<<20))).Next()
		})
		wantLimit(t, err, tt.limit)
		if !errors.Is(err, wire.ErrFrame) {
			t.Fatalf("%v does not wrap ErrFrame", err)
		}
		if got > 64<<10 {
			t.Errorf("%s: refusing the header allocated %d bytes", tt.limit, got)
		}
	}
}

// A frame that declares the largest payload and stalls (or ends) costs
// what arrived, not what it declared.
func TestFramePayloadGrowsWithTheBytes(t *testing.T) {
	var err error
	got := allocated(func() {
		src := io.MultiReader(bytes.NewReader(header(wire.MaxPlain, wire.MaxFramePayload)), io.LimitReader(zeros{}, 100))
		_, err = wire.NewFrameReader(src).Next()
	})
	if err == nil || !errors.Is(err, wire.ErrFrame) {
		t.Fatalf("truncated frame: %v", err)
	}
	if got > 160<<10 {
		t.Fatalf("a frame declaring %d bytes and holding 100 allocated %d", wire.MaxFramePayload, got)
	}
}

// A reader kept across downloads grows its buffer with headroom: frames
// a little larger each time (chunk sizes vary) do not each make a new
// buffer and copy the old one into it.
func TestFrameReaderGrowsWithHeadroom(t *testing.T) {
	var b []byte
	for k := range 20 {
		n := 1<<20 + 1 + k*50_000 // 1 MiB + 1 to about 1.9 MiB
		b = wire.AppendFrame(b, &wire.Frame{PlainLen: uint32(n), Payload: make([]byte, n)})
	}
	fr := wire.NewFrameReader(bytes.NewReader(b))
	if _, err := fr.Next(); err != nil {
		t.Fatal(err)
	}
	got := allocated(func() {
		for range 19 {
			if _, err := fr.Next(); err != nil {
				t.Fatal(err)
			}
		}
	})
	if got > 64<<10 {
		t.Fatalf("19 frames of 1-2 MiB after one of just over 1 MiB allocated %d bytes", got)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestIDLimits(t *testing.T) {
	if _, err := wire.ParseIDs(make([]byte, 32*wire.MaxGetIDs), wire.MaxGetIDs); err != nil {
		t.Fatal(err)
	}
	_, err := wire.ParseIDs(make([]byte, 32*(wire.MaxGetIDs+1)), wire.MaxGetIDs)
	wantLimit(t, err, "wire.MaxGetIDs")
	_, err = wire.ParseIDs(make([]byte, 32*(wire.MaxLackIDs+1)), wire.MaxLackIDs)
	wantLimit(t, err, "wire.MaxLackIDs")
}

func TestTokenLimit(t *testing.T) {
	tok := wire.Token{}.String()
	if _, err := wire.ParseToken(tok + strings.Repeat(" ", wire.MaxTokenLen-len(tok))); err != nil {
		t.Fatal(err)
	}
	_, err := wire.ParseToken(tok + strings.Repeat(" ", wire.MaxTokenLen-len(tok)+1))
	wantLimit(t, err, "wire.MaxTokenLen")
}

func TestDecompressLimit(t *testing.T) {
	_, err := wire.Decompress(nil, 0, make([]byte, 10), wire.MaxPlain+1)
	wantLimit(t, err, "wire.MaxPlain")
}

func TestDecodeJSON(t *testing.T) {
	var s wire.Session
	body := `{"id":"` + strings.Repeat("x", 100-len(`{"id":""}`)) + `"}`
	if err := wire.DecodeJSON(strings.NewReader(body), 100, "wire.MaxAnswer", &s, true); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
	err := wire.DecodeJSON(strings.NewReader(body+" "), 100, "wire.MaxAnswer", &s, true)
	wantLimit(t, err, "wire.MaxAnswer")

	nest := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	var v any
	if err := wire.DecodeJSON(strings.NewReader(nest(wire.MaxJSONDepth)), 1<<20, "x", &v, false); err != nil {
		t.Fatalf("nesting at the limit: %v", err)
	}
	err = wire.DecodeJSON(strings.NewReader(nest(wire.MaxJSONDepth+1)), 1<<20, "x", &v, false)
	wantLimit(t, err, "wire.MaxJSONDepth")
	// Brackets inside strings are text.
	if err := wire.DecodeJSON(strings.NewReader(`{"id":"`+strings.Repeat(`[\"{`, 100)+`"}`), 1<<20, "x", &s, true); err != nil {
		t.Fatalf("brackets in a string: %v", err)
	}
	for _, bad := range []string{`{"id":"a"} {}`, `{"id":"a","new":1}`, `{"id":`, ``} {
		if err := wire.DecodeJSON(strings.NewReader(bad), 1<<20, "x", &s, true); !errors.Is(err, wire.ErrJSON) {
			t.Errorf("%q: err = %v, want ErrJSON", bad, err)
		}
	}
	// An agent ignores fields a newer vault adds.
	if err := wire.DecodeJSON(strings.NewReader(`{"id":"a","new":1}`+"\n"), 1<<20, "x", &s, false); err != nil || s.ID != "a" {
		t.Fatalf("lenient: %v", err)
	}
}

func TestDecodeManifest(t *testing.T) {
	m := wire.Manifest{Magic: wire.ManifestMagic, Company: "acme", Computer: "pc-0123456789abcdef", Config: "home", Seq: 3,
		Started: time.Unix(1700000000, 0).UTC(), Finished: time.Unix(1700000100, 0).UTC(),
		Listing: []tree.ChunkRef{{ID: [32]byte{1}, Len: 100}}, Totals: wire.Totals{Files: 2, Bytes: 5}}
	enc := func(m wire.Manifest) []byte {
		b, err := tree.Marshal(&m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	got, err := wire.DecodeManifest(enc(m))
	if err != nil {
		t.Fatal(err)
	}
	if got.Seq != 3 || !got.Started.Equal(m.Started) || got.Listing[0] != m.Listing[0] || got.Totals != m.Totals {
		t.Fatalf("decoded %+v", got)
	}
	at := m
	at.Listing = make([]tree.ChunkRef, tree.MaxListingRefs)
	for i := range at.Listing {
		at.Listing[i].Len = 1
	}
	at.Config = strings.Repeat("c", wire.MaxManifestName)
	if _, err := wire.DecodeManifest(enc(at)); err != nil {
		t.Fatalf("at the limits: %v", err)
	}
	over := at
	over.Listing = append(over.Listing, tree.ChunkRef{Len: 1})
	_, err = wire.DecodeManifest(enc(over))
	wantLimit(t, err, "tree.MaxListingRefs")
	over = at
	over.Config += "c"
	_, err = wire.DecodeManifest(enc(over))
	wantLimit(t, err, "wire.MaxManifestName")
	_, err = wire.DecodeManifest(make([]byte, wire.MaxManifestBytes+1))
	wantLimit(t, err, "wire.MaxManifestBytes")
	over = m
	over.Magic = "vaultnode manifest v2"
	if _, err := wire.DecodeManifest(enc(over)); !errors.Is(err, wire.ErrManifest) {
		t.Fatalf("other magic: %v", err)
	}
}

// Room keeps a buffer that holds n bytes and makes one of the power of two
// above n otherwise.
func TestRoom(t *testing.T) {
	b := make([]byte, 10, 100)
	if r := wire.Room(b, 100); len(r) != 0 || cap(r) != 100 || &r[:1][0] != &b[0] {
		t.Errorf("Room of a buffer that fits: len %d cap %d, same array %v", len(r), cap(r), &r[:1][0] == &b[0])
	}
	for _, c := range []struct{ n, want int }{{1, 1}, {101, 128}, {1024, 1024}, {1025, 2048}, {3 << 20, 4 << 20}} {
		if r := wire.Room(nil, c.n); len(r) != 0 || cap(r) != c.want {
			t.Errorf("Room(%d): len %d cap %d, want 0 and %d", c.n, len(r), cap(r), c.want)
		}
	}
	if r := wire.Room(nil, 0); len(r) != 0 {
		t.Errorf("Room(nil, 0): len %d", len(r))
	}
}
