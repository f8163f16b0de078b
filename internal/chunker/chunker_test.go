package chunker

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

func testGear(t testing.TB) *Gear {
	g, err := NewGear([32]byte{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func chunks(t testing.TB, g *Gear, r io.Reader) [][]byte {
	c := New(g, r, nil)
	var out [][]byte
	for {
		b, err := c.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, bytes.Clone(b))
	}
}

func TestChunksReassembleAndRespectBounds(t *testing.T) {
	g := testGear(t)
	data := randBytes(1, 40<<20)
	cs := chunks(t, g, bytes.NewReader(data))
	if got := bytes.Join(cs, nil); !bytes.Equal(got, data) {
		t.Fatal("chunks do not reassemble the input")
	}
	for i, c := range cs {
		if len(c) > MaxSize || (len(c) < MinSize && i != len(cs)-1) {
			t.Fatalf("chunk %d has size %d outside [%d,%d]", i, len(c), MinSize, MaxSize)
		}
	}
	avg := len(data) / len(cs)
	if avg < AvgSize/2 || avg > AvgSize*2 {
		t.Fatalf("average chunk size %d far from %d", avg, AvgSize)
	}
	// Reading one byte at a time must give the same boundaries.
	slow := chunks(t, g, iotest.OneByteReader(bytes.NewReader(data[:9<<20])))
	fast := chunks(t, g, bytes.NewReader(data[:9<<20]))
	if len(slow) != len(fast) {
		t.Fatalf("one-byte reader gave %d chunks, buffered %d", len(slow), len(fast))
	}
}

func TestInsertionChangesOnlyNeighbourhood(t *testing.T) {
	g := testGear(t)
	data := randBytes(2, 32<<20)
	edited := append(append(append([]byte{}, data[:16<<20]...), []byte("inserted text in the middle")...), data[16<<20:]...)
	seen := map[[32]byte]bool{}
	for _, c := range chunks(t, g, bytes.NewReader(data)) {
		seen[sha256.Sum256(c)] = true
	}
	var newBytes int
	for _, c := range chunks(t, g, bytes.NewReader(edited)) {
		if !seen[sha256.Sum256(c)] {
			newBytes += len(c)
		}
	}
	if newBytes > 2*MaxSize {
		t.Fatalf("an insertion re-chunked %d bytes, want at most %d", newBytes, 2*MaxSize)
	}
}

func TestSmallInputIsOneChunk(t *testing.T) {
	g := testGear(t)
	for _, n := range []int{0, 1, MinSize} {
		cs := chunks(t, g, bytes.NewReader(randBytes(3, n)))
		want := 1
		if n == 0 {
			want = 0
		}
		if len(cs) != want {
			t.Fatalf("input of %d bytes gave %d chunks, want %d", n, len(cs), want)
		}
	}
}

// TestFrozenBoundaries pins the boundaries of format version 1: if this
// fails, the chunker changed and stores lose deduplication against old data.
func TestFrozenBoundaries(t *testing.T) {
	g := testGear(t)
	h := sha256.New()
	for _, c := range chunks(t, g, bytes.NewReader(randBytes(7, 24<<20))) {
		var b [4]byte
		b[0], b[1], b[2], b[3] = byte(len(c)), byte(len(c)>>8), byte(len(c)>>16), byte(len(c)>>24)
		h.Write(b[:])
	}
	got := hex.EncodeToString(h.Sum(nil))
	const want = "fc6ea371e0fdae1a1ed1c8cc7b9ddbf3aac31de2cdc070fb43fb7e4a59d5ef5d"
	if got != want {
		t.Fatalf("chunk boundaries changed: digest %s, want %s", got, want)
	}
}

func BenchmarkChunker(b *testing.B) {
	g := testGear(b)
	data := randBytes(4, 64<<20)
	buf := make([]byte, 2*MaxSize)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		c := New(g, bytes.NewReader(data), buf)
		for {
			if _, err := c.Next(); err == io.EOF {
				break
			}
		}
	}
}

func TestAverage(t *testing.T) {
	g := testGear(t)
	data := randBytes(9, 64<<20)
	cs := chunks(t, g, bytes.NewReader(data))
	t.Logf("%d chunks, average %d bytes", len(cs), len(data)/len(cs))
}
