// Package logring keeps the firmware's log: the last lines in memory (for the
// status screen, the support shell and the control socket) and, once a
// volume is mounted, a file on it that receives the backlog first.
package logring

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Ring is a zapcore.WriteSyncer holding the last N log lines, optionally
// copying every line to a file.
type Ring struct {
	mu    sync.Mutex
	lines []string
	next  int
	full  bool
	file  *os.File
}

// New returns a ring of n lines.
func New(n int) *Ring { return &Ring{lines: make([]string, n)} }

// Write stores one encoded log entry.
func (r *Ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines[r.next] = string(p)
	r.next = (r.next + 1) % len(r.lines)
	if r.next == 0 {
		r.full = true
	}
	if r.file != nil {
		if _, err := r.file.Write(p); err != nil {
			r.file.Close()
			r.file = nil
		}
	}
	return len(p), nil
}

// Sync flushes the file, if any.
func (r *Ring) Sync() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.file != nil {
		return r.file.Sync()
	}
	return nil
}

// Lines returns the lines held, oldest first.
func (r *Ring) Lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	if r.full {
		out = append(out, r.lines[r.next:]...)
	}
	return append(out, r.lines[:r.next]...)
}

// Attach appends the log to path from now on, after writing the backlog held
// in memory.
func (r *Ring) Attach(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("attach log: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("attach log: %w", err)
	}
	backlog := r.Lines()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.file != nil {
		r.file.Close()
	}
	for _, l := range backlog {
		if _, err := f.WriteString(l); err != nil {
			f.Close()
			return fmt.Errorf("attach log: %w", err)
		}
	}
	r.file = f
	return nil
}

// Detach closes the log file (before its volume is unmounted).
func (r *Ring) Detach() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.file != nil {
		_ = r.file.Sync()
		r.file.Close()
		r.file = nil
	}
}

// Logger returns a logger writing every level to the ring and, at
// consoleLevel and above, to console.
func Logger(r *Ring, console zapcore.WriteSyncer, consoleLevel zap.AtomicLevel) *zap.Logger {
	cfg := zap.NewProductionEncoderConfig()
	cfg.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.EncodeLevel = zapcore.CapitalLevelEncoder
	cfg.ConsoleSeparator = " "
	enc := zapcore.NewConsoleEncoder(cfg)
	core := zapcore.NewTee(
		zapcore.NewCore(enc, zapcore.AddSync(r), zap.DebugLevel),
		zapcore.NewCore(enc, console, consoleLevel),
	)
	return zap.New(core)
}
