// Package watch captures file changes under a set of roots as they happen and
// hands them out in aggregated batches.
//
// Two kernel interfaces are used on Linux: fanotify with a filesystem-wide
// mark and directory+name reporting (kernel 5.9 or later, needs
// CAP_SYS_ADMIN), which sees every change on the filesystem with a fixed
// cost; and inotify, with one watch per directory added as directories
// appear, as the fallback. Backend and Limits say which one runs and what it
// cannot do.
//
// Events are aggregated per path: a file written a thousand times in a
// second is one path in one batch. Each path is delivered once it has been
// quiet for the quiet period (or its first event is MaxDelay old, so a file
// written without pause is still sent), independently of the others: a busy
// file does not hold back a file written once. Memory is
// bounded: past MaxPending entries, paths collapse into "rescan this
// directory" entries and, failing that, into a full rescan. A kernel queue
// overflow asks for a full rescan at once; a periodic full rescan catches
// anything the kernel lost without saying so.
package watch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"

	"vaultnode/internal/clock"
)

// Backend names.
const (
	BackendAuto     = ""
	BackendFanotify = "fanotify"
	BackendInotify  = "inotify"
)

// ErrUnsupported is returned when no backend can run here.
var ErrUnsupported = errors.New("change capture unsupported")

// Options tune a Watcher. The zero value gives the defaults.
type Options struct {
	// Backend forces "fanotify" or "inotify"; empty picks fanotify when the
	// kernel and privileges allow it, inotify otherwise.
	Backend string
	// Quiet is how long a path must see no event before it is delivered
	// (default 200ms).
	Quiet time.Duration
	// MaxDelay bounds how long a path waits while its events keep arriving
	// (default 2s).
	MaxDelay time.Duration
	// MaxPending bounds the pending paths plus rescan directories held
	// between batches (default 10000). Past it, paths collapse into rescans
	// of their directories.
	MaxPending int
	// FullRescan is the interval of the periodic full-rescan request
	// (default 6h; negative disables it).
	FullRescan time.Duration
	// Exclude lists directories whose changes are ignored (the agent's own
	// state directory, when it lies under a root, must be here or every
	// journal write would be reported as a change).
	Exclude []string
	// MaxWatches caps the inotify watches this watcher adds (default: the
	// kernel's max_user_watches). Directories past the cap are reported by
	// Limits and only caught by full rescans.
	MaxWatches int
}

func (o *Options) fill() {
	if o.Quiet <= 0 {
		o.Quiet = 200 * time.Millisecond
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = 2 * time.Second
	}
	if o.MaxDelay < o.Quiet {
		o.MaxDelay = o.Quiet
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 10000
	}
	if o.FullRescan == 0 {
		o.FullRescan = 6 * time.Hour
	}
}

// Batch is one delivery of changes. Paths changed (created, written,
// attributes, deleted, renamed: both old and new names); Rescan lists
// directories whose whole subtree must be rescanned (new directories, or
// collapsed paths); Full asks for a rescan of every root (queue overflow,
// periodic rescan, or too many changes to track), in which case Paths and
// Rescan are empty.
type Batch struct {
	Paths  []string
	Rescan []string
	Full   bool
}

// Limits describes the running backend and what it cannot see.
type Limits struct {
	Backend string
	// Reason says why this backend was chosen (e.g. why fanotify was not).
	Reason string
	// Filesystems are the mount points marked (fanotify).
	Filesystems []string
	// Watches and MaxWatches count inotify watches in use and allowed.
	Watches    int
	MaxWatches int
	// QueueLimit is the kernel's event queue length; past it events are
	// dropped and a full rescan is requested.
	QueueLimit int
	// Degraded is non-empty when some changes can only be caught by full
	// rescans (for example when inotify watches ran out).
	Degraded string
}

// Stats counts what the watcher has done.
type Stats struct {
	Seen      uint64 // kernel events read (fanotify sees the whole filesystem)
	Events    uint64 // kernel events accepted under the roots
	Batches   uint64
	Collapses uint64 // times pending paths collapsed into directory rescans
	Overflows uint64 // kernel queue overflows
}

// backend is a kernel change source.
type backend interface {
	// run reads events until ctx ends or close is called, passing each to
	// emit. It returns nil when stopped.
	run(ctx context.Context, emit func(event)) error
	close() error
	limits() Limits
	// seen counts kernel events read, including those outside the roots.
	seen() uint64
}

// Watcher captures changes under its roots. Create it with New, start it
// with Run, read Batches.
type Watcher struct {
	roots []string
	opts  Options
	log   *zap.Logger
	clk   clock.Clock
	be    backend
	agg   *aggregator
	out   chan Batch
	kick  chan struct{}

	exclude   []string
	realRoots []string // roots with symbolic links resolved: what the kernel reports

	mu        sync.Mutex
	batches   uint64
	reason    string
	closeOnce sync.Once
}

