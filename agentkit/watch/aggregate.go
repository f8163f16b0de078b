package watch

import (
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// kind says what happened to a path, as far as the aggregator cares.
type kind uint8

const (
	kindChanged  kind = iota // written, attributes, created file, deleted, moved away
	kindNewDir               // a directory appeared (created or moved in): rescan it
	kindOverflow             // the kernel dropped events: rescan every root
)

type event struct {
	path string
	kind kind
}

// aggregator holds the pending changes between batches with bounded memory:
// at most max entries (paths plus rescan directories). Past that, paths
// collapse into rescans of their directories, directories into their
// parents, and finally into a full rescan.
//
// Each entry keeps its own timing: it is due once no event has touched it
// for the quiet period, or once its first event is maxDelay old. A file
// being written continuously therefore does not hold back a file written
// once, and a new directory is rescanned once activity inside it settles.
type aggregator struct {
	roots []string
	max   int

	mu     sync.Mutex
	paths  map[string]*timing
	rescan map[string]*timing
	full   bool
	// counters for Stats
	events    uint64
	collapses uint64
	overflows uint64
}

type timing struct{ first, last time.Time }

func (t *timing) touch(now time.Time) { t.last = now }

func (t *timing) merge(o *timing) {
	if o.first.Before(t.first) {
		t.first = o.first
	}
	if o.last.After(t.last) {
		t.last = o.last
	}
}

func (t *timing) dueAt(quiet, maxDelay time.Duration) time.Time {
	at := t.last.Add(quiet)
	if limit := t.first.Add(maxDelay); limit.Before(at) {
		return limit
	}
	return at
}

func newAggregator(roots []string, max int) *aggregator {
	return &aggregator{roots: roots, max: max, paths: map[string]*timing{}, rescan: map[string]*timing{}}
}

func (a *aggregator) emptyLocked() bool {
	return !a.full && len(a.paths) == 0 && len(a.rescan) == 0
}

// add records one event and reports whether the pending set went from empty
// to non-empty or needs a full rescan (the runner must re-arm its timer). A new
// entry never falls due before the existing ones, so other events need no
// wake-up.
func (a *aggregator) add(ev event, now time.Time) (wake bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events++
	wasEmpty := a.emptyLocked()
	switch {
	case ev.kind == kindOverflow:
		a.overflows++
		a.setFullLocked()
		return true
	case a.full:
		return wasEmpty
	}
	if d, ok := a.coveringLocked(ev.path); ok {
		a.rescan[d].touch(now)
		return wasEmpty
	}
	set := a.paths
	if ev.kind == kindNewDir {
		set = a.rescan
	}
	if t, ok := set[ev.path]; ok {
		t.touch(now)
	} else {
		set[ev.path] = &timing{first: now, last: now}
	}
	if len(a.paths)+len(a.rescan) > a.max {
		a.collapseLocked()
		return wasEmpty || a.full
	}
	return wasEmpty
}

// requestFull asks for a full rescan at once (periodic rescan).
func (a *aggregator) requestFull(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.setFullLocked()
}

func (a *aggregator) setFullLocked() {
	a.full = true
	clear(a.paths)
	clear(a.rescan)
}

// coveringLocked returns the queued rescan directory that holds p (p itself
// or an ancestor up to its root).
func (a *aggregator) coveringLocked(p string) (string, bool) {
	if len(a.rescan) == 0 {
		return "", false
	}
	for q := p; ; {
		if _, ok := a.rescan[q]; ok {
			return q, true
		}
		if a.isRoot(q) {
			return "", false
		}
		parent := filepath.Dir(q)
		if parent == q {
			return "", false
		}
		q = parent
	}
}

func (a *aggregator) isRoot(p string) bool {
	for _, r := range a.roots {
		if p == r {
			return true
		}
	}
	return false
}

// parentWithin returns p's directory, or p itself when p is a root.
func (a *aggregator) parentWithin(p string) string {
	if a.isRoot(p) {
		return p
	}
	return filepath.Dir(p)
}

// addRescanLocked queues a rescan of d with timing t, merging with an
// existing entry.
func (a *aggregator) addRescanLocked(d string, t *timing) {
	if cur, ok := a.rescan[d]; ok {
		cur.merge(t)
		return
	}
	c := *t
	a.rescan[d] = &c
}

// collapseLocked turns every pending path into a rescan of its directory,
// then lifts rescans to their parents until at most half the limit remain;
// when only roots are left and that is still too many, it asks for a full
// rescan.
func (a *aggregator) collapseLocked() {
	a.collapses++
	for p, t := range a.paths {
		a.addRescanLocked(a.parentWithin(p), t)
	}
	clear(a.paths)
	a.normalizeLocked()
	for len(a.rescan) > a.max/2 {
		old := a.rescan
		a.rescan = make(map[string]*timing, len(old))
		moved := false
		for d, t := range old {
			p := a.parentWithin(d)
			moved = moved || p != d
			a.addRescanLocked(p, t)
		}
		a.normalizeLocked()
		if !moved {
			break
		}
	}
	if len(a.rescan) > a.max/2 && len(a.rescan) > 1 {
		a.setFullLocked()
	}
}

// normalizeLocked drops rescans covered by an ancestor rescan, folding their
// timing into it.
func (a *aggregator) normalizeLocked() {
	for d, t := range a.rescan {
		if a.isRoot(d) {
			continue
		}
		for q := filepath.Dir(d); ; q = filepath.Dir(q) {
			if anc, ok := a.rescan[q]; ok {
				anc.merge(t)
				delete(a.rescan, d)
				break
			}
			if a.isRoot(q) || q == filepath.Dir(q) {
				break
			}
		}
	}
}

// due reports whether some entry should be delivered at now, and otherwise
// how long until one should (0: nothing pending). A full rescan is due at
// once.
func (a *aggregator) due(now time.Time, quiet, maxDelay time.Duration) (bool, time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.full {
		return true, 0
	}
	if a.emptyLocked() {
		return false, 0
	}
	var first time.Time
	for _, set := range []map[string]*timing{a.paths, a.rescan} {
		for _, t := range set {
			if at := t.dueAt(quiet, maxDelay); first.IsZero() || at.Before(first) {
				first = at
			}
		}
	}
	if !now.Before(first) {
		return true, 0
	}
	return false, first.Sub(now)
}

// take returns the entries due by now+slack as a batch and removes them (a
// full rescan takes everything). The slack groups entries falling due close
// together into one batch.
func (a *aggregator) take(now time.Time, quiet, maxDelay, slack time.Duration) Batch {
	a.mu.Lock()
	defer a.mu.Unlock()
	var b Batch
	if a.full {
		b.Full = true
		a.full = false
		a.paths = map[string]*timing{}
		a.rescan = map[string]*timing{}
		return b
	}
	limit := now.Add(slack)
	a.normalizeLocked()
	for d, t := range a.rescan {
		if !t.dueAt(quiet, maxDelay).After(limit) {
			b.Rescan = append(b.Rescan, d)
			delete(a.rescan, d)
		}
	}
	for p, t := range a.paths {
		if _, covered := a.coveringLocked(p); covered {
			continue // stays until its directory is rescanned
		}
		if b.Rescan != nil && coveredBy(p, b.Rescan) {
			delete(a.paths, p)
			continue
		}
		if !t.dueAt(quiet, maxDelay).After(limit) {
			b.Paths = append(b.Paths, p)
			delete(a.paths, p)
		}
	}
	sort.Strings(b.Rescan)
	sort.Strings(b.Paths)
	return b
}

// coveredBy reports whether p is one of dirs or under one of them.
func coveredBy(p string, dirs []string) bool {
	for _, d := range dirs {
		if under(p, d) {
			return true
		}
	}
	return false
}

// under reports whether p is root or inside it.
func under(p, root string) bool {
	if p == root {
		return true
	}
	if root == "/" {
		return strings.HasPrefix(p, "/")
	}
	return strings.HasPrefix(p, root) && p[len(root)] == '/'
}
