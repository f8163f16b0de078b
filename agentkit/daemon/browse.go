package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"vaultnode/internal/wire"
)

// ErrNotAllowed refuses a browse outside the directories the agent may
// show (Options.Browse).
var ErrNotAllowed = errors.New("not within the directories this agent lets the vault browse")

// pseudo are filesystem types that hold no files to back up; the roots of
// a browse leave them out.
var pseudo = map[string]bool{"proc": true, "sysfs": true, "cgroup": true, "cgroup2": true, "devpts": true, "devtmpfs": true,
	"mqueue": true, "debugfs": true, "tracefs": true, "securityfs": true, "pstore": true, "bpf": true, "hugetlbfs": true,
	"configfs": true, "fusectl": true, "binfmt_misc": true, "autofs": true, "efivarfs": true, "rpc_pipefs": true, "nsfs": true,
	"ramfs": true, "overlay": false}

// allowedPath reports whether p is within one of allowed (absolute, clean).
func allowedPath(p string, allowed []string) bool {
	for _, a := range allowed {
		if a == "/" || p == a || strings.HasPrefix(p, a+"/") {
			return true
		}
	}
	return false
}

// Browse lists one directory level of the live file tree (at most
// wire.MaxBrowseEntries, sorted by name), or, for an empty path, the
// roots: the allowed directories and the mount points of real filesystems
// within them. Only paths within allowed (default "/") are shown, also
// after resolving symlinks on the way; symlinks in a level are listed, not
// followed.
func Browse(path string, allowed []string) (*wire.BrowseResult, error) {
	if len(allowed) == 0 {
		allowed = []string{"/"}
	}
	mounts := mountPoints()
	if path == "" {
		res := &wire.BrowseResult{Path: "", Entries: []wire.BrowseEntry{}}
		seen := map[string]bool{}
		add := func(p, fstype string) {
			if seen[p] || !allowedPath(p, allowed) || len(res.Entries) >= wire.MaxBrowseEntries {
				return
			}
			fi, err := os.Lstat(p)
			if err != nil || !fi.IsDir() {
				return
			}
			seen[p] = true
			res.Entries = append(res.Entries, wire.BrowseEntry{Name: p, Type: "dir", MTime: fi.ModTime().UTC(), Mount: fstype})
		}
		for _, a := range allowed {
			add(a, mounts[a])
		}
		var mps []string
		for mp, fstype := range mounts {
			if !pseudo[fstype] {
				mps = append(mps, mp)
			}
		}
		slices.Sort(mps)
		for _, mp := range mps {
			add(mp, mounts[mp])
		}
		return res, nil
	}
	if err := wire.CheckLivePath(path); err != nil {
		return nil, err
	}
	if !allowedPath(path, allowed) {
		return nil, fmt.Errorf("browse %s: %w", path, ErrNotAllowed)
	}
	// A symlink on the way may lead outside the allowed directories:
	// resolve it, check again, and open the result without following one.
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("browse %s: %w", path, err)
	}
	if !allowedPath(real, allowed) {
		return nil, fmt.Errorf("browse %s (%s): %w", path, real, ErrNotAllowed)
	}
	f, err := os.OpenFile(real, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("browse %s: %w", path, err)
	}
	defer f.Close()
	des, err := f.ReadDir(wire.MaxBrowseEntries + 1)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("browse %s: %w", path, err)
	}
	res := &wire.BrowseResult{Path: path, Entries: []wire.BrowseEntry{}}
	if len(des) > wire.MaxBrowseEntries {
		des, res.Truncated = des[:wire.MaxBrowseEntries], true
	}
	for _, de := range des {
		fi, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		e := wire.BrowseEntry{Name: de.Name(), Size: fi.Size(), MTime: fi.ModTime().UTC()}
		switch {
		case fi.IsDir():
			e.Type, e.Size = "dir", 0
		case fi.Mode().IsRegular():
			e.Type = "file"
		case fi.Mode()&os.ModeSymlink != 0:
			e.Type = "symlink"
		default:
			e.Type = "other"
		}
		e.Mount = mounts[filepath.Join(real, de.Name())]
		res.Entries = append(res.Entries, e)
	}
	slices.SortFunc(res.Entries, func(a, b wire.BrowseEntry) int { return strings.Compare(a.Name, b.Name) })
	return res, nil
}

// mountPoints maps each mount point to its filesystem type
// (/proc/self/mountinfo; empty when it cannot be read).
func mountPoints() map[string]string {
	out := map[string]string{}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		out[unescapeMount(fields[4])] = fields[sep+1]
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			ok := true
			for _, d := range s[i+1 : i+4] {
				if d < '0' || d > '7' {
					ok = false
					break
				}
				c = c*8 + byte(d-'0')
			}
			if ok {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
