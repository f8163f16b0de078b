package tree

import (
	"errors"
	"os"
	"sort"

	"golang.org/x/sys/unix"
)

// ReadNames lists the directory open as fd, sorted bytewise, so a
// depth-first walk visits it in tree order. It reads through a new
// descriptor (with O_NOATIME where allowed) and leaves fd's offset alone.
// The names of the directory are held in memory.
func ReadNames(fd int) ([]string, error) {
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
	dup, err := unix.Openat(fd, ".", flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		dup, err = unix.Openat(fd, ".", flags, 0)
	}
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	return names, nil
}

// Join appends name to the tree path dir ("." is the root).
func Join(dir []byte, name string) []byte {
	if string(dir) == "." {
		return []byte(name)
	}
	p := make([]byte, 0, len(dir)+1+len(name))
	p = append(p, dir...)
	p = append(p, '/')
	return append(p, name...)
}
