// Package selection decides which paths a files configuration protects:
// include and exclude patterns plus the automatic exclusions.
//
// Pattern syntax (like .gitignore globs, matched with doublestar):
//   - A pattern without '/' matches a name at any depth: "*.tmp", "node_modules".
//   - A pattern with '/' is anchored and matched against the absolute path:
//     "/home/*/.cache", "/var/log/**/*.gz".
//   - "*" matches within one name, "**" any number of names, "?" one
//     character, "[abc]" a class, "{a,b}" alternatives.
//   - An excluded directory is not descended into.
//   - With include patterns, only files matching one of them (or lying under
//     a directory matching one) are selected; directories are still walked.
package selection

import (
	"bufio"
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/bmatcuk/doublestar/v4"
	"golang.org/x/sys/unix"
)

// Selection is a compiled set of rules.
type Selection struct {
	include, exclude []string
	// skipPaths are absolute paths excluded automatically.
	skipPaths map[string]string
	auto      bool
}

// pseudo filesystems never backed up automatically (statfs f_type).
var pseudoFS = map[int64]string{
	unix.PROC_SUPER_MAGIC: "proc", unix.SYSFS_MAGIC: "sysfs", unix.DEVPTS_SUPER_MAGIC: "devpts",
	unix.CGROUP_SUPER_MAGIC: "cgroup", unix.CGROUP2_SUPER_MAGIC: "cgroup2", unix.DEBUGFS_MAGIC: "debugfs",
	unix.TRACEFS_MAGIC: "tracefs", unix.SECURITYFS_MAGIC: "securityfs", unix.PSTOREFS_MAGIC: "pstore",
	unix.BPF_FS_MAGIC: "bpf", 0x62656570: "configfs", 0x65735543: "fusectl", 0x19800202: "mqueue",
	unix.HUGETLBFS_MAGIC: "hugetlbfs", 0x0187: "autofs", unix.NSFS_MAGIC: "nsfs",
	unix.EFIVARFS_MAGIC: "efivarfs", unix.BINFMTFS_MAGIC: "binfmt_misc",
}

// Options of New.
type Options struct {
	Include, Exclude []string
	NoAuto           bool
	// StatePath is the agent's state directory, always excluded.
	StatePath string
}

// New validates the patterns and collects the automatic exclusions.
func New(o Options) (*Selection, error) {
	s := &Selection{include: o.Include, exclude: o.Exclude, skipPaths: map[string]string{}, auto: !o.NoAuto}
	for _, p := range append(append([]string{}, o.Include...), o.Exclude...) {
		if !doublestar.ValidatePattern(p) {
			return nil, fmt.Errorf("bad pattern %q: see `vault-agent config set -h` for the syntax", p)
		}
	}
	if o.StatePath != "" {
		s.skipPaths[path.Clean(o.StatePath)] = "the agent's state"
	}
	if s.auto {
		for _, p := range []string{"/proc", "/sys", "/dev", "/run"} {
			s.skipPaths[p] = "pseudo-filesystem"
		}
		for _, sw := range swaps() {
			s.skipPaths[sw] = "swap file"
		}
	}
	return s, nil
}

func swaps() []string {
	f, err := os.Open("/proc/swaps")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[1] == "file" {
			out = append(out, fields[0])
		}
	}
	return out
}

func match(pattern, abs string) bool {
	if !strings.Contains(pattern, "/") {
		ok, _ := doublestar.Match(pattern, path.Base(abs))
		return ok
	}
	ok, _ := doublestar.Match(pattern, abs)
	return ok
}

// Excluded says whether abs (absolute, clean) is excluded, and why.
func (s *Selection) Excluded(abs string) (bool, string) {
	if why, ok := s.skipPaths[abs]; ok {
		return true, why
	}
	for _, p := range s.exclude {
		if match(p, abs) {
			return true, "excluded by " + p
		}
	}
	return false, ""
}

// Included says whether a non-directory at abs is selected, given whether
// one of its ancestors matched an include pattern.
func (s *Selection) Included(abs string, ancestorIncluded bool) bool {
	if len(s.include) == 0 || ancestorIncluded {
		return true
	}
	return s.IncludesPath(abs)
}

// IncludesPath reports whether abs matches an include pattern.
func (s *Selection) IncludesPath(abs string) bool {
	for _, p := range s.include {
		if match(p, abs) {
			return true
		}
	}
	return false
}

// HasIncludes reports whether include patterns restrict the selection.
func (s *Selection) HasIncludes() bool { return len(s.include) > 0 }

// Auto reports whether automatic exclusions apply.
func (s *Selection) Auto() bool { return s.auto }

// PseudoFS names the pseudo filesystem of the directory fd, or "".
func PseudoFS(fd int) string {
	var st unix.Statfs_t
	if unix.Fstatfs(fd, &st) != nil {
		return ""
	}
	return pseudoFS[int64(st.Type)]
}

// ExcludedPath is Excluded for a path reached without walking down to it
// (a change reported by the kernel): the path or any of its ancestors may
// be what is excluded.
func (s *Selection) ExcludedPath(abs string) (bool, string) {
	for p := abs; ; p = path.Dir(p) {
		if ex, why := s.Excluded(p); ex {
			return true, why
		}
		if p == "/" || p == "." {
			return false, ""
		}
	}
}
