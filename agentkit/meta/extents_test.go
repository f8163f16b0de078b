package meta

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// cached is how many of f's pages are in the page cache.
func cached(t *testing.T, f *os.File) int {
	t.Helper()
	var cs unix.Cachestat_t
	if err := unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{}, &cs, 0); err != nil {
		t.Skipf("cachestat: %v (Linux 6.5 or later)", err)
	}
	return int(cs.Cache)
}

// TestExtentReaderLeavesHolesUncached: ExtentReader returns the extents'
// bytes in order, whatever the sizes of the reads, and reads a cold file's
// data without the kernel's read-ahead filling its holes with pages of
// zeros; a file that shrinks while read gives a shorter stream, not an
// error.
func TestExtentReaderLeavesHolesUncached(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sparse")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(7, 8))
	var want []byte
	var off int64
	for i := range 400 {
		off += int64(4096 * (1 + rng.IntN(256))) // a hole of 4 KiB to 1 MiB
		n := 4096 * (1 + rng.IntN(4))
		if i == 200 {
			n = 9 << 20 // one extent larger than a request of advice
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rng.Uint32() | 1) // no zero pages SEEK_DATA could skip
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		want = append(want, b...)
		off += int64(n)
	}
	size := off + 1<<20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	ext, sparse, err := DataExtents(f, size)
	if err != nil || !sparse {
		t.Fatalf("DataExtents: sparse %v, %v", sparse, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	if c := cached(t, f); c > 16 {
		t.Fatalf("%d pages still cached after DONTNEED", c)
	}

	var got bytes.Buffer
	r := ExtentReader(f, ext)
	buf := make([]byte, 100_001)
	for {
		n, err := r.Read(buf[:1+rng.IntN(len(buf))])
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("read %d bytes, want the %d of the extents", got.Len(), len(want))
	}
	// Read without advice, the kernel's read-ahead fills about 64 pages of
	// the hole past each extent (28,944 pages cached here). With it, a read
	// that overtakes its advice on a loaded machine still starts one such
	// read-ahead (a CI run cached 588 pages more than the data): allow the
	// data's own number of pages again, far below the holes' fill.
	dataPages := len(want) / 4096
	c := cached(t, f)
	t.Logf("%d pages cached after reading %d pages of data", c, dataPages)
	if c > 2*dataPages {
		t.Fatalf("%d pages cached after reading %d pages of data: the holes were read ahead", c, dataPages)
	}

	// Shrunk while read: the extents past the new end give nothing.
	r = ExtentReader(f, ext)
	head := make([]byte, 10_000)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}
	cut := ext[300].Off + 100
	if err := f.Truncate(cut); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading a file that shrank: %v", err)
	}
	var upTo int64
	for _, e := range ext[:300] {
		upTo += e.Len
	}
	if got := append(head, rest...); !bytes.Equal(got, want[:upTo+100]) {
		t.Fatalf("a file cut at %d gave %d bytes, want %d", cut, len(got), upTo+100)
	}
}
