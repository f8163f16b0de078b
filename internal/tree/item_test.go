package tree

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"

	"vaultnode/internal/limit"
)

// readItem's limits at their exact boundaries, with small values: at the
// limit passes, one over fails naming the limit.
func TestReadItemBoundaries(t *testing.T) {
	lim := &itemLimits{item: 40, str: 10, array: 5, pairs: 3, depth: 3,
		fields: map[uint64]fieldLimit{1: {"tree.MaxPathLen", "path length", 4, false}, 2: {"tree.MaxChunks", "chunks", 2, true}}}
	str := func(n int) []byte { return append([]byte{0x40 | byte(n)}, make([]byte, n)...) }
	arr := func(n int) []byte { return append([]byte{0x80 | byte(n)}, bytes.Repeat([]byte{0}, n)...) }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	tests := []struct {
		name, limit string // limit "" = passes
		b           []byte
	}{
		{"string at limit", "", str(10)},
		{"string over", "tree.MaxStringLen", str(11)},
		{"array at limit", "", arr(5)},
		{"array over", "tree.MaxChunks", arr(6)},
		{"map at limit", "", cat([]byte{0xa3}, []byte{3, 0, 4, 0, 5, 0})},
		{"map over", "tree.MaxNodeFields", cat([]byte{0xa4}, []byte{3, 0, 4, 0, 5, 0, 6, 0})},
		{"depth at limit", "", []byte{0x81, 0x81, 0x81, 0}},
		{"depth over", "tree.MaxNodeDepth", []byte{0x81, 0x81, 0x81, 0x81, 0}},
		{"field string at limit", "", cat([]byte{0xa1, 1}, str(4))},
		{"field string over", "tree.MaxPathLen", cat([]byte{0xa1, 1}, str(5))},
		{"field array at limit", "", cat([]byte{0xa1, 2}, arr(2))},
		{"field array over", "tree.MaxChunks", cat([]byte{0xa1, 2}, arr(3))},
		{"field limits only at the top", "", cat([]byte{0x81, 0xa1, 1}, str(8))},
		{"item at limit", "", cat([]byte{0x84}, str(10), str(10), str(10), str(5))},
		{"item over", "tree.MaxNodeBytes", cat([]byte{0x84}, str(10), str(10), str(10), str(6))},
	}
	for _, tt := range tests {
		got, err := readItem(bufio.NewReader(bytes.NewReader(append(tt.b, 0xf6))), nil, lim)
		if tt.limit == "" {
			if err != nil || !bytes.Equal(got, tt.b) {
				t.Errorf("%s: read %x, %v; want %x", tt.name, got, err, tt.b)
			}
			continue
		}
		if le, ok := limit.As(err); !ok || le.Limit != tt.limit {
			t.Errorf("%s: err = %v, want %s", tt.name, err, tt.limit)
		}
	}
	for _, b := range [][]byte{{0x5f}, {0x9f}, {0xc1, 0}, {0x1c}, {0xf8, 0x10}, {0xff}, {0x82, 0}, {0x43, 0}} {
		_, err := readItem(bufio.NewReader(bytes.NewReader(b)), nil, lim)
		if !errors.Is(err, errMalformed) {
			t.Errorf("%x: err = %v, want malformed", b, err)
		}
	}
	if _, err := readItem(bufio.NewReader(bytes.NewReader(nil)), nil, lim); err != io.EOF {
		t.Errorf("empty: %v, want io.EOF", err)
	}
}
