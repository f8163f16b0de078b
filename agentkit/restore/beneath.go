package restore

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"vaultnode/internal/tree"
)

// Limits restore holds every node to, whatever the listing says (the
// listing comes from the vault, which may be hostile or damaged).
const (
	// NameMax is the longest name of one path component (NAME_MAX).
	NameMax = 255
	// MaxFileSize is the largest file restore recreates, sparse or not:
	// 256 TiB, beyond what a backed-up filesystem holds in practice.
	MaxFileSize = 1 << 48
)

// ErrRefused is wrapped by every reason a node of the listing is refused.
var ErrRefused = errors.New("refused")

// checkPath refuses a listing path that could name anything but an object
// beneath the target: absolute, empty, with a NUL, with an empty, "." or
// ".." component, or with a component longer than NameMax. The root "."
// is allowed alone.
func checkPath(p []byte) error {
	if why := pathProblem(p); why != "" {
		return fmt.Errorf("%w: %s", ErrRefused, why)
	}
	return nil
}

// pathProblem says what is wrong with p for checkPath, "" when nothing.
func pathProblem(p []byte) string {
	switch {
	case len(p) == 0:
		return "empty path"
	case string(p) == ".":
		return ""
	case bytes.IndexByte(p, 0) >= 0:
		return "path contains NUL"
	case p[0] == '/':
		return "absolute path"
	}
	for c := range bytes.SplitSeq(p, []byte{'/'}) {
		switch {
		case len(c) == 0:
			return "empty path component"
		case string(c) == "." || string(c) == "..":
			return fmt.Sprintf("%q component", c)
		case len(c) > NameMax:
			return fmt.Sprintf("a component of %d bytes (limit %d)", len(c), NameMax)
		}
	}
	return ""
}

// resolveFlags make openat2 stay beneath the target and never traverse a
// symlink, magic links included.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// noOpenat2 is set once openat2 is found missing (Linux before 5.6).
var noOpenat2 atomic.Bool

// probeOpenat2 reports whether openat2 works here; when it does not
// (ENOSYS before Linux 5.6, EPERM from a seccomp filter that does not know
// it), openBeneath walks component by component from then on.
func probeOpenat2(root int) bool {
	if noOpenat2.Load() {
		return false
	}
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: resolveFlags}
	fd, err := unix.Openat2(root, ".", &how)
	if err == nil {
		unix.Close(fd)
		return true
	}
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		noOpenat2.Store(true)
		return false
	}
	return true // another error: openBeneath reports it where it matters
}

// openBeneath opens rel, a path checkPath accepted ("" or "." for root
// itself), beneath the directory root without traversing any symlink; a
// final symlink is opened itself only with O_PATH. It uses openat2 with
// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS, or on a kernel
// without openat2 walks the components with openat(O_NOFOLLOW), which is
// as strict for checked paths.
func openBeneath(root int, rel string, flags int) (int, error) {
	if rel == "" {
		rel = "."
	}
	if err := checkPath([]byte(rel)); err != nil {
		return -1, err
	}
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	if !noOpenat2.Load() {
		how := unix.OpenHow{Flags: uint64(flags), Resolve: resolveFlags}
		for {
			fd, err := unix.Openat2(root, rel, &how)
			if err == unix.EINTR || err == unix.EAGAIN {
				continue
			}
			if err != unix.ENOSYS {
				if err != nil {
					return -1, beneathErr(rel, err)
				}
				return fd, nil
			}
			noOpenat2.Store(true)
			break
		}
	}
	cur := root
	comps := strings.Split(rel, "/")
	for i, c := range comps {
		f := unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		if i == len(comps)-1 {
			f = flags
		}
		fd, err := unix.Openat(cur, c, f, 0)
		if cur != root {
			unix.Close(cur)
		}
		if err != nil {
			return -1, beneathErr(rel, err)
		}
		cur = fd
	}
	return cur, nil
}

// beneathErr says why rel could not be opened beneath the target: a
// symlink, a non-directory or a way out in its path is a refusal.
func beneathErr(rel string, err error) error {
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOTDIR) {
		return fmt.Errorf("%w: %q leads through a symlink, a non-directory or out of the target: %w", ErrRefused, rel, err)
	}
	return fmt.Errorf("open %q beneath the target: %w", rel, err)
}

// check refuses a node restore must not recreate, whatever the listing's
// decoder accepted: restore never trusts tree.Node.Validate alone.
func (r *restorer) check(n *tree.Node) error {
	if err := checkPath(n.Path); err != nil {
		return err
	}
	if err := n.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	switch n.Type {
	case tree.TypeFile:
		if n.Size < 0 || n.Size > MaxFileSize {
			return fmt.Errorf("%w: a size of %d bytes (limit %d)", ErrRefused, n.Size, int64(MaxFileSize))
		}
		for _, e := range n.Extents {
			if e.Off < 0 || e.Len < 0 || e.Off > n.Size || e.Len > n.Size-e.Off {
				return fmt.Errorf("%w: extent %d+%d outside the size %d", ErrRefused, e.Off, e.Len, n.Size)
			}
		}
		if n.LinkTo != nil {
			if why := pathProblem(n.LinkTo); why != "" || string(n.LinkTo) == "." {
				if why == "" {
					why = "the root"
				}
				return fmt.Errorf("%w: hard link to %q: %s", ErrRefused, n.LinkTo, why)
			}
			if tree.Compare(n.LinkTo, n.Path) >= 0 {
				return fmt.Errorf("%w: hard link to %q, which does not come before it in the listing", ErrRefused, n.LinkTo)
			}
			if _, ok := r.placed[string(n.LinkTo)]; !ok {
				return fmt.Errorf("%w: hard link to %q, which is not a hard-linked file restored earlier in this run", ErrRefused, n.LinkTo)
			}
		}
	case tree.TypeSymlink:
		if len(n.Target) == 0 || bytes.IndexByte(n.Target, 0) >= 0 || len(n.Target) >= unix.PathMax {
			return fmt.Errorf("%w: symlink target %q is empty, holds NUL or is over %d bytes", ErrRefused, truncName(string(n.Target)), unix.PathMax-1)
		}
	}
	return nil
}
