package watch

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

func newBackend(roots []string, opts Options, log *zap.Logger) (backend, string, error) {
	switch opts.Backend {
	case BackendFanotify:
		be, err := newFanotify(roots, log)
		if err != nil {
			return nil, "", err
		}
		return be, "fanotify requested", nil
	case BackendInotify:
		be, err := newInotify(roots, opts, log)
		if err != nil {
			return nil, "", err
		}
		return be, "inotify requested", nil
	case BackendAuto:
		be, err := newFanotify(roots, log)
		if err == nil {
			return be, "fanotify filesystem marks available", nil
		}
		reason := fmt.Sprintf("fanotify unavailable (%v); using inotify, one watch per directory", err)
		log.Warn("falling back to inotify", zap.Error(err))
		ibe, ierr := newInotify(roots, opts, log)
		if ierr != nil {
			return nil, "", fmt.Errorf("%w: %v; %v", ErrUnsupported, err, ierr)
		}
		return ibe, reason, nil
	default:
		return nil, "", fmt.Errorf("choose watch backend %q: want fanotify, inotify or empty for automatic", opts.Backend)
	}
}

// readProcInt reads an integer from a /proc/sys file (0 if unreadable).
func readProcInt(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// readPause is how long a reader waits after a read that did not fill its
// buffer, so that events pile up and are read many per system call instead
// of one per wake-up. It adds at most this much latency and costs nothing
// in lost events (the kernel queue holds 16384).
const readPause = 10 * time.Millisecond

// pace waits readPause after a short read; false when ctx ended. It is
// real time on purpose: it paces system calls, not program logic, and a
// fake clock must not stall the kernel reader.
func pace(ctx context.Context, n, size int) bool {
	if n >= size/2 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(readPause)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
