//go:build !linux

package watch

import (
	"fmt"
	"runtime"

	"go.uber.org/zap"
)

func newBackend(roots []string, opts Options, log *zap.Logger) (backend, string, error) {
	return nil, "", fmt.Errorf("%w on %s: use scheduled mode", ErrUnsupported, runtime.GOOS)
}
