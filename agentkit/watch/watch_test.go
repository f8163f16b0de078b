package watch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"vaultnode/internal/clock"
)

// collector runs a watcher and accumulates what it delivers.
type collector struct {
	w      *Watcher
	cancel context.CancelFunc
	done   chan error

	mu      sync.Mutex
	batches []Batch
	paths   map[string]int // path -> number of batches naming it
	rescan  map[string]bool
	full    int
}

func startWatcher(t *testing.T, backend string, roots []string, opts Options, clk clock.Clock) *collector {
	t.Helper()
	opts.Backend = backend
	w, err := New(roots, opts, zaptest.NewLogger(t), clk)
	if err != nil {
		t.Fatalf("New(%s): %v", backend, err)
	}
	if got := w.Backend(); got != backend {
		t.Fatalf("Backend() = %q, want %q", got, backend)
	}
	return runCollector(t, w)
}

func runCollector(t *testing.T, w *Watcher) *collector {
	ctx, cancel := context.WithCancel(context.Background())
	c := &collector{w: w, cancel: cancel, done: make(chan error, 1), paths: map[string]int{}, rescan: map[string]bool{}}
	go func() { c.done <- w.Run(ctx) }()
	go func() {
		for b := range w.Batches() {
			c.mu.Lock()
			c.batches = append(c.batches, b)
			for _, p := range b.Paths {
				c.paths[p]++
			}
			for _, d := range b.Rescan {
				c.rescan[d] = true
			}
			if b.Full {
				c.full++
			}
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-c.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return c
}

// coveredLocked reports whether p was delivered as a path, inside a rescan, or by
// a full rescan: what a consumer that rescans would see. Only the tests of
// the rescan paths (collapse, overflow) accept this; every other test
// requires the precise event (waitPaths, waitRescans).
// c.mu is held.
func (c *collector) coveredLocked(p string) bool {
	if c.paths[p] > 0 || c.full > 0 {
		return true
	}
	for q := p; ; q = filepath.Dir(q) {
		if c.rescan[q] {
			return true
		}
		if q == filepath.Dir(q) {
			return false
		}
	}
}

// waitPaths waits until each of paths has been delivered as a path of its
// own. A rescan of its directory or a full rescan does not count: it would
// hide a watcher that lost the event.
func (c *collector) waitPaths(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		c.waitFor(t, "the path "+p, func() bool { return c.paths[p] > 0 })
	}
	c.noFull(t)
}

// waitRescans waits until each of dirs has been delivered as a rescan of
// exactly that directory (not of a parent, not a full rescan).
func (c *collector) waitRescans(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		c.waitFor(t, "a rescan of "+d, func() bool { return c.rescan[d] })
	}
	c.noFull(t)
}

// noFull fails if a full rescan was delivered: on a filesystem of the
// test's own (isolatedDir) nothing overflows the kernel queue, so a full
// rescan means the watcher gave up on precise events.
func (c *collector) noFull(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.full > 0 {
		t.Fatalf("a full rescan was delivered (stats %+v): batches %+v", c.w.Stats(), c.batches)
	}
}

// isolatedDir returns a directory on a tmpfs of the test's own, so that the
// fanotify filesystem mark sees this test's events only and no other
// process's activity can overflow the kernel queue and turn precise events
// into a full rescan.
func isolatedDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64m,mode=0755"); err != nil {
		t.Fatalf("mount a tmpfs for the watch test: %v (the watch tests run as root, as fanotify needs)", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func (c *collector) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batches = nil
	c.paths = map[string]int{}
	c.rescan = map[string]bool{}
	c.full = 0
}

// waitFor waits until cond, called with c.mu held, holds.
func (c *collector) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c.mu.Lock()
		ok := cond()
		c.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.mu.Lock()
			defer c.mu.Unlock()
			t.Fatalf("waiting for %s: batches so far %+v", what, c.batches)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitCovered waits until every one of paths is covered (see covered).
func (c *collector) waitCovered(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		c.waitFor(t, "change of "+p, func() bool { return c.coveredLocked(p) })
	}
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

var backends = []string{BackendFanotify, BackendInotify}

