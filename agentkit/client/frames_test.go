package client

import (
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
