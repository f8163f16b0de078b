package client

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"

	"vaultnode/internal/wire"
)

// TestKeepFrameReaders: the client keeps idleFrameReaders download readers
// until a caller says it runs more downloads at once; the bound never
// drops, and a request beyond maxKeptFrameReaders is cut to it.
func TestKeepFrameReaders(t *testing.T) {
	c := &Client{}
	kept := func(n int) int {
		t.Helper()
		var frs []*wire.FrameReader
		for range n {
			fr := c.takeFrameReader()
			if fr == nil {
				fr = wire.NewFrameReader(nil)
			}
			frs = append(frs, fr)
		}
		for _, fr := range frs {
			c.keepFrameReader(fr)
		}
		return len(c.frames)
	}
	if got := kept(20); got != idleFrameReaders {
		t.Fatalf("20 downloads at once left %d readers kept, want the default %d", got, idleFrameReaders)
	}
	c.KeepFrameReaders(9)
	if got := kept(20); got != 9 {
		t.Fatalf("after KeepFrameReaders(9), %d readers kept", got)
	}
	c.KeepFrameReaders(2)
	if got := kept(20); got != 9 {
		t.Fatalf("KeepFrameReaders(2) lowered the bound: %d readers kept, want 9", got)
	}
	c.KeepFrameReaders(1000)
	if got := kept(100); got != maxKeptFrameReaders {
		t.Fatalf("KeepFrameReaders(1000): %d readers kept, want at most %d", got, maxKeptFrameReaders)
	}
	// A reader taken is the caller's: none is handed out twice.
	a, b := c.takeFrameReader(), c.takeFrameReader()
	if a == nil || a == b {
		t.Fatalf("takeFrameReader handed out %p and %p", a, b)
	}
}

// GetChunksStream hands a large stored chunk over as a reader, and every
// other frame whole: a compressed chunk, a small one, and a stored one
// whose payload is not its plaintext's length (for the caller's checks to
// refuse). What fn leaves unread is skipped, and streaming 4 MiB chunks
// allocates no buffer of their size.
func TestGetChunksStream(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), (4<<20)/16)
	zst, flags := wire.Compress(nil, big)
	if flags != wire.FlagZstd {
		t.Fatalf("compressed with flags %d, want zstd", flags)
	}
	frames := []wire.Frame{
		{ID: [32]byte{1}, PlainLen: uint32(len(big)), Payload: big},
		{ID: [32]byte{2}, PlainLen: 3, Payload: []byte("abc")},
		{ID: [32]byte{3}, Flags: wire.FlagZstd, PlainLen: uint32(len(big)), Payload: zst},
		{ID: [32]byte{4}, PlainLen: uint32(len(big)), Payload: big},
		{ID: [32]byte{5}, PlainLen: 1 << 20, Payload: big[:300<<10]},
		{ID: [32]byte{6}, Kind: wire.StatusDamaged, Payload: big[:300<<10]},
	}
	var body []byte
	var ids [][32]byte
	for i := range frames {
		body = wire.AppendFrame(body, &frames[i])
		ids = append(ids, frames[i].ID)
	}
	c := hostileClient(func(*http.Request) io.Reader { return bytes.NewReader(body) })
	var streamed []byte
	err := c.GetChunksStream(context.Background(), ids, 256<<10, func(f *wire.Frame, r io.Reader) error {
		switch f.ID[0] {
		case 1:
			if r == nil || f.Payload != nil {
				t.Fatalf("stored 4 MiB chunk came whole (%d bytes)", len(f.Payload))
			}
			b, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(b, big) {
				t.Fatalf("streamed %d bytes, %v", len(b), err)
			}
			streamed = append(streamed, f.ID[0])
		case 4:
			if r == nil {
				t.Fatal("second stored chunk came whole")
			}
			if _, err := io.ReadFull(r, make([]byte, 1000)); err != nil { // the rest is skipped
				t.Fatal(err)
			}
			streamed = append(streamed, f.ID[0])
		default:
			if r != nil {
				t.Fatalf("frame %d streamed", f.ID[0])
			}
			want := frames[f.ID[0]-1].Payload
			if f.ID[0] == 6 {
				want = want[:wire.MaxReason]
			}
			if !bytes.Equal(f.Payload, want) {
				t.Fatalf("frame %d: %d bytes, want %d", f.ID[0], len(f.Payload), len(want))
			}
		}
		return nil
	})
	if err != nil || string(streamed) != "\x01\x04" {
		t.Fatalf("GetChunksStream: %v; streamed %v", err, streamed)
	}

	stored := frames[:1]
	body = wire.AppendFrame(nil, &stored[0])
	for range 3 {
		body = wire.AppendFrame(body, &stored[0])
	}
	ids = [][32]byte{{1}, {1}, {1}, {1}}
	piece := make([]byte, 256<<10)
	got := allocated(func() {
		err = c.GetChunksStream(context.Background(), ids, 256<<10, func(f *wire.Frame, r io.Reader) error {
			for {
				if _, err := r.Read(piece); err == io.EOF {
					return nil
				} else if err != nil {
					return err
				}
			}
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if got > 2<<20 {
		t.Errorf("streaming four stored 4 MiB chunks allocated %d bytes", got)
	}
}
