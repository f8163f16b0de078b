// Package progress shows the progress of long work: a line rewritten in
// place on a terminal (files, bytes, rate, ETA), nothing in scripts.
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"
)

// Line prints progress lines to a terminal.
type Line struct {
	mu      sync.Mutex
	w       io.Writer
	tty     bool
	last    int
	lastOut time.Time
}

// New returns a Line writing to w; it stays silent unless w is a terminal.
func New(w io.Writer) *Line {
	l := &Line{w: w}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		l.tty = true
	}
	return l
}

// Enabled reports whether the line is shown.
func (l *Line) Enabled() bool { return l != nil && l.tty }

// Show replaces the line with a formatted report. total may be 0 when
// unknown (no ETA then).
func (l *Line) Show(verb string, files, bytes, total int64, start time.Time) {
	if !l.Enabled() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	el := time.Since(start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(bytes) / el
	}
	s := fmt.Sprintf("%s %d files, %s, %s/s", verb, files, Bytes(bytes), Bytes(int64(rate)))
	if total > 0 && rate > 0 && bytes <= total {
		eta := time.Duration(float64(total-bytes) / rate * float64(time.Second)).Round(time.Second)
		s += fmt.Sprintf(", %.0f%%, ETA %s", 100*float64(bytes)/float64(total), eta)
	}
	pad := ""
	if n := l.last - len(s); n > 0 {
		pad = fmt.Sprintf("%*s", n, "")
	}
	fmt.Fprintf(l.w, "\r%s%s", s, pad)
	l.last = len(s)
}

// Done ends the progress line.
func (l *Line) Done() {
	if !l.Enabled() || l.last == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintln(l.w)
	l.last = 0
}

// Bytes formats a byte count with binary units.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
