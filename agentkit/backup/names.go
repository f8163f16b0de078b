package backup

import (
	"bufio"
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
)

// spillAt is how many names of one directory are sorted in memory; a wider
// directory is read in sorted runs spilled to temporary files and merged,
// so a directory of millions of entries costs a bounded amount of memory.
var spillAt = 65536

// names yields a directory's entry names in byte order.
type names struct {
	mem   []string
	i     int
	h     runHeap
	files []*os.File
}

type nameRun struct {
	r    *bufio.Reader
	head string
}

type runHeap []*nameRun

func (h runHeap) Len() int           { return len(h) }
func (h runHeap) Less(i, j int) bool { return h[i].head < h[j].head }
func (h runHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *runHeap) Push(x any)        { *h = append(*h, x.(*nameRun)) }
func (h *runHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// namesOf yields sorted, already sorted in byte order.
func namesOf(sorted []string) *names { return &names{mem: sorted} }

// readNames reads d's names; spillDir holds the runs of a wide directory.
func readNames(d *os.File, spillDir string) (*names, error) {
	n := &names{}
	for {
		batch, err := d.Readdirnames(spillAt)
		if err != nil && !errors.Is(err, io.EOF) {
			n.close()
			return nil, err
		}
		if len(batch) == 0 {
			break
		}
		sort.Strings(batch)
		if len(n.files) == 0 && len(batch) < spillAt && n.mem == nil {
			n.mem = batch
			// A short first batch is the whole directory unless more comes.
			more, err := d.Readdirnames(spillAt)
			if err != nil && !errors.Is(err, io.EOF) {
				n.close()
				return nil, err
			}
			if len(more) == 0 {
				return n, nil
			}
			if err := n.spill(n.mem, spillDir); err != nil {
				n.close()
				return nil, err
			}
			n.mem = nil
			batch = more
			sort.Strings(batch)
		}
		if err := n.spill(batch, spillDir); err != nil {
			n.close()
			return nil, err
		}
	}
	if len(n.files) == 0 {
		return n, nil
	}
	for _, f := range n.files {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			n.close()
			return nil, err
		}
		r := &nameRun{r: bufio.NewReaderSize(f, 64<<10)}
		ok, err := r.next()
		if err != nil {
			n.close()
			return nil, err
		}
		if ok {
			n.h = append(n.h, r)
		}
	}
	heap.Init(&n.h)
	return n, nil
}

func (n *names) spill(batch []string, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("spill directory names: %w", err)
	}
	f, err := os.CreateTemp(dir, "names-*")
	if err != nil {
		return fmt.Errorf("spill directory names: %w", err)
	}
	os.Remove(f.Name()) // anonymous: gone when closed, even after a crash
	n.files = append(n.files, f)
	w := bufio.NewWriterSize(f, 64<<10)
	var lb [binary.MaxVarintLen64]byte
	for _, s := range batch {
		w.Write(lb[:binary.PutUvarint(lb[:], uint64(len(s)))])
		w.WriteString(s)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("spill directory names: %w", err)
	}
	return nil
}

func (r *nameRun) next() (bool, error) {
	l, err := binary.ReadUvarint(r.r)
	if errors.Is(err, io.EOF) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	b := make([]byte, l)
	if _, err := io.ReadFull(r.r, b); err != nil {
		return false, err
	}
	r.head = string(b)
	return true, nil
}

// more reports whether more than k names are left to yield.
func (n *names) more(k int) bool {
	return n.files != nil || len(n.mem)-n.i > k
}

// next returns the next name, or false at the end.
func (n *names) next() (string, bool, error) {
	if n.files == nil {
		if n.i >= len(n.mem) {
			return "", false, nil
		}
		n.i++
		return n.mem[n.i-1], true, nil
	}
	if len(n.h) == 0 {
		return "", false, nil
	}
	top := n.h[0]
	name := top.head
	ok, err := top.next()
	if err != nil {
		return "", false, fmt.Errorf("read spilled names: %w", err)
	}
	if ok {
		heap.Fix(&n.h, 0)
	} else {
		heap.Pop(&n.h)
	}
	return name, true, nil
}

func (n *names) close() {
	for _, f := range n.files {
		f.Close()
	}
	n.files, n.mem = nil, nil
}