func TestCreateWriteRenameDelete(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			root := isolatedDir(t)
			c := startWatcher(t, be, []string{root}, Options{Quiet: 50 * time.Millisecond}, clock.Real{})
			a := filepath.Join(root, "a.txt")
			b := filepath.Join(root, "b.txt")

			writeFile(t, a, "one")
			c.waitPaths(t, a)

			c.reset()
			f, err := os.OpenFile(a, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString("two")
			f.Close()
			c.waitPaths(t, a)

			c.reset()
			if err := os.Rename(a, b); err != nil {
				t.Fatal(err)
			}
			c.waitPaths(t, a, b)

			c.reset()
			if err := os.Chmod(b, 0o600); err != nil {
				t.Fatal(err)
			}
			c.waitPaths(t, b)

			c.reset()
			if err := os.Remove(b); err != nil {
				t.Fatal(err)
			}
			c.waitPaths(t, b)

			// A new directory is a rescan of itself, which covers what
			// was written into it before a watch could exist.
			c.reset()
			d1 := filepath.Join(root, "d1")
			os.Mkdir(d1, 0o755)
			writeFile(t, filepath.Join(d1, "inner"), "x")
			c.waitRescans(t, d1)
			// Renaming a directory reports the old name as a path and
			// rescans the new one.
			c.reset()
			d2 := filepath.Join(root, "d2")
			if err := os.Rename(d1, d2); err != nil {
				t.Fatal(err)
			}
			c.waitPaths(t, d1)
			c.waitRescans(t, d2)
			// After the rename, changes inside the renamed directory carry the new name.
			c.reset()
			writeFile(t, filepath.Join(d2, "inner"), "y")
			c.waitPaths(t, filepath.Join(d2, "inner"))
			c.mu.Lock()
			for p := range c.paths {
				if strings.HasPrefix(p, d1+"/") {
					t.Errorf("change reported under the old name %s", p)
				}
			}
			c.mu.Unlock()

			// Nothing outside the root is reported.
			c.mu.Lock()
			for p := range c.paths {
				if !under(p, root) {
					t.Errorf("path outside the root: %s", p)
				}
			}
			c.mu.Unlock()
		})
	}
}

func TestNewDirectoriesWithContent(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			fs := isolatedDir(t)
			root := filepath.Join(fs, "root")
			outside := filepath.Join(fs, "outside") // same filesystem: trees move in and out by rename
			os.Mkdir(root, 0o755)
			os.Mkdir(outside, 0o755)
			c := startWatcher(t, be, []string{root}, Options{Quiet: 50 * time.Millisecond}, clock.Real{})

			// mkdir -p a/b/c && echo > a/b/c/f, as fast as Go can: the
			// new top directory is rescanned, which covers f.
			deep := filepath.Join(root, "a", "b", "c")
			if err := os.MkdirAll(deep, 0o755); err != nil {
				t.Fatal(err)
			}
			f := filepath.Join(deep, "f")
			writeFile(t, f, "\n")
			c.waitRescans(t, filepath.Join(root, "a"))

			// A whole tree moved in from outside the root is rescanned.
			tree := filepath.Join(outside, "tree")
			os.MkdirAll(filepath.Join(tree, "x", "y"), 0o755)
			writeFile(t, filepath.Join(tree, "x", "y", "g"), "g")
			c.reset()
			moved := filepath.Join(root, "tree")
			if err := os.Rename(tree, moved); err != nil {
				t.Fatal(err)
			}
			c.waitRescans(t, moved)

			// And changes inside it afterwards are precise paths (inotify
			// added watches).
			c.reset()
			h := filepath.Join(moved, "x", "y", "h")
			writeFile(t, h, "h")
			c.waitPaths(t, h)

			// A file moved out of the root is reported under its old name.
			c.reset()
			if err := os.Rename(h, filepath.Join(outside, "h")); err != nil {
				t.Fatal(err)
			}
			c.waitPaths(t, h)
			c.mu.Lock()
			for p := range c.paths {
				if !under(p, root) {
					t.Errorf("path outside the root: %s", p)
				}
			}
			c.mu.Unlock()
		})
	}
}

