package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"
)

func open(t *testing.T, path string, opts Options) *Journal {
	t.Helper()
	j, err := Open(path, opts, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

func paths(es []Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Path)
	}
	return out
}

func mustAdd(t *testing.T, j *Journal, ps ...string) uint64 {
	t.Helper()
	seq, err := j.Add(ps)
	if err != nil {
		t.Fatalf("Add: %v", err)
	}
	return seq
}

func TestAddAckSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	j := open(t, path, Options{})
	s1 := mustAdd(t, j, "/a", "/b")
	s2 := mustAdd(t, j, "/c", "/a") // /a again: its latest seq is s2
	if s2 != s1+1 {
		t.Fatalf("seqs %d, %d", s1, s2)
	}
	want := []Entry{{s1, "/b"}, {s2, "/a"}, {s2, "/c"}}
	if diff := cmp.Diff(want, j.Pending()); diff != "" {
		t.Fatalf("Pending (-want +got):\n%s", diff)
	}
	if err := j.Ack(s1); err != nil {
		t.Fatal(err)
	}
	want = []Entry{{s2, "/a"}, {s2, "/c"}}
	if diff := cmp.Diff(want, j.Pending()); diff != "" {
		t.Fatalf("after Ack(%d) (-want +got):\n%s", s1, diff)
	}
	j.Close()

	j = open(t, path, Options{})
	if diff := cmp.Diff(want, j.Pending()); diff != "" {
		t.Fatalf("after reopen (-want +got):\n%s", diff)
	}
	if _, ok := j.PendingRescan(); ok {
		t.Fatal("clean reopen asks for a rescan")
	}
	if s3 := mustAdd(t, j, "/d"); s3 != s2+1 {
		t.Fatalf("seq after reopen = %d, want %d", s3, s2+1)
	}
}

func TestCompactKeepsStateAndNumbering(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	j := open(t, path, Options{NoSync: true})
	var last uint64
	for i := 0; i < 2000; i++ {
		last = mustAdd(t, j, fmt.Sprintf("/dir/file-%04d", i))
		if i%2 == 0 {
			if err := j.Ack(last); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := j.Pending()
	size := j.Stats().Bytes
	if err := j.Compact(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, j.Pending()); diff != "" {
		t.Fatalf("compaction changed pending (-before +after):\n%s", diff)
	}
	if after := j.Stats().Bytes; after >= size {
		t.Fatalf("compaction did not shrink: %d -> %d", size, after)
	}
	if err := j.Ack(last); err != nil {
		t.Fatal(err)
	}
	if err := j.Compact(); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j = open(t, path, Options{NoSync: true})
	if n := len(j.Pending()); n != 0 {
		t.Fatalf("%d pending after acking everything", n)
	}
	if s := mustAdd(t, j, "/x"); s != last+1 {
		t.Fatalf("seq after compaction and reopen = %d, want %d (numbers never go back)", s, last+1)
	}
}

func TestDamagedTailBecomesRescan(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, path string, lastRecord int64)
	}{
		{"truncated mid-record", func(t *testing.T, path string, last int64) {
			st, _ := os.Stat(path)
			if err := os.Truncate(path, st.Size()-3); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated mid-header", func(t *testing.T, path string, last int64) {
			if err := os.Truncate(path, last+5); err != nil {
				t.Fatal(err)
			}
		}},
		{"flipped byte in last record", func(t *testing.T, path string, last int64) {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b := make([]byte, 1)
			f.ReadAt(b, last+12)
			b[0] ^= 0x40
			f.WriteAt(b, last+12)
		}},
		{"garbage appended", func(t *testing.T, path string, last int64) {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			f.Write([]byte{0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4, 5, 6, 7})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "journal")
			j := open(t, path, Options{})
			s1 := mustAdd(t, j, "/kept/one", "/kept/two")
			lastOff := j.Stats().Bytes
			mustAdd(t, j, "/torn/three")
			j.Close()
			tt.damage(t, path, lastOff)

			j = open(t, path, Options{})
			// The intact records were read (numbering continues after them),
			// and the damage became a rescan marker that covers them all.
			r, ok := j.PendingRescan()
			if !ok || !strings.Contains(r.Reason, "damaged") {
				t.Fatalf("damage not reported as a rescan: %+v, %v", r, ok)
			}
			if r.Seq <= s1 {
				t.Fatalf("marker seq %d does not cover the intact batch %d", r.Seq, s1)
			}
			if got := j.Pending(); len(got) != 0 {
				t.Fatalf("pending %v listed though the marker covers them", got)
			}
			// The file is repaired: appending and reopening is clean.
			s := mustAdd(t, j, "/after")
			if s <= s1 {
				t.Fatalf("seq %d after repair, not above %d", s, s1)
			}
			j.Close()
			j = open(t, path, Options{})
			if r2, ok := j.PendingRescan(); !ok || r2 != r {
				t.Fatalf("rescan marker after reopen = %+v, %v; want %+v", r2, ok, r)
			}
			if got := paths(j.Pending()); got[len(got)-1] != "/after" {
				t.Fatalf("pending after repair = %v", got)
			}
			// Acknowledging the marker clears it.
			if err := j.Ack(r.Seq); err != nil {
				t.Fatal(err)
			}
			if _, ok := j.PendingRescan(); ok {
				t.Fatal("rescan still pending after Ack")
			}
		})
	}
}

