package tree

import (
	"bytes"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

// randomNode fills a random subset of a node's fields with values at the
// edges of their encodings (zero, one byte, each head size, negatives,
// nil against empty lists).
func randomNode(r *rand.Rand) *Node {
	u := func() uint64 {
		switch r.IntN(7) {
		case 0:
			return 0
		case 1:
			return uint64(r.IntN(24))
		case 2:
			return 24 + uint64(r.IntN(232))
		case 3:
			return 256 + uint64(r.IntN(65280))
		case 4:
			return 65536 + uint64(r.Uint32())
		case 5:
			return math.MaxUint64 - uint64(r.IntN(3))
		}
		return r.Uint64()
	}
	i := func() int64 {
		v := int64(u() >> 1)
		if r.IntN(2) == 0 {
			return -1 - v
		}
		return v
	}
	bs := func() []byte {
		switch r.IntN(4) {
		case 0:
			return nil
		case 1:
			return []byte{}
		}
		b := make([]byte, r.IntN(300))
		for j := range b {
			b[j] = byte(r.IntN(256))
		}
		return b
	}
	str := func() string {
		if r.IntN(3) == 0 {
			return ""
		}
		return []string{"ann", "root", "é", "a\xffb", string(bytes.Repeat([]byte("x"), 30))}[r.IntN(5)]
	}
	ts := func() Timespec { return Timespec{Sec: i(), Nsec: i()} }
	n := &Node{Path: bs(), Type: Type(u()), Mode: uint32(u()), UID: uint32(u()), GID: uint32(u()), User: str(), Group: str(),
		Size: i(), Mtime: ts(), Atime: ts(), Ctime: ts(), Btime: ts(), Dev: u(), Ino: u(), Nlink: uint32(u()), Rdev: u(),
		Target: bs(), LinkTo: bs(), Flags: uint32(u()), Sparse: r.IntN(2) == 0, MountPoint: r.IntN(2) == 0, Status: Status(u()), Err: str()}
	switch r.IntN(3) {
	case 0:
		n.Xattrs = []Xattr{}
	case 1:
		for range r.IntN(30) {
			n.Xattrs = append(n.Xattrs, Xattr{Name: str(), Value: bs()})
		}
	}
	switch r.IntN(3) {
	case 0:
		n.Extents = []Extent{}
	case 1:
		for range r.IntN(30) {
			n.Extents = append(n.Extents, Extent{Off: i(), Len: i()})
		}
	}
	switch r.IntN(3) {
	case 0:
		n.Chunks = []ChunkRef{}
	case 1:
		for range r.IntN(30) {
			var c ChunkRef
			for j := range c.ID {
				c.ID[j] = byte(r.IntN(256))
			}
			c.Len = uint32(u())
			n.Chunks = append(n.Chunks, c)
		}
	}
	return n
}

// appendNode writes the library's bytes, for every field and the edges of
// each encoding.
func TestAppendNodeMatchesLibrary(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for k := range 20000 {
		n := randomNode(r)
		want, err := encMode.Marshal(n)
		if err != nil {
			t.Fatalf("node %d: library: %v", k, err)
		}
		if got := appendNode(nil, n); !bytes.Equal(got, want) {
			t.Fatalf("node %d %+v:\nappendNode %x\nlibrary    %x", k, n, got, want)
		}
	}
}

// A field added to Node must be added to appendNode and decodeNode too
// (TestAppendNodeMatchesLibrary only sees the fields randomNode fills).
func TestNodeFieldsKnown(t *testing.T) {
	if got := reflect.TypeOf(Node{}).NumField(); got != 26 {
		t.Fatalf("Node has %d fields, appendNode and decodeNode know 26: add the new ones there and to randomNode", got)
	}
}
