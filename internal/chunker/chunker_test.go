package chunker

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
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
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
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
}

// lengths returns the chunk lengths c cuts from r: its boundaries.
func lengths(t testing.TB, g *Gear, r io.Reader) []int {
	t.Helper()
	c := New(g, r, nil)
	var out []int
	for {
		b, err := c.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, len(b))
	}
}

// randomReader returns reads of random sizes, from 1 byte to 2*MaxSize.
type randomReader struct {
	r   io.Reader
	rng *rand.Rand
}

func (r randomReader) Read(p []byte) (int, error) {
	n := 1 + r.rng.IntN(2*MaxSize)
	if r.rng.IntN(4) == 0 {
		n = 1 + r.rng.IntN(64)
	}
	return r.r.Read(p[:min(n, len(p))])
}

// Boundaries depend on the content only: however the reader splits its
// reads, every chunk starts and ends at the same offsets.
func TestBoundariesIndependentOfReads(t *testing.T) {
	g := testGear(t)
	data := randBytes(1, 9<<20)
	want := lengths(t, g, bytes.NewReader(data))
	if len(want) < 5 {
		t.Fatalf("only %d chunks in %d bytes: the comparison would prove little", len(want), len(data))
	}
	for _, tc := range []struct {
		name string
		r    io.Reader
	}{
		{"one byte", iotest.OneByteReader(bytes.NewReader(data))},
		{"half", iotest.HalfReader(bytes.NewReader(data))},
		{"data with EOF", iotest.DataErrReader(bytes.NewReader(data))},
		{"random sizes", randomReader{bytes.NewReader(data), rand.New(rand.NewPCG(5, 6))}},
	} {
		got := lengths(t, g, tc.r)
		off := 0
		for i := 0; i < max(len(got), len(want)); i++ {
			if i >= len(got) || i >= len(want) || got[i] != want[i] {
				t.Errorf("%s reader: chunk %d at offset %d: %s, buffered reads give %s",
					tc.name, i, off, lenAt(got, i), lenAt(want, i))
				break
			}
			off += got[i]
		}
	}
}

