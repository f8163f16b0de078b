package backup

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
)

// A directory the read-ahead did not stat whole (one wider than
// prefetchDirKept, one it did not reach, one on another filesystem) was
// stat'ed by the walker one entry at a time, each a cold inode read: a
// no-change backup of 200,000 files in one directory spent 2 of its 3.7 s
// in one reader's statx and the walker waiting for it (docs/performance.md,
// item 65). Cold inode reads overlap well, so statAhead stats such a
// directory's names a window ahead of the walker, statAheadWorkers at once.
const (
	// statAheadMin is how many names the read-ahead lacks before the walker
	// stats them ahead; fewer are stat'ed as they come.
	statAheadMin = 32
	// statAheadWindow names are stat'ed together; at most three windows
	// (256 bytes a stat) are held: one the walker takes from, one waiting,
	// one being stat'ed.
	statAheadWindow  = 256
	statAheadWorkers = 8
)

// statAhead yields a directory's names in their order, each with its stat
// when it was taken ahead.
type statAhead struct {
	windows chan *statWindow
	stop    chan struct{}
	done    chan struct{}
	cur     *statWindow
	i       int
}

type statWindow struct {
	names []string
	stats []unix.Statx_t
	ok    []bool // stats[i] was taken
	err   error  // reading the names after the last one
}

// startStatAhead stats the names src yields, in the directory fd, except
// those skip says are stat'ed already. It owns src until close; fd must
// stay open until then.
func startStatAhead(fd int, src *names, skip func(string) bool) *statAhead {
	s := &statAhead{windows: make(chan *statWindow, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go s.produce(fd, src, skip)
	return s
}

func (s *statAhead) produce(fd int, src *names, skip func(string) bool) {
	defer close(s.done)
	defer close(s.windows)
	for {
		win := &statWindow{names: make([]string, 0, statAheadWindow)}
		for len(win.names) < statAheadWindow {
			name, ok, err := src.next()
			if err != nil {
				win.err = err
				break
			}
			if !ok {
				break
			}
			win.names = append(win.names, name)
		}
		win.stats, win.ok = make([]unix.Statx_t, len(win.names)), make([]bool, len(win.names))
		var next atomic.Int64
		var wg sync.WaitGroup
		for range min(statAheadWorkers, len(win.names)) {
			wg.Go(func() {
				for {
					i := int(next.Add(1) - 1)
					if i >= len(win.names) {
						return
					}
					if !skip(win.names[i]) {
						win.ok[i] = meta.Statx(fd, win.names[i], &win.stats[i]) == nil
					}
				}
			})
		}
		wg.Wait()
		select {
		case s.windows <- win:
		case <-s.stop:
			return
		}
		if win.err != nil || len(win.names) < statAheadWindow {
			return
		}
	}
}

// next returns the next name and its stat (nil when not taken ahead), or
// false at the end.
func (s *statAhead) next() (string, *unix.Statx_t, bool, error) {
	for s.cur == nil || s.i >= len(s.cur.names) {
		if s.cur != nil && s.cur.err != nil {
			return "", nil, false, s.cur.err
		}
		win, ok := <-s.windows
		if !ok {
			return "", nil, false, nil
		}
		s.cur, s.i = win, 0
	}
	i := s.i
	s.i++
	if s.cur.ok[i] {
		return s.cur.names[i], &s.cur.stats[i], true, nil
	}
	return s.cur.names[i], nil, true, nil
}

// close stops the stats ahead and waits for them to end.
func (s *statAhead) close() {
	close(s.stop)
	<-s.done
}
