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
type aggregator struct {
	roots []string
	max   int

	mu     sync.Mutex
	paths  map[string]struct{}
	rescan map[string]struct{}
	full   bool
	urgent bool // deliver without waiting for quiet
	first  time.Time
	last   time.Time
	// counters for Stats
	events    uint64
	collapses uint64
	overflows uint64
}

func newAggregator(roots []string, max int) *aggregator {
	return &aggregator{roots: roots, max: max, paths: map[string]struct{}{}, rescan: map[string]struct{}{}}
}

func (a *aggregator) emptyLocked() bool {
	return !a.full && len(a.paths) == 0 && len(a.rescan) == 0
}

// add records one event and reports whether the pending set went from empty
// to non-empty or became urgent (the runner must re-arm its timer).
func (a *aggregator) add(ev event, now time.Time) (wake bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events++
	wasEmpty := a.emptyLocked()
	if wasEmpty {
		a.first = now
	}
	a.last = now
	switch {
	case ev.kind == kindOverflow:
		a.overflows++
		a.setFullLocked()
		return true
	case a.full:
		return wasEmpty
	case a.coveredLocked(ev.path):
		return wasEmpty
	case ev.kind == kindNewDir:
		a.rescan[ev.path] = struct{}{}
	default:
		a.paths[ev.path] = struct{}{}
	}
	if len(a.paths)+len(a.rescan) > a.max {
		a.collapseLocked()
	}
	return wasEmpty
}

// requestFull asks for a full rescan at once (periodic rescan).
func (a *aggregator) requestFull(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.emptyLocked() {
		a.first = now
	}
	a.last = now
	a.setFullLocked()
}

func (a *aggregator) setFullLocked() {
	a.full = true
	a.urgent = true
	clear(a.paths)
	clear(a.rescan)
}

// coveredLocked reports whether p or one of its ancestors up to its root is
// already queued for a rescan.
func (a *aggregator) coveredLocked(p string) bool {
	if len(a.rescan) == 0 {
		return false
	}
	for q := p; ; {
		if _, ok := a.rescan[q]; ok {
			return true
		}
		if a.isRoot(q) {
			return false
		}
		parent := filepath.Dir(q)
		if parent == q {
			return false
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

// collapseLocked turns every pending path into a rescan of its directory,
// then lifts rescans to their parents until at most half the limit remain;
// when only roots are left and that is still too many, it asks for a full
// rescan.
func (a *aggregator) collapseLocked() {
	a.collapses++
	for p := range a.paths {
		a.rescan[a.parentWithin(p)] = struct{}{}
	}
	clear(a.paths)
	a.normalizeLocked()
	for len(a.rescan) > a.max/2 {
		next := make(map[string]struct{}, len(a.rescan))
		moved := false
		for d := range a.rescan {
			p := a.parentWithin(d)
			moved = moved || p != d
			next[p] = struct{}{}
		}
		a.rescan = next
		a.normalizeLocked()
		if !moved {
			break
		}
	}
	if len(a.rescan) > a.max/2 && len(a.rescan) > 1 {
		a.setFullLocked()
		a.urgent = false // not a kernel loss; deliver with the normal delay
	}
}

// normalizeLocked drops rescans covered by an ancestor rescan.
func (a *aggregator) normalizeLocked() {
	for d := range a.rescan {
		if d == "" {
			continue
		}
		if a.isRoot(d) {
			continue
		}
		for q := filepath.Dir(d); ; q = filepath.Dir(q) {
			if _, ok := a.rescan[q]; ok {
				delete(a.rescan, d)
				break
			}
			if a.isRoot(q) || q == filepath.Dir(q) {
				break
			}
		}
	}
}

// due reports whether a batch should be delivered at now, and otherwise how
// long until it should (0: nothing pending).
func (a *aggregator) due(now time.Time, quiet, maxDelay time.Duration) (bool, time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.emptyLocked() {
		return false, 0
	}
	if a.urgent {
		return true, 0
	}
	at := a.last.Add(quiet)
	if limit := a.first.Add(maxDelay); limit.Before(at) {
		at = limit
	}
	if !now.Before(at) {
		return true, 0
	}
	return false, at.Sub(now)
}

// take returns the pending changes as a batch and clears them.
func (a *aggregator) take() Batch {
	a.mu.Lock()
	defer a.mu.Unlock()
	var b Batch
	if a.full {
		b.Full = true
	} else {
		a.normalizeLocked()
		for d := range a.rescan {
			b.Rescan = append(b.Rescan, d)
		}
		for p := range a.paths {
			if !a.coveredLocked(p) {
				b.Paths = append(b.Paths, p)
			}
		}
		sort.Strings(b.Rescan)
		sort.Strings(b.Paths)
	}
	a.full, a.urgent = false, false
	a.paths = map[string]struct{}{}
	a.rescan = map[string]struct{}{}
	return b
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