func TestCapDegradesToRescan(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	const capBytes = 8 << 10
	j := open(t, path, Options{MaxBytes: capBytes, NoSync: true})
	var lastSeq uint64
	for i := 0; i < 1000; i++ {
		lastSeq = mustAdd(t, j, fmt.Sprintf("/data/some/long/directory/name/file-%05d", i))
		if st := j.Stats(); st.Bytes > capBytes {
			t.Fatalf("journal %d bytes, over its %d cap", st.Bytes, capBytes)
		}
	}
	st := j.Stats()
	if st.Degradations == 0 || !st.Rescan {
		t.Fatalf("Stats = %+v, want a degradation to a rescan", st)
	}
	r, ok := j.PendingRescan()
	if !ok || !strings.Contains(r.Reason, "journal full") {
		t.Fatalf("PendingRescan = %+v, %v", r, ok)
	}
	// Every path ever added is covered: by the marker or still listed after it.
	for _, e := range j.Pending() {
		if e.Seq <= r.Seq {
			t.Fatalf("entry %+v listed though the marker %d covers it", e, r.Seq)
		}
	}
	if n := len(j.Pending()); n >= 1000 {
		t.Fatalf("%d pending paths, cap not applied", n)
	}
	// Survives a restart.
	j.Close()
	j = open(t, path, Options{MaxBytes: capBytes, NoSync: true})
	if r2, ok := j.PendingRescan(); !ok || r2.Seq != r.Seq {
		t.Fatalf("after reopen: %+v, %v", r2, ok)
	}
	// After the rescan and the sends, everything is acknowledged.
	if err := j.Ack(lastSeq); err != nil {
		t.Fatal(err)
	}
	if st := j.Stats(); st.Pending != 0 || st.Rescan {
		t.Fatalf("after Ack(%d): %+v", lastSeq, st)
	}
	// And the journal tracks paths again.
	mustAdd(t, j, "/back/to/normal")
	if got := paths(j.Pending()); len(got) != 1 {
		t.Fatalf("pending = %v", got)
	}
}

func TestOneHugeBatchOverCap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	j := open(t, path, Options{MaxBytes: 4 << 10})
	var big []string
	for i := 0; i < 1000; i++ {
		big = append(big, fmt.Sprintf("/p/%04d", i))
	}
	seq := mustAdd(t, j, big...)
	r, ok := j.PendingRescan()
	if !ok || r.Seq <= seq {
		t.Fatalf("batch over the cap: rescan %+v, %v; want a marker covering seq %d", r, ok, seq)
	}
	if len(j.Pending()) != 0 {
		t.Fatalf("pending = %d, want 0 (covered by the marker)", len(j.Pending()))
	}
}

func TestRequestRescan(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	j := open(t, path, Options{})
	mustAdd(t, j, "/old")
	seq, err := j.RequestRescan("inotify queue overflow")
	if err != nil {
		t.Fatal(err)
	}
	mustAdd(t, j, "/new")
	if got := paths(j.Pending()); !cmp.Equal(got, []string{"/new"}) {
		t.Fatalf("pending = %v, want only what came after the marker", got)
	}
	if r, ok := j.PendingRescan(); !ok || r.Seq != seq || r.Reason != "inotify queue overflow" {
		t.Fatalf("PendingRescan = %+v, %v", r, ok)
	}
	if j.LastSeq() != seq+1 {
		t.Fatalf("LastSeq = %d, want %d", j.LastSeq(), seq+1)
	}
}

func TestNotAJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	os.WriteFile(path, []byte("hello, this is not a journal at all"), 0o600)
	_, err := Open(path, Options{}, zaptest.NewLogger(t))
	if !errors.Is(err, ErrNotJournal) {
		t.Fatalf("Open = %v, want ErrNotJournal", err)
	}
	// A header torn while being created is repaired with a rescan.
	os.WriteFile(path, []byte("VNJR"), 0o600)
	j := open(t, path, Options{})
	if _, ok := j.PendingRescan(); !ok {
		t.Fatal("torn header not reported as a rescan")
	}
}

func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	seedPath := filepath.Join(dir, "seed")
	j, err := Open(seedPath, Options{NoSync: true}, nil)
	if err != nil {
		f.Fatal(err)
	}
	j.Add([]string{"/a", "/b"})
	j.Ack(1)
	j.RequestRescan("x")
	j.Close()
	seed, _ := os.ReadFile(seedPath)
	f.Add(seed)
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "j")
		os.WriteFile(path, data, 0o600)
		j, err := Open(path, Options{NoSync: true}, nil)
		if err != nil {
			return
		}
		defer j.Close()
		if _, err := j.Add([]string{"/z"}); err != nil {
			t.Fatal(err)
		}
		j.Pending()
	})
}
