package vault

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"vaultnode/internal/wire"
)

// TestUploadSkipsStoredAcrossBatches: an upload's entries are looked up in
// batches (pendingMax, pendingBytes); every entry the store already holds
// is skipped and every other one appended, in the last, partial batch too,
// with a large chunk among them (looked up alone) and one twice.
func TestUploadSkipsStoredAcrossBatches(t *testing.T) {
	v := openTestVault(t)
	ctx := context.Background()
	a := newGCAgent(t, v, "acme", "c1")
	var frames []wire.Frame
	for i := range 2*pendingMax + 37 {
		p := fmt.Appendf(nil, "small chunk %d", i)
		if i == pendingMax+5 {
			p = bytes.Repeat([]byte{byte(i)}, pendingBytes+1)
		}
		frames = append(frames, wire.Frame{ID: a.hs.Sum(p), Kind: wire.FrameData, PlainLen: uint32(len(p)), Payload: p})
	}
	body := func(fs []wire.Frame) []byte {
		var b []byte
		for i := range fs {
			b = wire.AppendFrame(b, &fs[i])
		}
		return b
	}
	upload := func(fs []wire.Frame) int {
		t.Helper()
		s, err := v.OpenSession(ctx, a.p, "home")
		if err != nil {
			t.Fatal(err)
		}
		b := body(fs)
		n, err := v.Upload(ctx, a.p, s.ID, int64(len(b)), bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Every third chunk first, then all of them (and one twice: both
	// copies are appended, as before batches).
	var third []wire.Frame
	for i := 0; i < len(frames); i += 3 {
		third = append(third, frames[i])
	}
	if n := upload(third); n != len(third) {
		t.Fatalf("first upload appended %d entries, want %d", n, len(third))
	}
	all := append(append([]wire.Frame(nil), frames...), frames[1])
	if n, want := upload(all), len(frames)-len(third)+1; n != want {
		t.Fatalf("second upload appended %d entries, want %d (those not stored yet)", n, want)
	}
	ids := make([][32]byte, len(frames))
	for i := range frames {
		ids[i] = frames[i].ID
	}
	has, err := v.Store.Has("acme", ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range has {
		if !h {
			t.Fatalf("chunk %d of %d is not stored", i, len(frames))
		}
	}
	if n := upload(frames); n != 0 {
		t.Fatalf("a retry appended %d entries, want none", n)
	}
}