func TestThousandWritesCoalesce(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			root := isolatedDir(t)
			// A quiet period far longer than the loop takes, so a loaded
			// machine pausing the writer cannot split the burst.
			c := startWatcher(t, be, []string{root}, Options{Quiet: time.Second, MaxDelay: time.Minute}, clock.Real{})
			p := filepath.Join(root, "hot")
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 1000; i++ {
				fmt.Fprintf(f, "line %d\n", i)
				if i%100 == 99 { // close and reopen now and then: close_write events too
					f.Close()
					if f, err = os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0); err != nil {
						t.Fatal(err)
					}
				}
			}
			f.Close()
			c.waitPaths(t, p)
			time.Sleep(1500 * time.Millisecond) // past the quiet period: nothing more arrives
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.paths[p] != 1 || len(c.batches) != 1 || len(c.batches[0].Paths) != 1 {
				t.Fatalf("1000 writes gave %d batches naming the file %d times: %+v", len(c.batches), c.paths[p], c.batches)
			}
			t.Logf("%s: %d kernel events became one path", be, c.w.Stats().Events)
		})
	}
}

// The collapse path: past MaxPending entries, paths become rescans of their
// directories. 60 files in 3 directories with a limit of 8 must come out as
// rescans of those directories (a full rescan would be the next step, and
// is not needed for 3 directories), and every file must be covered.
func TestPendingLimitCollapsesToDirectories(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			root := isolatedDir(t)
			dirs := map[string]bool{}
			for _, d := range []string{"d1", "d2", "d3"} {
				os.Mkdir(filepath.Join(root, d), 0o755)
				dirs[filepath.Join(root, d)] = true
			}
			c := startWatcher(t, be, []string{root}, Options{Quiet: 300 * time.Millisecond, MaxDelay: time.Minute, MaxPending: 8}, clock.Real{})
			var all []string
			for i := 0; i < 60; i++ {
				p := filepath.Join(root, fmt.Sprintf("d%d", i%3+1), fmt.Sprintf("f%02d", i))
				writeFile(t, p, "x")
				all = append(all, p)
			}
			c.waitCovered(t, all...)
			time.Sleep(400 * time.Millisecond)
			c.noFull(t)
			c.mu.Lock()
			defer c.mu.Unlock()
			for _, b := range c.batches {
				if len(b.Paths)+len(b.Rescan) > 8 {
					t.Errorf("batch exceeds the pending limit: %d paths, %d rescans", len(b.Paths), len(b.Rescan))
				}
			}
			if len(c.rescan) == 0 {
				t.Fatalf("no collapse to directories: %+v", c.batches)
			}
			for d := range c.rescan {
				if !dirs[d] {
					t.Errorf("rescan of %s, want only the directories written to (d1, d2, d3)", d)
				}
			}
			if st := c.w.Stats(); st.Collapses == 0 {
				t.Errorf("Stats.Collapses = 0")
			}
		})
	}
}

// A real kernel queue overflow: events pile up before Run reads any, past the
// queue limit; the first batch must ask for a full rescan.
func TestQueueOverflowRequestsFullRescan(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			root := isolatedDir(t)
			w, err := New([]string{root}, Options{Backend: be, Quiet: 50 * time.Millisecond}, zaptest.NewLogger(t), clock.Real{})
			if err != nil {
				t.Fatal(err)
			}
			limit := w.Limits().QueueLimit
			if limit <= 0 || limit > 200000 {
				w.Close()
				t.Fatalf("queue limit %d: cannot overflow it in a test", limit)
			}
			// Distinct files, so the kernel cannot merge their events.
			for i := 0; i < limit+100; i++ {
				f, err := os.Create(filepath.Join(root, fmt.Sprintf("f%06d", i)))
				if err != nil {
					t.Fatal(err)
				}
				f.Close()
			}
			c := runCollector(t, w)
			c.waitFor(t, "a full rescan", func() bool { return c.full > 0 })
			if st := w.Stats(); st.Overflows == 0 {
				t.Errorf("Stats.Overflows = 0 after a full rescan for overflow")
			}
		})
	}
}

func TestPeriodicFullRescanWithFakeClock(t *testing.T) {
	root := t.TempDir()
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	w, err := New([]string{root}, Options{Backend: BackendInotify, FullRescan: time.Hour}, zaptest.NewLogger(t), clk)
	if err != nil {
		t.Fatal(err)
	}
	c := runCollector(t, w)
	deadline := time.Now().Add(15 * time.Second)
	for {
		c.mu.Lock()
		n := c.full
		c.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no periodic full rescan")
		}
		clk.Advance(10 * time.Minute)
		time.Sleep(2 * time.Millisecond)
	}
	if clk.Now().Before(time.Date(2026, 1, 1, 1, 0, 0, 0, time.UTC)) {
		t.Fatalf("full rescan before the interval: %v", clk.Now())
	}
}

