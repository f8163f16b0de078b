package testtree

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// OpenUnder lists this process's descriptors open on files under dir (a
// file written unnamed shows as dir/#ino (deleted)): what a backup or a
// restore of the tree must not leave behind, even when it fails.
func OpenUnder(dir string) ([]string, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, fmt.Errorf("list open descriptors: %w", err)
	}
	var open []string
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.HasPrefix(target, dir+"/") {
			open = append(open, target)
		}
	}
	return open, nil
}
