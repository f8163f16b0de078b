package watch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

const inotifyMask = unix.IN_CREATE | unix.IN_CLOSE_WRITE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
	unix.IN_DELETE | unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF |
	unix.IN_ONLYDIR | unix.IN_DONT_FOLLOW | unix.IN_EXCL_UNLINK

type inotify struct {
	log   *zap.Logger
	fd    int
	f     *os.File
	roots []string

	mu         sync.Mutex
	wds        map[int32]string
	byPath     map[string]int32
	maxWatches int
	exhausted  string // first directory that could not be watched
	queueLimit int
	nseen      atomic.Uint64
}

func newInotify(roots []string, opts Options, log *zap.Logger) (*inotify, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	in := &inotify{
		log:        log,
		fd:         fd,
		f:          os.NewFile(uintptr(fd), "inotify"),
		roots:      roots,
		wds:        map[int32]string{},
		byPath:     map[string]int32{},
		maxWatches: readProcInt("/proc/sys/fs/inotify/max_user_watches"),
		queueLimit: readProcInt("/proc/sys/fs/inotify/max_queued_events"),
	}
	if opts.MaxWatches > 0 && (in.maxWatches == 0 || opts.MaxWatches < in.maxWatches) {
		in.maxWatches = opts.MaxWatches
	}
	for _, r := range roots {
		in.addTree(r)
	}
	in.mu.Lock()
	n := len(in.wds)
	in.mu.Unlock()
	if n == 0 {
		in.f.Close()
		return nil, fmt.Errorf("inotify: could not watch any root (max_user_watches %d): raise fs.inotify.max_user_watches", in.maxWatches)
	}
	return in, nil
}

// addTree watches dir and every directory below it, and returns nothing: a
// directory that cannot be watched is logged and reported by limits.
func (in *inotify) addTree(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir && errors.Is(err, fs.ErrNotExist) {
				return nil // gone already
			}
			in.log.Debug("skip unreadable directory", zap.String("path", p), zap.Error(err))
			if d != nil && d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.IsDir() {
			return nil
		}
		if !in.addWatch(p) {
			return filepath.SkipAll
		}
		return nil
	})
}

// addWatch adds one watch; false when the watch budget is exhausted.
func (in *inotify) addWatch(p string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.exhausted != "" {
		return false
	}
	if _, ok := in.byPath[p]; !ok && in.maxWatches > 0 && len(in.wds) >= in.maxWatches {
		in.exhaustLocked(p, unix.ENOSPC)
		return false
	}
	wd, err := unix.InotifyAddWatch(in.fd, p, inotifyMask)
	if err != nil {
		if errors.Is(err, unix.ENOSPC) {
			in.exhaustLocked(p, err)
			return false
		}
		in.log.Debug("cannot watch directory", zap.String("path", p), zap.Error(err))
		return true
	}
	w := int32(wd)
	if old, ok := in.wds[w]; ok && old != p {
		delete(in.byPath, old)
	}
	in.wds[w] = p
	in.byPath[p] = w
	return true
}

func (in *inotify) exhaustLocked(p string, err error) {
	in.exhausted = p
	in.log.Error("inotify watches exhausted: new directories are caught by full rescans only; raise fs.inotify.max_user_watches or use fanotify",
		zap.String("first_unwatched", p), zap.Int("watches", len(in.wds)), zap.Int("max_watches", in.maxWatches), zap.Error(err))
}

// removeTree drops the watches of dir and everything below it.
func (in *inotify) removeTree(dir string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for p, wd := range in.byPath {
		if under(p, dir) {
			unix.InotifyRmWatch(in.fd, uint32(wd))
			delete(in.byPath, p)
			delete(in.wds, wd)
		}
	}
}

func (in *inotify) limits() Limits {
	in.mu.Lock()
	defer in.mu.Unlock()
	l := Limits{Backend: BackendInotify, Watches: len(in.wds), MaxWatches: in.maxWatches, QueueLimit: in.queueLimit}
	if in.exhausted != "" {
		l.Degraded = fmt.Sprintf("inotify watches exhausted at %s (%d in use): directories without a watch are caught by full rescans only", in.exhausted, len(in.wds))
	}
	return l
}

func (in *inotify) seen() uint64 { return in.nseen.Load() }

func (in *inotify) close() error { return in.f.Close() }

func (in *inotify) run(ctx context.Context, emit func(event)) error {
	stop := context.AfterFunc(ctx, func() { in.f.Close() })
	defer stop()
	buf := make([]byte, 256<<10)
	for {
		n, err := in.f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			return fmt.Errorf("read inotify: %w", err)
		}
		in.parse(buf[:n], emit)
		if !pace(ctx, n, len(buf)) {
			return nil
		}
	}
}

const inotifyEventSize = int(unsafe.Sizeof(unix.InotifyEvent{}))

func (in *inotify) parse(buf []byte, emit func(event)) {
	for off := 0; off+inotifyEventSize <= len(buf); {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		nameBytes := buf[off+inotifyEventSize : off+inotifyEventSize+int(ev.Len)]
		off += inotifyEventSize + int(ev.Len)
		if i := indexByte(nameBytes, 0); i >= 0 {
			nameBytes = nameBytes[:i]
		}
		in.nseen.Add(1)
		mask := ev.Mask
		if mask&unix.IN_Q_OVERFLOW != 0 {
			in.log.Warn("inotify queue overflowed; requesting a full rescan")
			emit(event{kind: kindOverflow})
			continue
		}
		in.mu.Lock()
		dir, ok := in.wds[ev.Wd]
		if mask&unix.IN_IGNORED != 0 && ok {
			delete(in.wds, ev.Wd)
			if in.byPath[dir] == ev.Wd {
				delete(in.byPath, dir)
			}
		}
		in.mu.Unlock()
		if !ok || mask&unix.IN_IGNORED != 0 {
			continue
		}
		if mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
			// Reported on the parent by name, except for a root.
			for _, r := range in.roots {
				if r == dir {
					in.log.Warn("watched root moved or deleted; requesting a rescan", zap.String("root", r))
					emit(event{path: r, kind: kindNewDir})
				}
			}
			continue
		}
		p := dir
		if len(nameBytes) > 0 {
			p = filepath.Join(dir, string(nameBytes))
		}
		isDir := mask&unix.IN_ISDIR != 0
		switch {
		case isDir && mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
			in.addTree(p)
			emit(event{path: p, kind: kindNewDir})
		case isDir && mask&(unix.IN_MOVED_FROM|unix.IN_DELETE) != 0:
			in.removeTree(p)
			emit(event{path: p, kind: kindChanged})
		default:
			emit(event{path: p, kind: kindChanged})
		}
	}
}