func TestAutoPicksFanotifyAndReportsLimits(t *testing.T) {
	root := t.TempDir()
	w, err := New([]string{root}, Options{}, zaptest.NewLogger(t), clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	l := w.Limits()
	if l.Backend != BackendFanotify || len(l.Filesystems) == 0 || l.Reason == "" {
		t.Fatalf("Limits = %+v, want fanotify with filesystems (we are root on kernel >= 5.9)", l)
	}
	t.Logf("auto: %+v", l)
}

func TestInotifyWatchBudget(t *testing.T) {
	root := t.TempDir()
	for i := 0; i < 10; i++ {
		os.MkdirAll(filepath.Join(root, fmt.Sprintf("d%d", i), "sub"), 0o755)
	}
	w, err := New([]string{root}, Options{Backend: BackendInotify, MaxWatches: 5}, zaptest.NewLogger(t), clock.Real{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	l := w.Limits()
	if l.Watches != 5 || l.MaxWatches != 5 || l.Degraded == "" {
		t.Fatalf("Limits = %+v, want 5 of 5 watches and a degraded note", l)
	}
}

func TestNewErrors(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, "file")
	writeFile(t, file, "x")
	for _, tt := range []struct {
		roots []string
		opts  Options
		want  string
	}{
		{nil, Options{}, "no roots"},
		{[]string{filepath.Join(root, "missing")}, Options{}, "no such file"},
		{[]string{file}, Options{}, "not a directory"},
		{[]string{root}, Options{Backend: "kqueue"}, "want fanotify, inotify"},
	} {
		w, err := New(tt.roots, tt.opts, zaptest.NewLogger(t), clock.Real{})
		if err == nil {
			w.Close()
			t.Errorf("New(%v, %+v) succeeded", tt.roots, tt.opts)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%v, %+v) = %v, want it to mention %q", tt.roots, tt.opts, err, tt.want)
		}
	}
}

// BenchmarkCapture measures how many file changes per second the watcher
// turns into delivered paths: each iteration creates and writes one file
// (create, modify, close_write: three kernel events) in one of 100
// directories, and the clock stops once every path has been delivered.
func BenchmarkCapture(b *testing.B) {
	for _, be := range backends {
		b.Run(be, func(b *testing.B) {
			root := b.TempDir()
			for i := 0; i < 100; i++ {
				os.Mkdir(filepath.Join(root, fmt.Sprintf("d%02d", i)), 0o755)
			}
			w, err := New([]string{root}, Options{Backend: be, Quiet: 20 * time.Millisecond, MaxPending: b.N + 1000}, nil, clock.Real{})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			seen := map[string]bool{}
			all := make(chan struct{})
			go func() {
				for batch := range w.Batches() {
					for _, p := range batch.Paths {
						seen[p] = true
					}
					if len(seen) >= b.N {
						close(all)
						for range w.Batches() {
						}
						return
					}
				}
			}()
			data := []byte("some content\n")
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if err := os.WriteFile(filepath.Join(root, fmt.Sprintf("d%02d", i%100), fmt.Sprintf("f%d", i)), data, 0o644); err != nil {
					b.Fatal(err)
				}
			}
			written := time.Since(start)
			select {
			case <-all:
			case <-time.After(60 * time.Second):
				b.Fatalf("only some of %d paths delivered", b.N)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			st := w.Stats()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "files/s")
			b.ReportMetric(float64(st.Events)/elapsed.Seconds(), "events/s")
			b.ReportMetric(float64(b.N)/written.Seconds(), "writes/s")
			b.ReportMetric(float64((elapsed - written).Milliseconds()), "ms-lag")
			cancel()
			<-done
		})
	}
}

func TestExclude(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			root := isolatedDir(t)
			state := filepath.Join(root, "state")
			os.Mkdir(state, 0o755)
			c := startWatcher(t, be, []string{root}, Options{Quiet: 50 * time.Millisecond, Exclude: []string{state}}, clock.Real{})
			writeFile(t, filepath.Join(state, "journal"), "x")
			marker := filepath.Join(root, "marker")
			writeFile(t, marker, "y")
			c.waitPaths(t, marker)
			c.mu.Lock()
			defer c.mu.Unlock()
			for p := range c.paths {
				if under(p, state) {
					t.Errorf("excluded path reported: %s", p)
				}
			}
		})
	}
}