func lenAt(l []int, i int) string {
	if i >= len(l) {
		return "no chunk"
	}
	return fmt.Sprintf("%d bytes", l[i])
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

// expectedMean is the mean chunk length of normalized FastCDC for random
// content, from the format's parameters: past MinSize each byte ends a
// chunk with probability 2^-bits(mask), with maskS before AvgSize and maskL
// after it, and a chunk ends at MaxSize at the latest.
func expectedMean() float64 {
	ps := 1 / math.Pow(2, float64(bits.OnesCount64(maskS)))
	pl := 1 / math.Pow(2, float64(bits.OnesCount64(maskL)))
	// E[L] = MinSize + sum over positions of P(no cut before it).
	survive := 1.0
	mean := float64(MinSize)
	for i := MinSize; i < MaxSize; i++ {
		mean += survive
		if i < AvgSize {
			survive *= 1 - ps
		} else {
			survive *= 1 - pl
		}
	}
	return mean
}

// On random content the mean chunk length matches what the format's masks
// give (about 1.16 MiB), and chunks ending before the average size are as
// frequent as the stricter mask makes them: a changed mask, a swapped pair
// or a broken normalization moves one or the other by far more than the
// tolerance. About 110 chunks: the tolerances are about three standard
// deviations (chunk lengths vary by 350 KB), and the content is fixed, so
// the result is too.
func TestAverage(t *testing.T) {
	g := testGear(t)
	data := randBytes(9, 128<<20)
	ls := lengths(t, g, bytes.NewReader(data))
	mean := float64(len(data)) / float64(len(ls))
	want := expectedMean()
	var early int
	for _, l := range ls[:len(ls)-1] {
		if l < AvgSize {
			early++
		}
	}
	ps := 1 / math.Pow(2, float64(bits.OnesCount64(maskS)))
	wantEarly := 1 - math.Pow(1-ps, AvgSize-MinSize)
	gotEarly := float64(early) / float64(len(ls)-1)
	t.Logf("%d chunks, mean %.0f bytes (expected %.0f), %.1f%% before the average size (expected %.1f%%)",
		len(ls), mean, want, 100*gotEarly, 100*wantEarly)
	if math.Abs(mean-want) > 0.10*want {
		t.Errorf("mean chunk length %.0f, want %.0f ± 10%%", mean, want)
	}
	if math.Abs(gotEarly-wantEarly) > 0.10 {
		t.Errorf("%.1f%% of chunks end before the average size, want %.1f%% ± 10 points", 100*gotEarly, 100*wantEarly)
	}
}

// TestListingChunks: the listing chunker reassembles its input, keeps its
// bounds, averages what its masks give (about 74 KB on random content, a
// sixteenth of the content chunker's), and an insertion changes only the
// chunks around it.
func TestListingChunks(t *testing.T) {
	g := testGear(t)
	data := randBytes(11, 16<<20)
	cut := func(data []byte) [][]byte {
		c := NewListing(g, iotest.HalfReader(bytes.NewReader(data)), nil)
		c.small = 1 << 30 // the switch to content sizes: TestListingSwitch
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
	cs := cut(data)
	if !bytes.Equal(bytes.Join(cs, nil), data) {
		t.Fatal("listing chunks do not reassemble the input")
	}
	for i, c := range cs {
		if len(c) > ListingMaxSize || (len(c) < ListingMinSize && i != len(cs)-1) {
			t.Fatalf("listing chunk %d has size %d outside [%d,%d]", i, len(c), ListingMinSize, ListingMaxSize)
		}
	}
	ps := 1 / math.Pow(2, float64(bits.OnesCount64(listingMaskS)))
	pl := 1 / math.Pow(2, float64(bits.OnesCount64(listingMaskL)))
	survive, want := 1.0, float64(ListingMinSize)
	for i := ListingMinSize; i < ListingMaxSize; i++ {
		want += survive
		if i < ListingAvgSize {
			survive *= 1 - ps
		} else {
			survive *= 1 - pl
		}
	}
	mean := float64(len(data)) / float64(len(cs))
	t.Logf("%d listing chunks, mean %.0f bytes (expected %.0f)", len(cs), mean, want)
	if math.Abs(mean-want) > 0.06*want {
		t.Errorf("mean listing chunk %.0f, want %.0f ± 6%%", mean, want)
	}
	// Insert 100 bytes in the middle: all but a few chunks stay.
	mid := len(data) / 2
	edited := append(append(append([]byte(nil), data[:mid]...), randBytes(12, 100)...), data[mid:]...)
	old := map[string]bool{}
	for _, c := range cs {
		old[string(c)] = true
	}
	changed := 0
	for _, c := range cut(edited) {
		if !old[string(c)] {
			changed++
		}
	}
	if changed > 3 {
		t.Errorf("an insertion changed %d listing chunks, want at most 3", changed)
	}
}

// TestListingSwitch: after its small chunks, a listing chunker cuts like the
// content chunker (boundaries realign with it within a few chunks), and the
// chunk returned at the switch stays intact.
func TestListingSwitch(t *testing.T) {
	g := testGear(t)
	data := randBytes(13, 24<<20)
	c := NewListing(g, bytes.NewReader(data), nil)
	c.small = 20
	var got [][]byte
	var atSwitch []byte // the chunk returned at the switch, not copied
	for {
		b, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 20 && !bytes.Equal(atSwitch, got[19]) {
			t.Fatal("the chunk returned at the switch changed under the next call")
		}
		if len(got) == 19 {
			atSwitch = b
		}
		got = append(got, bytes.Clone(b))
	}
	if !bytes.Equal(bytes.Join(got, nil), data) {
		t.Fatal("chunks around the switch do not reassemble the input")
	}
	var off int
	for i, b := range got {
		if i < 20 && len(b) > ListingMaxSize {
			t.Fatalf("chunk %d of %d bytes before the switch", i, len(b))
		}
		off += len(b)
	}
	content := map[int]bool{}
	off = 0
	for _, l := range lengths(t, g, bytes.NewReader(data)) {
		off += l
		content[off] = true
	}
	off, shared := 0, 0
	for i, b := range got {
		off += len(b)
		if i >= 20 && content[off] {
			shared++
		}
	}
	if after := len(got) - 20; shared < after-3 {
		t.Errorf("after the switch %d of %d boundaries are the content chunker's, want all but 3", shared, after)
	}
}

// serialCut is the rolling hash written as the format describes it, one
// byte at a time: the reference scan's two chains must agree with.
func serialCut(g *Gear, p *params, data []byte, atEOF bool) int {
	n := len(data)
	if n <= p.min {
		if atEOF {
			return n
		}
		return 0
	}
	n = min(n, p.max)
	full := n == p.max || atEOF
	// zeros(i): how many zeros start at data[i] (within data[:n]), from
	// the first byte at or after i that is not zero.
	nonzero := -1
	zeros := func(i int) int {
		if nonzero < i {
			for nonzero = i; nonzero < n && data[nonzero] == 0; nonzero++ {
			}
		}
		return nonzero - i
	}
	if p.zeroRuns {
		if z := zeros(0); z > 0 {
			switch {
			case z == n && !full:
				return 0
			case z >= ZeroUnit:
				return z - z%ZeroUnit
			}
		}
	}
	var fp uint64
	for i := p.min; i < n; i++ {
		if p.zeroRuns {
			if zeros(i) >= ZeroUnit {
				return i
			}
			if !full && i+zeros(i) == n {
				return 0 // zeros to the end: a run may start here
			}
		}
		fp = (fp << 1) + g[data[i]]
		mask := p.maskL
		if i < p.avg {
			mask = p.maskS
		}
		if fp&mask == 0 {
			return i + 1
		}
	}
	if full {
		return n
	}
	return 0
}

// TestScanMatchesSerial cuts random data with easy masks, so that
// boundaries fall in either of scan's chains, in its tail, and right after
// a block's start, and with the resumption of a cut given part of the data
// first: every cut must be the serial one's.
func TestScanMatchesSerial(t *testing.T) {
	g := testGear(t)
	r := rand.New(rand.NewPCG(7, 11))
	for _, p := range []params{
		{min: 64, avg: 40 << 10, max: 200 << 10, maskS: 0x94b5294a53f00000 & ^uint64(0xfff00000), maskL: 0x94a5294a52a00000 & ^uint64(0xfff00000)},
		{min: 1000, avg: 2000, max: 300 << 10, maskS: 0xf000000000000000, maskL: 0xfff0000000000000},
		contentParams,
		listingParams,
	} {
		data := randBytes(r.Uint64(), 16<<20)
		for off, n := 0, 0; off < len(data); off += n {
			rest := data[off:]
			want := serialCut(g, &p, rest, true)
			if got := g.cut(&p, rest, true); got != want {
				t.Fatalf("params %+v at %d: cut %d, serial %d", p, off, got, want)
			}
			// The same chunk found in two steps: a prefix first, then
			// all; the prefix at random, or ending just before the
			// boundary, which the resumed hash must then find.
			for _, plen := range []int{r.IntN(p.max + 1), want - 1 - r.IntN(80)} {
				part := rest[:max(0, min(len(rest), plen))]
				n1, s := g.cutFrom(&p, part, false, scanState{})
				if w := serialCut(g, &p, part, false); n1 != w {
					t.Fatalf("params %+v at %d, prefix %d: cut %d, serial %d", p, off, len(part), n1, w)
				}
				if n1 == 0 {
					if n2, _ := g.cutFrom(&p, rest, true, s); n2 != want {
						t.Fatalf("params %+v at %d: resumed after %d: cut %d, serial %d", p, off, len(part), n2, want)
					}
				}
			}
			n = want
		}
	}
}

// TestZeroRunsMatchSerial cuts data of random runs and zero runs (shorter
// and longer than the hash's window, up to several chunks long), with a
// gear table whose zero-run hash meets no mask and with one whose meets
// every mask only at a run's 64th zero (g[0] = 2^64-1: the hash after k
// zeros from 0 is 2^64-2^k+1, whose high bits are set until it is 1):
// each cut, whole or resumed, must be the serial one's.
func TestZeroRunsMatchSerial(t *testing.T) {
	g := testGear(t)
	g0 := *g
	g0[0] = ^uint64(0)
	r := rand.New(rand.NewPCG(3, 5))
	var data []byte
	for len(data) < 24<<20 {
		if r.IntN(2) == 0 {
			data = append(data, randBytes(r.Uint64(), r.IntN(300<<10))...)
			continue
		}
		n := []int{1, 63, 64, 65, 127, 128, 129, 4096, ZeroUnit - 1, ZeroUnit, ZeroUnit + 1, 2*ZeroUnit - 1,
			r.IntN(1 << 20), r.IntN(9 << 20)}[r.IntN(14)]
		data = append(data, make([]byte, n)...)
	}
	for _, gear := range []*Gear{g, &g0} {
		for _, p := range []params{
			{min: 64, avg: 40 << 10, max: 200 << 10, maskS: 0x94b5294a53f00000 & ^uint64(0xfff00000), maskL: 0x94a5294a52a00000 & ^uint64(0xfff00000)},
			contentParams,
			listingParams,
		} {
			for off, n := 0, 0; off < len(data); off += n {
				rest := data[off:]
				want := serialCut(gear, &p, rest, true)
				if got := gear.cut(&p, rest, true); got != want {
					t.Fatalf("g[0]=%#x params %+v at %d: cut %d, serial %d", gear[0], p, off, got, want)
				}
				// Prefixes: at random, and ending within the first zero run
				// past the minimum (a run that may go on).
				plens := []int{r.IntN(p.max + 1)}
				if z := bytes.IndexByte(rest[min(len(rest), p.min):], 0); z >= 0 {
					plens = append(plens, p.min+z+1+r.IntN(ZeroUnit+2))
				}
				for _, plen := range plens {
					part := rest[:min(len(rest), plen)]
					n1, s := gear.cutFrom(&p, part, false, scanState{})
					if w := serialCut(gear, &p, part, false); n1 != w {
						t.Fatalf("g[0]=%#x params %+v at %d, prefix %d: cut %d, serial %d", gear[0], p, off, len(part), n1, w)
					}
					if n1 == 0 {
						if n2, _ := gear.cutFrom(&p, rest, true, s); n2 != want {
							t.Fatalf("g[0]=%#x params %+v at %d: resumed after %d: cut %d, serial %d", gear[0], p, off, len(part), n2, want)
						}
					}
				}
				n = want
			}
		}
	}
}

func TestIsZero(t *testing.T) {
	b := make([]byte, 200<<10)
	if !IsZero(b) || !IsZero(nil) || !IsZero(b[:1]) {
		t.Fatal("zeros not seen as zeros")
	}
	for _, i := range []int{0, 1, 63, 64<<10 - 1, 64 << 10, len(b) - 1} {
		b[i] = 1
		if IsZero(b) {
			t.Fatalf("a one at %d not seen", i)
		}
		b[i] = 0
	}
}

// TestNextKnownAndUnread: NextKnown takes exactly the length asked across
// refills and says that a plain pass's chunk ends there (and that a chunk
// one byte shorter does not), refuses a length the stream no longer has
// without consuming anything, and a chunk put back with Unread is cut
// again as if never taken.
func TestNextKnownAndUnread(t *testing.T) {
	g := testGear(t)
	data := make([]byte, 5*MaxSize+123)
	rng := rand.New(rand.NewPCG(8, 9))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	var want [][]byte
	c := New(g, bytes.NewReader(data), nil)
	for {
		b, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, bytes.Clone(b))
	}
	c = New(g, iotest.OneByteReader(bytes.NewReader(data)), make([]byte, MaxSize+ZeroUnit))
	off := 0
	for i, w := range want {
		if i%2 == 0 {
			// Taken by length, then put back: Next cuts the same chunk.
			b, ends, err := c.NextKnown(len(w))
			if err != nil || !bytes.Equal(b, data[off:off+len(w)]) || !ends {
				t.Fatalf("chunk %d: NextKnown: ends %v, %v", i, ends, err)
			}
			c.Unread(len(b))
			if i < len(want)-1 {
				if _, ends, err := c.NextKnown(len(w) - 1); err != nil || ends {
					t.Fatalf("chunk %d one byte short: NextKnown: ends %v, %v", i, ends, err)
				}
				c.Unread(len(w) - 1)
			}
		}
		b, err := c.Next()
		if err != nil || !bytes.Equal(b, w) {
			t.Fatalf("chunk %d: Next after Unread: %d bytes, %v; want %d", i, len(b), err, len(w))
		}
		off += len(w)
		if i == len(want)-2 {
			// The last chunk's length and a byte more: refused, nothing consumed.
			if _, _, err := c.NextKnown(len(want[i+1]) + 1); err != io.ErrUnexpectedEOF {
				t.Fatalf("NextKnown past the end: %v", err)
			}
		}
	}
	if _, _, err := c.NextKnown(MaxSize + 1); err == nil {
		t.Fatal("NextKnown of more than MaxSize accepted")
	}

	// A chunk ended where a run of zeros starts, with fewer than ZeroUnit
	// bytes past it in the buffer: NextKnown reads more before it decides.
	r := randBytes(10, MaxSize)
	a := r[:g.Cut(r, true)-1] // no boundary of the hash in it
	if len(a) <= MinSize {
		t.Fatalf("test data: first chunk of %d bytes", len(a)+1)
	}
	x := MaxSize + ZeroUnit - len(a) - ZeroUnit/2
	data = slices.Concat(randBytes(11, x), a, make([]byte, ZeroUnit), randBytes(12, 1<<20))
	if n := g.Cut(data[x:], true); n != len(a) {
		t.Fatalf("test data: cut at %d, want %d", n, len(a))
	}
	c = New(g, bytes.NewReader(data), make([]byte, MaxSize+ZeroUnit))
	if _, _, err := c.NextKnown(x); err != nil {
		t.Fatal(err)
	}
	if b, ends, err := c.NextKnown(len(a)); err != nil || !bytes.Equal(b, a) || !ends {
		t.Fatalf("chunk before a run of zeros: ends %v, %v", ends, err)
	}
}

// TestZeroRunFrom places a run of exactly ZeroUnit zeros (and one zero
// fewer) at many places in bytes that are not zeros, after a shorter run
// or not: the first is found where it starts, the second never, and data
// ending in zeros is said to end where they start unless it is all there.
func TestZeroRunFrom(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	base := make([]byte, 5*ZeroUnit)
	for i := range base {
		base[i] = byte(1 + r.IntN(255))
	}
	const from = 1000
	var places []int // every 331 bytes, and each byte near the bytes looked at
	for q := from; q+ZeroUnit <= len(base); q += 331 {
		places = append(places, q)
	}
	for m := 0; m < 4; m++ {
		for d := -3; d <= 3; d++ {
			if q := from + m*ZeroUnit + d; q >= from && q+ZeroUnit <= len(base) {
				places = append(places, q)
			}
		}
	}
	for _, q := range places {
		for _, short := range []int{0, 1, ZeroUnit - 1} {
			data := bytes.Clone(base)
			at := q
			if short > 0 && q-from > short+1 {
				s := from + r.IntN(q-from-short) // a shorter run first, ending before q
				clear(data[s : s+short])
			}
			clear(data[at : at+ZeroUnit])
			if got, ok := zeroRunFrom(data, from, true); !ok || got != at {
				t.Fatalf("run at %d (short run %d before): found %d %v", at, short, got, ok)
			}
			data[at+ZeroUnit-1-r.IntN(ZeroUnit)] = 7
			if got, ok := zeroRunFrom(data, from, true); ok {
				t.Fatalf("a run one zero short at %d found at %d", at, got)
			}
		}
	}
	data := bytes.Clone(base)
	clear(data[len(data)-100:])
	if got, ok := zeroRunFrom(data, from, false); ok || got != len(data)-100 {
		t.Fatalf("trailing zeros: %d %v, want %d", got, ok, len(data)-100)
	}
	if got, ok := zeroRunFrom(data, from, true); ok || got != len(data) {
		t.Fatalf("trailing zeros of data all there: %d %v", got, ok)
	}
}

// TestFrozenZeroRuns pins the boundaries around runs of zeros (a run
// shorter than ZeroUnit, one of ZeroUnit less one inside data, one of
// several largest chunks, trailing zeros): if this fails, the chunker
// changed and stores lose deduplication against old data.
func TestFrozenZeroRuns(t *testing.T) {
	g := testGear(t)
	data := randBytes(9, 16<<20)
	clear(data[1<<20 : 1<<20+100<<10])
	clear(data[2<<20 : 2<<20+ZeroUnit-1])
	clear(data[3<<20+5 : 3<<20+5+5<<20+77])
	clear(data[len(data)-70000:])
	h := sha256.New()
	var lens []int
	for _, c := range chunks(t, g, bytes.NewReader(data)) {
		var b [4]byte
		b[0], b[1], b[2], b[3] = byte(len(c)), byte(len(c)>>8), byte(len(c)>>16), byte(len(c)>>24)
		h.Write(b[:])
		lens = append(lens, len(c))
	}
	got := hex.EncodeToString(h.Sum(nil))
	const want = "35b52a66fd46f3661640f4fc94d560834cdfa4622d4d9c2a8600d0b1e9cfcc37"
	if got != want {
		t.Fatalf("chunk boundaries changed: digest %s, want %s (lengths %v)", got, want, lens)
	}
}

// TestEndsAtMatchesCut: for every chunk that a plain pass cut in one
// version of some data, at the same place in another version that still
// holds its bytes, endsAt says whether a plain pass cuts it there too, and
// says it alike from the window NextKnown reads. The versions grow and
// shrink runs of zeros just after chunks' ends, so that the zero rule (which
// looks past an end) moves them; besides a keyed gear table, one whose hash
// makes a boundary 64 bytes into every run of zeros, so that chunks end in
// zeros that a longer run then takes.
func TestEndsAtMatchesCut(t *testing.T) {
	keyed := testGear(t)
	zeroing := *keyed
	zeroing[0] = 0 // 64 zeros hash to 0, a boundary under either mask
	runs := []int{1, 30, 63, 64, 65, 100, 200, 1000, 4000, 30000, ZeroUnit - 1, ZeroUnit, ZeroUnit + 1, 2*ZeroUnit + 7,
		5 * ZeroUnit, MaxSize - ZeroUnit/2, MaxSize + 3*ZeroUnit}
	p := &contentParams
	for gi, g := range []*Gear{keyed, &zeroing} {
		rng := rand.New(rand.NewPCG(uint64(gi), 77))
		var same, moved, movedInZeros int
		for round := range 20 {
			// Random bytes and runs of zeros of lengths around the rule's.
			var old []byte
			for len(old) < 5<<20 {
				if rng.IntN(2) == 0 {
					old = append(old, randBytes(rng.Uint64(), 1+rng.IntN(1<<20))...)
				} else {
					old = append(old, make([]byte, runs[rng.IntN(len(runs))])...)
				}
			}
			type span struct{ at, n int }
			var cuts []span
			for at := 0; at < len(old); {
				n := g.cut(p, old[at:], true)
				cuts = append(cuts, span{at, n})
				at += n
			}
			for v := range 12 {
				// Past some chunks' ends, zeros of a length that makes (with
				// the chunk's own trailing zeros) a run just short of the
				// rule's, just long enough, or longer; or a byte that is not
				// zero where a run went on.
				cur := bytes.Clone(old)
				for _, e := range cuts {
					if rng.IntN(2) == 0 {
						continue
					}
					end := e.at + e.n
					if end >= len(cur) {
						continue
					}
					tz := 0
					for tz < e.n && cur[end-1-tz] == 0 {
						tz++
					}
					switch k := (v + rng.IntN(3)) % 3; k {
					case 0, 1:
						n := []int{1, ZeroUnit - tz - 1, ZeroUnit - tz, ZeroUnit, 3 * ZeroUnit}[rng.IntN(5)]
						clear(cur[end:min(len(cur), end+max(n, 0))])
					default:
						at := end + []int{0, 1, 63, ZeroUnit - tz - 1, ZeroUnit - tz, ZeroUnit - 1}[rng.IntN(6)]
						if at >= end && at < len(cur) {
							cur[at] = 0xa5
						}
					}
				}
				// A chunker takes the old lengths one after another, with a
				// buffer that leaves it the least room past them.
				ck := New(g, bytes.NewReader(cur), make([]byte, MaxSize+ZeroUnit))
				for _, c := range cuts {
					b, ends, err := ck.NextKnown(c.n)
					if err != nil || !bytes.Equal(b, cur[c.at:c.at+c.n]) {
						t.Fatalf("gear %d, round %d, version %d: NextKnown(%d) at %d: %d bytes, %v", gi, round, v, c.n, c.at, len(b), err)
					}
					if !bytes.Equal(cur[c.at:c.at+c.n], old[c.at:c.at+c.n]) {
						continue
					}
					if want := g.cut(p, cur[c.at:], true) == c.n; ends != want {
						t.Fatalf("gear %d, round %d, version %d: chunk of %d at %d: NextKnown says ends %v, a plain cut %v", gi, round, v, c.n, c.at, ends, want)
					}
					want := g.cut(p, cur[c.at:], true) == c.n
					if got := g.endsAt(p, cur[c.at:], true, c.n); got != want {
						t.Fatalf("gear %d, round %d, version %d: chunk of %d at %d: endsAt %v, a plain cut %v", gi, round, v, c.n, c.at, got, want)
					}
					// NextKnown's window: ZeroUnit bytes past the end and more
					// than MinSize, or MaxSize.
					w := min(len(cur), c.at+min(max(c.n+ZeroUnit, MinSize+1), MaxSize))
					if got := g.endsAt(p, cur[c.at:w], w == len(cur), c.n); got != want {
						t.Fatalf("gear %d, round %d, version %d: chunk of %d at %d, from %d bytes: endsAt %v, a plain cut %v (len %d, zeros %d)", gi, round, v, c.n, c.at, w-c.at, got, want, len(cur), zeroPrefix(cur[c.at:]))
					}
					if want {
						same++
					} else {
						moved++
						if cur[c.at] != 0 && cur[c.at+c.n-1] == 0 {
							movedInZeros++
						}
					}
				}
			}
		}
		// Both answers must have come up often, or the versions tested little.
		t.Logf("gear %d: %d ends kept, %d moved (%d of chunks ending in zeros)", gi, same, moved, movedInZeros)
		if same < 500 || moved < 50 || gi == 1 && movedInZeros < 4 {
			t.Errorf("gear %d: %d ends kept and %d moved (%d of chunks ending in zeros); the versions should move more", gi, same, moved, movedInZeros)
		}
	}
}

// TestBoundaryAt: boundaryAt says, at every place of random data, what the
// rolling hash started at a chunk's minimum size says there, with the
// smaller chunks' mask before the average size and the other after it.
func TestBoundaryAt(t *testing.T) {
	g := testGear(t)
	data := randBytes(31, MaxSize)
	clear(data[MinSize+10 : MinSize+5000]) // zeros within the hash's window of MinSize
	easy := params{MinSize, AvgSize, MaxSize, 0x3 << 60, 0x1 << 62, true}
	for _, p := range []*params{&contentParams, &easy} {
		var fp uint64
		hits := 0
		for i := p.min; i < p.max; i++ {
			fp = fp<<1 + g[data[i]]
			mask := p.maskL
			if i < p.avg {
				mask = p.maskS
			}
			want := fp&mask == 0
			if got := g.boundaryAt(p, data, i+1); got != want {
				t.Fatalf("masks %x/%x: boundaryAt(%d) %v, the rolled hash %v", p.maskS, p.maskL, i+1, got, want)
			}
			if want {
				hits++
			}
		}
		if p == &easy && hits < 1000 {
			t.Fatalf("easy masks: %d boundaries", hits)
		}
	}
}