// New prepares a watcher over roots (directories). It sets up the kernel
// side at once, so a failure (no privilege, no watches left) is reported
// here; events are read only once Run is called.
func New(roots []string, opts Options, log *zap.Logger, clk clock.Clock) (*Watcher, error) {
	if len(roots) == 0 {
		return nil, fmt.Errorf("create watcher: no roots given")
	}
	opts.fill()
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("watch")
	var clean, realRoots []string
	for _, r := range roots {
		abs, err := filepath.Abs(r)
		if err != nil {
			return nil, fmt.Errorf("resolve root %s: %w", r, err)
		}
		fi, err := os.Stat(abs)
		if err != nil {
			return nil, fmt.Errorf("watch root %s: %w", r, err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("watch root %s: not a directory; watch the directory that holds it", r)
		}
		abs = filepath.Clean(abs)
		real, err := filepath.EvalSymlinks(abs)
		if err != nil {
			return nil, fmt.Errorf("resolve root %s: %w", r, err)
		}
		clean = append(clean, abs)
		realRoots = append(realRoots, real)
	}
	var exclude []string
	for _, x := range opts.Exclude {
		abs, err := filepath.Abs(x)
		if err != nil {
			return nil, fmt.Errorf("resolve excluded directory %s: %w", x, err)
		}
		exclude = append(exclude, filepath.Clean(abs))
	}
	w := &Watcher{
		exclude: exclude,
		roots:   clean,
		opts:    opts,
		log:     log,
		clk:     clk,
		agg:     newAggregator(clean, opts.MaxPending),
		out:     make(chan Batch),
		kick:    make(chan struct{}, 1),
	}
	w.realRoots = realRoots
	be, reason, err := newBackend(realRoots, opts, log)
	if err != nil {
		return nil, err
	}
	w.be = be
	w.reason = reason
	l := be.limits()
	log.Info("change capture ready", zap.String("backend", l.Backend), zap.String("reason", reason),
		zap.Strings("roots", clean), zap.Strings("filesystems", l.Filesystems),
		zap.Int("watches", l.Watches), zap.Int("max_watches", l.MaxWatches), zap.Int("queue_limit", l.QueueLimit),
		zap.String("degraded", l.Degraded))
	return w, nil
}

// Backend returns "fanotify" or "inotify".
func (w *Watcher) Backend() string { return w.be.limits().Backend }

// Limits describes the backend and its limits.
func (w *Watcher) Limits() Limits {
	l := w.be.limits()
	l.Reason = w.reason
	return l
}

// Stats returns counters.
func (w *Watcher) Stats() Stats {
	w.agg.mu.Lock()
	s := Stats{Seen: w.be.seen(), Events: w.agg.events, Collapses: w.agg.collapses, Overflows: w.agg.overflows}
	w.agg.mu.Unlock()
	w.mu.Lock()
	s.Batches = w.batches
	w.mu.Unlock()
	return s
}

// Roots returns the cleaned absolute roots.
func (w *Watcher) Roots() []string { return append([]string(nil), w.roots...) }

// Batches delivers the batches; it is closed when Run returns.
func (w *Watcher) Batches() <-chan Batch { return w.out }

// Close releases the kernel side of a watcher whose Run was never called.
// Run closes it itself.
func (w *Watcher) Close() error {
	var err error
	w.closeOnce.Do(func() { err = w.be.close() })
	return err
}

func (w *Watcher) emit(ev event) {
	if ev.kind != kindOverflow {
		// Report paths under the roots as given, not as resolved.
		for i, r := range w.realRoots {
			if r != w.roots[i] && under(ev.path, r) {
				ev.path = w.roots[i] + ev.path[len(r):]
				break
			}
		}
		for _, x := range w.exclude {
			if under(ev.path, x) {
				return
			}
		}
	}
	if w.agg.add(ev, w.clk.Now()) {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

// Run reads kernel events and delivers batches until ctx ends. It returns
// nil when ctx ends, or the backend's error.
func (w *Watcher) Run(ctx context.Context) error {
	defer close(w.out)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	beErr := make(chan error, 1)
	go func() {
		beErr <- w.be.run(ctx, w.emit)
	}()
	defer func() {
		cancel()
		<-beErr // the reader closes its file on cancel and returns
		w.Close()
	}()

	timer := w.clk.NewTimer(time.Hour)
	timer.Stop()
	var fullC <-chan time.Time
	var full clock.Timer
	if w.opts.FullRescan > 0 {
		full = w.clk.NewTimer(w.opts.FullRescan)
		fullC = full.C()
		defer full.Stop()
	}
	for {
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case err := <-beErr:
			beErr <- err // for the deferred wait
			if err != nil {
				return fmt.Errorf("read %s events: %w", w.Backend(), err)
			}
			return nil
		case <-w.kick:
		case <-timer.C():
		case <-fullC:
			w.log.Info("periodic full rescan requested", zap.Duration("interval", w.opts.FullRescan))
			w.agg.requestFull(w.clk.Now())
			full.Reset(w.opts.FullRescan)
		}
		for {
			ok, wait := w.agg.due(w.clk.Now(), w.opts.Quiet, w.opts.MaxDelay)
			if !ok {
				if wait > 0 {
					timer.Stop()
					timer.Reset(wait)
				}
				break
			}
			b := w.agg.take(w.clk.Now(), w.opts.Quiet, w.opts.MaxDelay, w.opts.Quiet/4)
			if b.Full {
				w.log.Info("full rescan requested")
			}
			select {
			case w.out <- b:
				w.mu.Lock()
				w.batches++
				w.mu.Unlock()
			case <-ctx.Done():
				return nil
			}
		}
	}
}
