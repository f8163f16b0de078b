package store

import (
	"bytes"
	"context"
	"os"
	"testing"

	"vaultnode/internal/pack"
)

// The index record decoders never panic, and what they accept encodes
// back to the same bytes.

func FuzzParseLocation(f *testing.F) {
	f.Add(Location{Pack: 3, Offset: 32, BodyLen: 100, PlainLen: 50, Kind: pack.KindData, Flags: pack.FlagZstd}.marshal())
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 18))
	f.Add(bytes.Repeat([]byte{0}, 17))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := parseLocation(b)
		if err == nil && !bytes.Equal(l.marshal(), b) {
			t.Fatalf("location %x decodes to %+v, which encodes to %x", b, l, l.marshal())
		}
	})
}

func FuzzParsePackRecord(f *testing.F) {
	f.Add(packRecord{Company: "acme", Committed: 4096}.marshal())
	f.Add([]byte{1, 2, 3})
	f.Add(bytes.Repeat([]byte{0xff}, 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parsePackRecord(b)
		if err == nil && !bytes.Equal(r.marshal(), b) {
			t.Fatalf("pack record %x decodes to %+v, which encodes to %x", b, r, r.marshal())
		}
	})
}

func FuzzParseKeys(f *testing.F) {
	f.Add(packKey(7))
	f.Add([]byte{1, 2})
	f.Add(bytes.Repeat([]byte{9}, 32))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if n, err := parsePackKey(b); err == nil && !bytes.Equal(packKey(n), b) {
			t.Fatalf("pack key %x decodes to %d", b, n)
		}
		if id, err := parseChunkKey(b); err == nil && !bytes.Equal(id[:], b) {
			t.Fatalf("chunk key %x decodes to %x", b, id)
		}
		if n, err := parseNextPack(b); err == nil && !bytes.Equal(packKey(n), b) {
			t.Fatalf("next-pack %x decodes to %d", b, n)
		}
	})
}

func FuzzParseQuarantine(f *testing.F) {
	f.Add(Quarantine{Pack: 1, Offset: 32, Since: 1700000000, Reason: "content does not hash to its id"}.marshal())
	f.Add([]byte{1})
	f.Add(binaryTime(5))
	f.Fuzz(func(t *testing.T, b []byte) {
		if q, err := parseQuarantine(b); err == nil && !bytes.Equal(q.marshal(), b) {
			t.Fatalf("quarantine %x decodes to %+v", b, q)
		}
		if at, err := parseHealed(b); err == nil && !bytes.Equal(binaryTime(at), b) {
			t.Fatalf("healed %x decodes to %d", b, at)
		}
	})
}

// FuzzWalk: the pack walker of recovery and verify never panics on hostile
// pack bytes, reports every byte as an entry or a span exactly once, and
// marks as torn only a span that reaches the end.
func FuzzWalk(f *testing.F) {
	aead := pack.NewSealer([32]byte{1})
	h := pack.EntryHeader{Kind: pack.KindData, ID: [32]byte{2}, PlainLen: 5}
	good := pack.AppendEntry(nil, aead, &h, []byte("hello"))
	f.Add(good)
	f.Add(append(bytes.Clone(good), good[:60]...))
	f.Add(append(append([]byte("garbageVNE1"), good...), 0))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		p := t.TempDir() + "/p"
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		fh, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		w := &walker{f: fh}
		var at int64
		err = w.walk(context.Background(), 0, int64(len(b)), true, func(off int64, h *pack.EntryHeader, body []byte) error {
			if off != at || len(body) != int(h.BodyLen) {
				t.Fatalf("entry at %d (expected %d), body %d of %d", off, at, len(body), h.BodyLen)
			}
			at = off + pack.EntryHeaderSize + int64(h.BodyLen)
			return nil
		}, func(sp Span) error {
			if sp.Offset != at || sp.Next <= sp.Offset || (sp.Torn && sp.Next != int64(len(b))) {
				t.Fatalf("span %+v at %d of %d", sp, at, len(b))
			}
			at = sp.Next
			return nil
		})
		if err != nil || at != int64(len(b)) {
			t.Fatalf("walk ended at %d of %d: %v", at, len(b), err)
		}
	})
}