// BenchmarkLatency measures capture latency under the steady load:
// one change every 10 ms (100/s) to files of a pre-made tree, with the
// default quiet period and max delay. Latency is from a write's close to
// the delivery of the batch naming the file; run with -benchtime 500x.
func BenchmarkLatency(b *testing.B) {
	for _, be := range backends {
		b.Run(be, func(b *testing.B) {
			root := b.TempDir()
			const files = 2000
			names := make([]string, files)
			for i := range names {
				d := filepath.Join(root, fmt.Sprintf("d%02d", i%50))
				os.MkdirAll(d, 0o755)
				names[i] = filepath.Join(d, fmt.Sprintf("f%04d", i))
				os.WriteFile(names[i], []byte("x"), 0o644)
			}
			w, err := New([]string{root}, Options{Backend: be}, nil, clock.Real{})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			var mu sync.Mutex
			written := map[string]time.Time{}
			var lat []time.Duration
			got := make(chan struct{}, b.N)
			go func() {
				for batch := range w.Batches() {
					now := time.Now()
					mu.Lock()
					for _, p := range batch.Paths {
						if t0, ok := written[p]; ok {
							lat = append(lat, now.Sub(t0))
							delete(written, p)
							got <- struct{}{}
						}
					}
					mu.Unlock()
				}
			}()
			tick := time.NewTicker(10 * time.Millisecond)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				<-tick.C
				p := names[(i*7919)%files]
				os.WriteFile(p, []byte(fmt.Sprint(i)), 0o644)
				mu.Lock()
				if _, pending := written[p]; !pending {
					written[p] = time.Now()
				} else {
					got <- struct{}{} // coalesced with an earlier write
				}
				mu.Unlock()
			}
			tick.Stop()
			for i := 0; i < b.N; i++ {
				select {
				case <-got:
				case <-time.After(30 * time.Second):
					b.Fatalf("%d of %d changes delivered", i, b.N)
				}
			}
			b.StopTimer()
			cancel()
			<-done
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "ms-p50")
			b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "ms-p99")
			b.ReportMetric(float64(lat[len(lat)-1].Milliseconds()), "ms-max")
		})
	}
}

// A root given through a symbolic link is watched at its target and
// reported under the name given.
func TestSymlinkedRoot(t *testing.T) {
	for _, be := range backends {
		t.Run(be, func(t *testing.T) {
			dir := isolatedDir(t)
			real := filepath.Join(dir, "real")
			os.MkdirAll(filepath.Join(real, "sub"), 0o755)
			link := filepath.Join(dir, "link")
			if err := os.Symlink(real, link); err != nil {
				t.Fatal(err)
			}
			c := startWatcher(t, be, []string{link}, Options{Quiet: 50 * time.Millisecond}, clock.Real{})
			writeFile(t, filepath.Join(real, "sub", "f"), "x")
			c.waitPaths(t, filepath.Join(link, "sub", "f"))
			if got := c.w.Roots(); len(got) != 1 || got[0] != link {
				t.Fatalf("Roots = %v", got)
			}
		})
	}
}

// BenchmarkIdle runs a watcher on a quiet root for five seconds per
// iteration and reports the CPU it used: with fanotify, that is the cost of
// discarding the rest of the filesystem's activity (on a shared build
// machine, a lot). Run with -benchtime 1x.
func BenchmarkIdle(b *testing.B) {
	for _, be := range backends {
		b.Run(be, func(b *testing.B) {
			root := b.TempDir()
			w, err := New([]string{root}, Options{Backend: be}, nil, clock.Real{})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			var ru0, ru1 unix.Rusage
			unix.Getrusage(unix.RUSAGE_SELF, &ru0)
			start := time.Now()
			for i := 0; i < b.N; i++ {
				time.Sleep(5 * time.Second)
			}
			elapsed := time.Since(start)
			unix.Getrusage(unix.RUSAGE_SELF, &ru1)
			cancel()
			<-done
			cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
			st := w.Stats()
			b.ReportMetric(100*cpu.Seconds()/elapsed.Seconds(), "%cpu")
			b.ReportMetric(float64(st.Seen)/elapsed.Seconds(), "seen/s")
			b.ReportMetric(float64(ru1.Maxrss)/1024, "maxrss-MB")
		})
	}
}
