package watch

import (
	"fmt"
	"os"
	"strconv"
	"strings"

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
